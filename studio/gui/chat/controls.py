"""Small controls of the chat panel: the generation settings bar and the A/B vote bar.

`SettingsBar` edits the sampling settings every pane shares (a fair comparison: same seed, same
settings) and hands them over as a plain dict of studio.ml.chat.generation.GenerationSettings fields (the
worker builds the dataclass, so this module imports nothing from studio.ml). `VoteBar` offers A / B /
tie / both bad and says what was recorded.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

VOTES = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))


def _double(low: float, high: float, step: float, value: float, decimals: int = 2, tip: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox(minimum=low, maximum=high, singleStep=step, decimals=decimals, value=value)
    box.setToolTip(tip)
    return box


class SettingsBar(QWidget):
    """Temperature, top-p, top-k, max new tokens, repetition penalty, seed and the system prompt."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.temperature = _double(0, 2, 0.1, 0.7, tip="0 = greedy (always the most likely token)")
        self.top_p = _double(0.01, 1, 0.05, 0.95, tip="Sample from the smallest set of tokens holding this much "
                                                      "probability (1 = off)")
        self.top_k = QSpinBox(minimum=0, maximum=1000, value=50, toolTip="Sample among the k likeliest (0 = off)")
        self.max_new_tokens = QSpinBox(minimum=1, maximum=8192, value=256, singleStep=32,
                                       toolTip="Longest answer, in tokens")
        self.repetition_penalty = _double(0.5, 2, 0.05, 1.0, tip="1 = none; 1.1 discourages repeating")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0, toolTip="The same seed for every pane")
        self.system_prompt = QLineEdit(placeholderText="System prompt (optional, the same for every pane)")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label, box in (("Temp", self.temperature), ("Top-p", self.top_p), ("Top-k", self.top_k),
                           ("Max tokens", self.max_new_tokens), ("Rep. penalty", self.repetition_penalty),
                           ("Seed", self.seed)):
            layout.addWidget(QLabel(label))
            layout.addWidget(box)
        layout.addWidget(self.system_prompt, 1)

    def values(self) -> dict[str, Any]:
        return {"system_prompt": self.system_prompt.text().strip(), "temperature": self.temperature.value(),
                "top_p": self.top_p.value(), "top_k": self.top_k.value(),
                "max_new_tokens": self.max_new_tokens.value(),
                "repetition_penalty": self.repetition_penalty.value(), "seed": self.seed.value()}

    def set_values(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            box = getattr(self, key, None)
            if isinstance(box, QLineEdit):
                box.setText(str(value or ""))
            elif isinstance(box, (QSpinBox, QDoubleSpinBox)) and value is not None:
                box.setValue(value)


class VoteBar(QWidget):
    """'Which answer is better?' with four buttons; `voted(choice)` with A, B, tie or both_bad."""

    voted = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.question = QLabel("<b>Which answer is better?</b>")
        self.buttons: dict[str, QPushButton] = {}
        self.result = QLabel("")
        self.result.setWordWrap(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.question)
        for code, text in VOTES:
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, c=code: self.voted.emit(c))
            self.buttons[code] = button
            layout.addWidget(button)
        layout.addWidget(self.result, 1)
        self.set_open(False)

    def set_open(self, open_: bool, why: str = "") -> None:
        for button in self.buttons.values():
            button.setEnabled(open_)
            button.setToolTip(why)

    def show_result(self, text: str) -> None:
        self.result.setText(text)
