"""The Library's detail pane: one adapter's manifest made readable, its loss curve, lineage and notes.

Shows an AdapterEntry from studio.core.library.store and edits only what the library lets a user edit
(name, tags, notes), through the library's own methods; each edit is announced on the app's
ChangeNotifier, so the table and every other screen re-read it. Actions that belong to other panels (chat,
compare, continue training, export) are signals; the main window routes them. The loss curve is read
from the run's metrics.jsonl (studio.core.train.events).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.library.store import AdapterEntry, AdapterLibrary
from studio.core.paths import DataDir
from studio.core.train.events import Eval, Step, read_events
from studio.core.train.run_dir import RunDir
from studio.gui.changes import ChangeNotifier
from studio.gui.error_dialog import show_error

THUMBNAIL_HEIGHT = 140
QUANT_LABELS = {"4bit": "4-bit NF4 base (QLoRA)", "8bit": "8-bit base", "none": "full-precision base"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def human_bytes(num: Any) -> str:
    if not isinstance(num, (int, float)) or num <= 0:
        return "—"
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if num >= size:
            return f"{num / size:.1f} {unit}"
    return f"{int(num)} B"


def loss_series(metrics_path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train loss per step, eval loss per evaluation) from a run's metrics.jsonl."""
    steps, evals = [], []
    for event in read_events(metrics_path):
        if isinstance(event, Step):
            steps.append((event.step, event.loss))
        elif isinstance(event, Eval):
            evals.append((event.step, event.eval_loss))
    return steps, evals


class AdapterDetail(QWidget):
    """Detail of the selected adapter; an edit is announced as `Changes(adapters_edited={id})`."""

    chat_requested = Signal(str)
    compare_requested = Signal(str)
    continue_requested = Signal(str)
    export_requested = Signal(str)

    def __init__(self, data: DataDir, library: AdapterLibrary, changes: ChangeNotifier,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data = data
        self.library, self.changes = library, changes
        self.entry: AdapterEntry | None = None

        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        self.rename_button = QToolButton(text="Rename…")
        self.rename_button.clicked.connect(self.ask_rename)
        title_row = QHBoxLayout()
        title_row.addWidget(self.title, 1)
        title_row.addWidget(self.rename_button)

        self.facts = QLabel()
        self.facts.setTextFormat(Qt.TextFormat.RichText)
        self.facts.setWordWrap(True)
        self.facts.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.plot = pg.PlotWidget()
        self.plot.setFixedHeight(THUMBNAIL_HEIGHT)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(False, False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.addLegend(offset=(-5, 5))
        self.train_curve = self.plot.plot([], [], pen=pg.mkPen("#3b82f6", width=1.5), name="train")
        self.eval_curve = self.plot.plot([], [], pen=None, symbol="o", symbolSize=6, symbolBrush="#f97316",
                                         name="eval")
        self.no_curve = QLabel("No training curve: this adapter was imported or blended.")
        self.no_curve.setStyleSheet("color: gray")

        self.tags_edit = QLineEdit(placeholderText="comma-separated tags")
        self.tags_edit.editingFinished.connect(self.save_tags)
        self.notes_edit = QPlainTextEdit(placeholderText="Your notes about this adapter…")
        self.notes_edit.setFixedHeight(80)
        self.save_notes_button = QPushButton("Save notes")
        self.save_notes_button.clicked.connect(self.save_notes)
        edit_form = QFormLayout()
        edit_form.addRow("Tags", self.tags_edit)
        edit_form.addRow("Notes", self.notes_edit)
        edit_form.addRow("", self.save_notes_button)

        self.chat_button = QPushButton("Chat with this")
        self.compare_button = QPushButton("Compare with base")
        self.continue_button = QPushButton("Continue training")
        self.export_button = QPushButton("Export / merge…")
        self.folder_button = QPushButton("Open folder")
        for button, signal in ((self.chat_button, self.chat_requested), (self.compare_button, self.compare_requested),
                               (self.continue_button, self.continue_requested),
                               (self.export_button, self.export_requested)):
            button.clicked.connect(lambda _=False, s=signal: self.entry and s.emit(self.entry.id))
        self.folder_button.clicked.connect(self.open_folder)
        actions = QGridLayout()
        for index, button in enumerate((self.chat_button, self.compare_button, self.continue_button,
                                        self.export_button, self.folder_button)):
            actions.addWidget(button, index // 2, index % 2)

        self.raw_toggle = QToolButton(text="Show raw manifest", checkable=True)
        self.raw = QPlainTextEdit(readOnly=True)
        self.raw.setVisible(False)
        self.raw_toggle.toggled.connect(self._toggle_raw)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(title_row)
        layout.addLayout(actions)
        layout.addWidget(self.plot)
        layout.addWidget(self.no_curve)
        layout.addWidget(self.facts)
        layout.addLayout(edit_form)
        layout.addWidget(self.raw_toggle)
        layout.addWidget(self.raw)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.placeholder = QLabel("Select an adapter to see its details.")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(self.placeholder)
        outer.addWidget(scroll, 1)
        self.scroll = scroll
        self.show_entry(None)

    # ------------------------------------------------------------------ display

    def show_entry(self, entry: AdapterEntry | None) -> None:
        """Show `entry`. When it is the one shown already (the list re-read after a notice), tags and
        notes the user is typing and has not saved yet are kept."""
        previous = self.entry
        same = entry is not None and previous is not None and previous.id == entry.id
        typed_tags = self.tags_edit.text() if same and self.tags_edit.text() != ", ".join(previous.manifest.tags) \
            else None
        typed_notes = self.notes_edit.toPlainText() if same and \
            self.notes_edit.toPlainText() != previous.manifest.notes else None
        self.entry = entry
        self.placeholder.setVisible(entry is None)
        self.scroll.setVisible(entry is not None)
        if entry is None:
            return
        m = entry.manifest
        self.title.setText(f"<h2>{html.escape(m.name)}</h2><span style='color:gray'>{html.escape(entry.id)}</span>")
        self.facts.setText(self._facts_html(entry))
        self.tags_edit.setText(typed_tags if typed_tags is not None else ", ".join(m.tags))
        if typed_notes is None:
            self.notes_edit.setPlainText(m.notes)
        self.raw.setPlainText(json.dumps(entry.to_dict(), indent=2, ensure_ascii=False))
        self.continue_button.setEnabled(m.source in ("trained", "imported", "inferred", "blend", "resize"))
        self._show_curve(m.hyperparameters.get("run_id") if isinstance(m.hyperparameters, dict) else None)

    def _show_curve(self, run_id: str | None) -> None:
        steps, evals = loss_series(RunDir.of(self.data, run_id).metrics) if run_id else ([], [])
        self.train_curve.setData([s for s, _ in steps], [v for _, v in steps])
        self.eval_curve.setData([s for s, _ in evals], [v for _, v in evals])
        self.plot.setVisible(bool(steps))
        self.no_curve.setVisible(not steps)

    def _facts_html(self, entry: AdapterEntry) -> str:
        m = entry.manifest
        hp = m.hyperparameters if isinstance(m.hyperparameters, dict) else {}
        metrics = m.metrics if isinstance(m.metrics, dict) else {}
        rows = [
            ("Base model", m.base_model or "unknown"),
            ("Method", f"{m.method.upper()} · rank {m.rank} · alpha {_fmt(m.alpha)}"
                       + (f" · {QUANT_LABELS.get(hp['quant'], hp['quant'])}" if hp.get("quant") else "")),
            ("Targets", ", ".join(m.target_modules) or "—"),
            ("Size on disk", human_bytes(entry.size_bytes)),
            ("Created", m.created[:19].replace("T", " ")),
            ("Source", m.source),
        ]
        if metrics:
            rows += [
                ("Final train loss", _fmt(metrics.get("final_train_loss"))),
                ("Best eval loss", f"{_fmt(metrics.get('best_eval_loss'))} at step {_fmt(metrics.get('best_step'))}"),
                ("Steps · tokens", f"{_fmt(metrics.get('steps'))} · {_fmt(metrics.get('tokens_seen'))}"),
                ("Duration", f"{_fmt(metrics.get('duration_s'))} s at {_fmt(metrics.get('tokens_per_second'))} tok/s"),
                ("Peak memory", human_bytes(metrics.get("peak_memory_bytes"))),
            ]
            forgetting = metrics.get("forgetting")
            if isinstance(forgetting, dict) and forgetting.get("base_perplexity"):
                change = forgetting["adapter_perplexity"] / forgetting["base_perplexity"] - 1
                rows.append(("Forgetting check", f"perplexity on general text {forgetting['base_perplexity']:.2f} → "
                             f"{forgetting['adapter_perplexity']:.2f} ({change:+.0%})"))
        if hp:
            rows.append(("Training", ", ".join(f"{k} {hp[k]}" for k in ("learning_rate", "epochs", "max_steps",
                                                                       "effective_batch", "seq_len", "seed")
                                             if k in hp)))
        dataset = m.dataset if isinstance(m.dataset, dict) else {}
        if dataset:
            rows.append(("Dataset", f"{Path(str(dataset.get('folder', ''))).name or '—'}: "
                                    f"{_fmt(dataset.get('samples'))} samples, {_fmt(dataset.get('tokens'))} tokens, "
                                    f"{_fmt(dataset.get('train_rows'))} train / "
                                    f"{_fmt(dataset.get('validation_rows'))} validation rows"))
        rows += self._lineage_rows(m.lineage.parents, m.lineage.recipe)
        if entry.warnings:
            rows.append(("Warnings", "; ".join(entry.warnings)))
        cells = "".join(f"<tr><td style='color:gray;padding-right:10px;vertical-align:top'>{html.escape(k)}</td>"
                        f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{cells}</table>"

    def _lineage_rows(self, parents: list[str], recipe: dict) -> list[tuple[str, str]]:
        if not parents and not recipe:
            return []
        names = []
        for parent in parents:
            try:
                names.append(self.library.get(parent).name)
            except Exception:  # noqa: BLE001 - a deleted parent is still worth naming
                names.append(f"{parent} (no longer in the library)")
        rows = [("Parents", ", ".join(names) or "—")]
        if recipe:
            kind = recipe.get("kind") or recipe.get("method") or "recipe"
            details = {k: v for k, v in recipe.items() if k not in ("kind", "parents")}
            rows.append(("Made by", f"{kind}: " + ", ".join(f"{k}={v}" for k, v in details.items())))
        return rows

    def _toggle_raw(self, on: bool) -> None:
        self.raw.setVisible(on)
        self.raw_toggle.setText("Hide raw manifest" if on else "Show raw manifest")

    # ------------------------------------------------------------------ edits

    def _apply(self, change) -> None:
        if self.entry is None:
            return
        try:
            entry = change(self.entry.id)
        except Exception as err:  # noqa: BLE001 - shown to the user; the library stays as it was
            show_error(self, err)
            return
        self.show_entry(entry)
        self.changes.announce(Changes(adapters_edited={entry.id}))

    def ask_rename(self) -> None:
        if self.entry is None:
            return
        name, ok = QInputDialog.getText(self, "Rename adapter", "New name:", text=self.entry.name)
        if ok and name.strip() and name.strip() != self.entry.name:
            self._apply(lambda adapter_id: self.library.rename(adapter_id, name.strip()))

    def save_tags(self) -> None:
        if self.entry is None:
            return
        wanted = {t.strip() for t in self.tags_edit.text().split(",") if t.strip()}
        current = set(self.entry.manifest.tags)
        if wanted != current:
            self._apply(lambda adapter_id: self.library.tag(adapter_id, add=sorted(wanted - current),
                                                            remove=sorted(current - wanted)))

    def save_notes(self) -> None:
        if self.entry is not None and self.notes_edit.toPlainText() != self.entry.manifest.notes:
            self._apply(lambda adapter_id: self.library.set_notes(adapter_id, self.notes_edit.toPlainText()))

    def open_folder(self) -> None:
        if self.entry is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.entry.path)))
