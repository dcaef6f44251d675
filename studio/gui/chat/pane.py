"""One pane of the side-by-side chat: what it is bound to, its conversation, the streamed answer.

A pane is bound to the base model, one library adapter, or several adapters with a live weight
slider each (a blend felt at chat time, nothing written; "Open in Blend" hands the weights to the
Blend panel). It keeps its own conversation for follow-ups, shows tokens as they arrive (buffered:
the panel flushes every pane on a ~10 Hz timer) and the tokens/s of the answer. In a blind
comparison its binding is hidden behind a letter until the names are revealed.
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from studio.gui.chat.work import BASE, PaneBinding

BLEND = "__blend__"  # the binding combo's "several adapters" entry
SLIDER_STEPS = 100  # slider units per 1.0 of weight
USER_COLOR, ANSWER_COLOR, NOTE_COLOR = "#1f5fbf", "#1a7f37", "#8a6d00"


class ChatPane(QFrame):
    """A pane. `binding()` says what it answers with; `conversation` holds its turns."""

    binding_changed = Signal()
    blend_requested = Signal(dict)  # {adapter id: weight}

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.conversation: list[dict[str, str]] = []
        self.names: dict[str, str] = {BASE: "Base model"}  # ref -> display name
        self.sliders: dict[str, tuple[QCheckBox, QSlider, QLabel]] = {}
        self.pending = ""  # streamed text not yet shown
        self.answer = ""  # the answer being streamed
        self.streaming = False
        self.started = 0.0
        self.pieces = 0
        self.last_finished: Any = None  # the Finished event of the latest answer

        self.title = QLabel(f"<b>Pane {index + 1}</b>")
        self.combo = QComboBox(minimumContentsLength=14)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.currentIndexChanged.connect(self._combo_changed)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.combo, 1)

        self.blend_box = QWidget()
        self.blend_grid = QGridLayout(self.blend_box)
        self.blend_grid.setContentsMargins(2, 2, 2, 2)
        self.blend_scroll = QScrollArea(widgetResizable=True, maximumHeight=110)
        self.blend_scroll.setWidget(self.blend_box)
        self.open_blend_button = QPushButton("Open in Blend")
        self.open_blend_button.setToolTip("Bake these weights into a new adapter in the Blend panel")
        self.open_blend_button.clicked.connect(lambda: self.blend_requested.emit(self.binding().weights))
        self.blend_panel = QWidget()
        blend_layout = QVBoxLayout(self.blend_panel)
        blend_layout.setContentsMargins(0, 0, 0, 0)
        blend_layout.addWidget(self.blend_scroll)
        blend_layout.addWidget(self.open_blend_button, 0, Qt.AlignmentFlag.AlignRight)
        self.blend_panel.hide()

        self.view = QTextEdit(readOnly=True)
        self.view.setPlaceholderText("Answers appear here.")
        self.status = QLabel(" ")
        self.status.setStyleSheet("color: palette(mid)")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(head)
        layout.addWidget(self.blend_panel)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        self.set_choices([])

    # ------------------------------------------------------------ binding

    def set_choices(self, choices: list[tuple[str, str]]) -> None:
        """(display name, adapter id) of the adapters on the active base; keeps the binding if it can."""
        keep = self.binding()
        self.names = {BASE: "Base model", **{ref: name for name, ref in choices}}
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem("Base model", BASE)
        for name, ref in choices:
            self.combo.addItem(name, ref)
        if choices:
            self.combo.addItem("Several adapters (live blend)…", BLEND)
        self.combo.blockSignals(False)
        self._build_sliders(choices)
        self.set_binding(keep)

    def _build_sliders(self, choices: list[tuple[str, str]]) -> None:
        while self.blend_grid.count():
            item = self.blend_grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.sliders = {}
        for row, (name, ref) in enumerate(choices):
            check = QCheckBox(name)
            slider = QSlider(Qt.Orientation.Horizontal, minimum=-SLIDER_STEPS, maximum=2 * SLIDER_STEPS,
                             value=SLIDER_STEPS)
            slider.setToolTip("Weight of this adapter in the live blend (-1 to 2)")
            value = QLabel("1.00", minimumWidth=36)
            slider.valueChanged.connect(lambda v, label=value: label.setText(f"{v / SLIDER_STEPS:.2f}"))
            check.toggled.connect(lambda _=False: self.binding_changed.emit())
            slider.valueChanged.connect(lambda _=0: self.binding_changed.emit())
            self.blend_grid.addWidget(check, row, 0)
            self.blend_grid.addWidget(slider, row, 1)
            self.blend_grid.addWidget(value, row, 2)
            self.sliders[ref] = (check, slider, value)

    def _combo_changed(self) -> None:
        self.blend_panel.setVisible(self.combo.currentData() == BLEND)
        self.binding_changed.emit()

    def binding(self) -> PaneBinding:
        ref = self.combo.currentData() if hasattr(self, "combo") else BASE
        if ref == BLEND:
            weights = {r: s.value() / SLIDER_STEPS for r, (c, s, _) in self.sliders.items() if c.isChecked()}
            return PaneBinding("blend", weights)
        return PaneBinding(ref or BASE)

    def set_binding(self, binding: PaneBinding) -> None:
        if binding.is_blend:
            for ref, (check, slider, _) in self.sliders.items():
                check.setChecked(ref in binding.weights)
                slider.setValue(round(binding.weights.get(ref, 1.0) * SLIDER_STEPS))
            target = BLEND
        else:
            target = binding.ref
        index = self.combo.findData(target)
        self.combo.setCurrentIndex(max(index, 0))
        self.blend_panel.setVisible(self.combo.currentData() == BLEND)

    def display_name(self) -> str:
        binding = self.binding()
        if binding.is_blend:
            parts = [f"{self.names.get(r, r)} ×{w:g}" for r, w in binding.weights.items()]
            return "Blend: " + (", ".join(parts) or "nothing checked")
        return self.names.get(binding.ref, binding.ref)

    def set_title(self, text: str, *, hide_binding: bool = False) -> None:
        self.title.setText(f"<b>{html.escape(text)}</b>")
        self.combo.setVisible(not hide_binding)
        self.blend_panel.setVisible(not hide_binding and self.combo.currentData() == BLEND)

    def set_locked(self, locked: bool) -> None:
        """No rebinding while an answer streams."""
        self.combo.setEnabled(not locked)
        self.blend_box.setEnabled(not locked)

    # ------------------------------------------------------------ transcript

    def _append(self, html_text: str = "", plain: str = "") -> None:
        cursor = self.view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if html_text:
            cursor.insertHtml(html_text)
        if plain:
            cursor.insertText(plain)
        self.view.setTextCursor(cursor)
        self.view.ensureCursorVisible()

    def _header(self, who: str, color: str) -> None:
        if not self.view.document().isEmpty():
            self._append(plain="\n\n")
        self._append(f'<span style="color:{color}; font-weight:600">{html.escape(who)}</span><br>')

    def render(self, assistant_label: str = "Assistant") -> None:
        """Redraw the whole conversation (after reopening a session or clearing)."""
        self.view.clear()
        for message in self.conversation:
            if message["role"] == "user":
                self._header("You", USER_COLOR)
            elif message["role"] == "assistant":
                self._header(assistant_label, ANSWER_COLOR)
            else:
                self._header("System", NOTE_COLOR)
            self._append(plain=message["content"])

    def begin(self, prompt: str) -> None:
        """A new turn: the user's message, then an empty answer that tokens stream into."""
        self.conversation.append({"role": "user", "content": prompt})
        self._header("You", USER_COLOR)
        self._append(plain=prompt)
        self._header("Assistant", ANSWER_COLOR)
        self.pending, self.answer, self.pieces = "", "", 0
        self.streaming, self.started, self.last_finished = True, time.perf_counter(), None
        self.status.setText("waiting…")

    def note(self, text: str) -> None:
        self.status.setText(text)
        self.status.setToolTip(text)

    def add_token(self, text: str) -> None:
        self.pending += text
        self.answer += text
        self.pieces += 1

    def flush(self) -> None:
        if self.pending:
            self._append(plain=self.pending)
            self.pending = ""
        if self.streaming and self.pieces:
            seconds = max(time.perf_counter() - self.started, 1e-6)
            self.status.setText(f"{self.pieces} tokens · {self.pieces / seconds:.1f} tok/s · streaming…")

    def finish(self, finished: Any) -> None:
        """The answer is complete (or stopped): it joins the conversation, with its speed."""
        self.answer = finished.text
        self.flush()
        self.streaming, self.last_finished = False, finished
        self.conversation.append({"role": "assistant", "content": finished.text})
        ended = {"eos": "done", "max_tokens": "hit max tokens", "stopped": "stopped"}.get(finished.stop_reason,
                                                                                          finished.stop_reason)
        self.status.setText(f"{finished.tokens} tokens · {finished.tokens_per_second:.1f} tok/s · {ended}")

    def clear(self) -> None:
        self.conversation = []
        self.pending = self.answer = ""
        self.streaming, self.last_finished = False, None
        self.view.clear()
        self.status.setText(" ")
