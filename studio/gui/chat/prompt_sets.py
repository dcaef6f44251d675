"""The chat panel's Prompt sets tab: named lists of test prompts, run through two sides, voted pairwise.

A prompt set is saved in studio.db (studio.core.chat.records). "Run set" asks the panel (signal
`run_requested`) to put every prompt through two sides (adapters or the base) in one batch each;
answers arrive one prompt at a time (`add_result`). The user steps through them: each pair is
shown blind, A and B in a random order drawn from an injectable `random.Random`, and a vote (A, B,
tie, both bad) is stored (and announced on the app's ChangeNotifier) and the names revealed before
moving on to the next unvoted pair.

The panel runs the set; this tab shows the answers and stores the votes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.chat.ratings import blind_assignment, winner_code
from studio.core.chat.records import Records
from studio.core.errors import StudioError
from studio.gui.changes import ChangeNotifier
from studio.gui.error_dialog import show_error

CHOICES = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))


@dataclass
class PairResult:
    prompt: str
    answers: dict[str, str]  # side ref -> answer
    assignment: dict[str, str]  # "A"/"B" -> side ref
    vote: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PromptSetView(QWidget):
    run_requested = Signal(list, str, str)  # prompts, side A ref, side B ref
    stop_requested = Signal()

    def __init__(self, records: Records, rng: random.Random, changes: ChangeNotifier,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.records, self.rng, self.changes = records, rng, changes
        self.names: dict[str, str] = {"base": "Base model"}
        self.results: list[PairResult] = []
        self.current = -1
        self.base_key: str = ""  # the base fingerprint votes are stored under
        self.settings: dict[str, Any] = {}
        self.running = False
        self.sides: tuple[str, str] = ("", "")

        self.set_combo = QComboBox(editable=True, minimumContentsLength=18)
        self.set_combo.lineEdit().setPlaceholderText("Name of the prompt set")
        self.set_combo.activated.connect(lambda _: self.load_set(self.set_combo.currentText()))
        self.save_button = QPushButton("Save set")
        self.save_button.clicked.connect(self.save_set)
        self.delete_button = QPushButton("Delete set")
        self.delete_button.clicked.connect(self._delete_set)
        self.prompts_edit = QPlainTextEdit(placeholderText="One test prompt per line")
        self.prompts_edit.setMaximumHeight(130)
        self.side_a, self.side_b = QComboBox(minimumContentsLength=14), QComboBox(minimumContentsLength=14)
        self.run_button = QPushButton("Run set")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop_requested.emit)
        self.progress = QLabel("")

        self.position = QLabel("Run a set to vote on its answers.")
        self.prompt_label = QLabel(wordWrap=True)
        self.prompt_label.setStyleSheet("font-weight: 600")
        self.views = {"A": QTextEdit(readOnly=True), "B": QTextEdit(readOnly=True)}
        self.view_titles = {"A": QLabel("<b>A</b>"), "B": QLabel("<b>B</b>")}
        self.vote_buttons = {}
        for code, text in CHOICES:
            button = QPushButton(text, enabled=False)
            button.clicked.connect(lambda _=False, c=code: self.vote(c))
            self.vote_buttons[code] = button
        self.prev_button, self.next_button = QPushButton("◀ Previous"), QPushButton("Next ▶")
        self.prev_button.clicked.connect(lambda: self.show_pair(self.current - 1))
        self.next_button.clicked.connect(lambda: self.show_pair(self.current + 1))
        self.reveal = QLabel(wordWrap=True)

        top = QHBoxLayout()
        for w in (QLabel("Prompt set:"), self.set_combo, self.save_button, self.delete_button):
            top.addWidget(w)
        top.addStretch(1)
        run = QHBoxLayout()
        for w in (QLabel("Compare"), self.side_a, QLabel("with"), self.side_b, self.run_button, self.stop_button,
                  self.progress):
            run.addWidget(w)
        run.addStretch(1)
        answers = QHBoxLayout()
        for label in ("A", "B"):
            column = QVBoxLayout()
            column.addWidget(self.view_titles[label])
            column.addWidget(self.views[label], 1)
            answers.addLayout(column, 1)
        votes = QHBoxLayout()
        votes.addWidget(self.prev_button)
        votes.addStretch(1)
        for button in self.vote_buttons.values():
            votes.addWidget(button)
        votes.addStretch(1)
        votes.addWidget(self.next_button)
        review = QGroupBox("Vote pair by pair (blind: A and B are shuffled for every prompt)")
        review_layout = QVBoxLayout(review)
        for item in (self.position, self.prompt_label, answers, votes, self.reveal):
            review_layout.addLayout(item) if isinstance(item, QHBoxLayout) else review_layout.addWidget(item)
        review_layout.setStretch(2, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.prompts_edit)
        layout.addLayout(run)
        layout.addWidget(review, 1)
        self._update_buttons()

    # ------------------------------------------------------------ sets

    def refresh(self) -> None:
        text = self.set_combo.currentText()
        self.set_combo.clear()
        self.set_combo.addItems([s.name for s in self.records.prompt_sets()])
        self.set_combo.setEditText(text)

    def prompts(self) -> list[str]:
        return [line.strip() for line in self.prompts_edit.toPlainText().splitlines() if line.strip()]

    def save_set(self) -> None:
        try:
            self.records.save_prompt_set(self.set_combo.currentText().strip(), self.prompts())
        except StudioError as err:
            show_error(self, err)
            return
        self.refresh()

    def load_set(self, name: str) -> None:
        try:
            prompt_set = self.records.prompt_set(name)
        except StudioError as err:
            show_error(self, err)
            return
        self.set_combo.setEditText(prompt_set.name)
        self.prompts_edit.setPlainText("\n".join(prompt_set.prompts))

    def _delete_set(self) -> None:
        name = self.set_combo.currentText().strip()
        if name:
            self.records.delete_prompt_set(name)
            self.set_combo.setEditText("")
            self.refresh()

    def set_choices(self, choices: list[tuple[str, str]]) -> None:
        """(name, ref) of the sides one can compare (the base and the adapters of the active base)."""
        self.names = {ref: name for name, ref in choices}
        for combo, fallback in ((self.side_a, 1), (self.side_b, 0)):
            keep = combo.currentData()
            combo.clear()
            for name, ref in choices:
                combo.addItem(name, ref)
            index = combo.findData(keep)
            combo.setCurrentIndex(index if index >= 0 else min(fallback, combo.count() - 1))

    def choose_sides(self, ref_a: str, ref_b: str) -> None:
        for combo, ref in ((self.side_a, ref_a), (self.side_b, ref_b)):
            if combo.findData(ref) >= 0:
                combo.setCurrentIndex(combo.findData(ref))

    # ------------------------------------------------------------ running

    def run(self) -> None:
        prompts, a, b = self.prompts(), self.side_a.currentData(), self.side_b.currentData()
        if not prompts:
            show_error(self, StudioError("The prompt set is empty.", hint="Write one prompt per line."))
        elif not a or not b or a == b:
            show_error(self, StudioError("Pick two different sides to compare."))
        else:
            self.run_requested.emit(prompts, a, b)

    def run_started(self, base_key: str, settings: dict[str, Any]) -> None:
        self.results, self.current, self.running = [], -1, True
        self.base_key, self.settings = base_key, settings
        self.sides = (self.side_a.currentData(), self.side_b.currentData())
        self.progress.setText(f"0 of {len(self.prompts())} answered…")
        for view in self.views.values():
            view.clear()
        self.reveal.setText("")
        self._update_buttons()

    def set_base_key(self, base_key: str) -> None:
        self.base_key = base_key

    def add_result(self, prompt: str, answers: tuple[str, ...]) -> None:
        by_side = dict(zip(self.sides, answers, strict=True))
        self.results.append(PairResult(prompt, by_side, blind_assignment(list(self.sides), self.rng)))
        self.progress.setText(f"{len(self.results)} of {len(self.prompts())} answered…")
        if self.current < 0 or self.results[self.current].vote is not None:
            self.show_pair(len(self.results) - 1 if self.current >= 0 else 0)
        self._update_buttons()

    def run_finished(self, failed: bool = False) -> None:
        self.running = False
        self.progress.setText("failed" if failed else f"{len(self.results)} prompts answered")
        self._update_buttons()

    # ------------------------------------------------------------ voting

    def show_pair(self, index: int) -> None:
        if not 0 <= index < len(self.results):
            return
        self.current = index
        pair = self.results[index]
        self.position.setText(f"Prompt {index + 1} of {len(self.results)}" + (" — voted" if pair.vote else ""))
        self.prompt_label.setText(pair.prompt)
        for label, ref in pair.assignment.items():
            self.views[label].setPlainText(pair.answers[ref])
            shown = f"{label} — {self.names.get(ref, ref)}" if pair.vote else label
            self.view_titles[label].setText(f"<b>{shown}</b>")
        self._update_buttons()

    def vote(self, choice: str) -> None:
        if not 0 <= self.current < len(self.results) or self.results[self.current].vote:
            return
        pair = self.results[self.current]
        a, b = pair.assignment["A"], pair.assignment["B"]
        self.records.add_vote(self.base_key, pair.prompt, a, b, winner_code(choice, pair.assignment, a, b),
                              blind=True, answer_a=pair.answers[a], answer_b=pair.answers[b],
                              settings=self.settings)
        pair.vote = choice
        self.reveal.setText(f"Prompt {self.current + 1}: A was {self.names.get(a, a)}, B was {self.names.get(b, b)}"
                            f" — you voted: {dict(CHOICES)[choice]}.")
        self.changes.announce(Changes(votes_cast=1))
        following = next((i for i in range(self.current + 1, len(self.results)) if not self.results[i].vote), None)
        self.show_pair(following if following is not None else self.current)

    def _update_buttons(self) -> None:
        has = 0 <= self.current < len(self.results)
        open_vote = has and self.results[self.current].vote is None
        for button in self.vote_buttons.values():
            button.setEnabled(open_vote)
        self.prev_button.setEnabled(has and self.current > 0)
        self.next_button.setEnabled(has and self.current < len(self.results) - 1)
        self.run_button.setEnabled(not self.running)
        self.stop_button.setEnabled(self.running)
