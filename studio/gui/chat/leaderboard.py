"""The chat panel's Leaderboard and Sessions tabs.

`LeaderboardView` ranks the adapters (and the base) of one base model from the A/B votes in
studio.db: Bradley-Terry rating on the Elo scale with its 95% bootstrap interval, win rate with its
Wilson interval, wins / losses / ties and the number of votes (studio.core.chat.records + ratings). The
ratings are computed in a worker, again after every notice of votes cast, adapters (their names) or
base models changed. `SessionsView` lists the saved chat sessions to reopen or delete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.chat.ratings import Rating
from studio.core.chat.records import Records
from studio.core.paths import DataDir
from studio.gui.changes import ChangeNotifier, Reload
from studio.gui.error_dialog import show_error

COLUMNS = ["#", "Adapter", "Rating", "95% CI", "Win rate", "W / L / T", "Votes"]


@dataclass(frozen=True)
class Board:
    """What the worker hands back: the bases with votes (fingerprint -> label), one base's ratings."""

    bases: dict[str, str]
    base: str | None
    ratings: list[Rating] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # adapter id -> name


def _board(data: DataDir, records: Records, wanted: str | None) -> Board:
    """Runs in a worker."""
    from studio.core.basemodels import studio_models
    from studio.core.library.store import AdapterLibrary

    known = {m.fingerprint: m.id for m in studio_models(data)}
    bases = {b: known.get(b, b[:12]) for b in records.bases()}
    base = wanted if wanted in bases else next(iter(bases), None)
    ratings = records.leaderboard(base) if base else []
    names = {"base": "Base model", **{e.id: e.name for e in AdapterLibrary(data).list()}}
    return Board(bases, base, ratings, names)


class LeaderboardView(QWidget):
    """Ratings per base model. `refresh(base)` recomputes them in a worker."""

    def __init__(self, data: DataDir, records: Records, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.records = data, records
        self.ratings: list[Rating] = []
        self.base: str | None = None
        self.wanted: str | None = None  # the base to show, read by the worker when it starts
        self._closing = False
        self.reload = Reload(self, lambda: _board(self.data, self.records, self.wanted), self._show, self._failed)
        self.base_combo = QComboBox(minimumContentsLength=20)
        self.base_combo.activated.connect(lambda _: self.refresh(self.base_combo.currentData()))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.note = QLabel(wordWrap=True)
        self.note.setStyleSheet("color: palette(mid)")
        top = QHBoxLayout()
        top.addWidget(QLabel("Base model:"))
        top.addWidget(self.base_combo, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        changes.changed.connect(self._changed)

    def busy(self) -> bool:
        return self.reload.running

    def refresh(self, base: str | None = None) -> None:
        """Recompute the ratings of `base` (default: the one shown) in a worker."""
        if self._closing:
            return
        self.wanted = base or self.base
        self.reload.start()

    def _changed(self, changes: Changes) -> None:
        if changes.votes_cast or changes.adapters or changes.base_models:
            self.refresh()

    def _failed(self, err: BaseException, details: str) -> None:
        if not self._closing:
            show_error(self, err, details)

    def _show(self, board: Board) -> None:
        if self._closing:
            return
        self.base, self.ratings = board.base, board.ratings
        self.base_combo.clear()
        for fingerprint, label in board.bases.items():
            self.base_combo.addItem(label, fingerprint)
        if board.base:
            self.base_combo.setCurrentIndex(self.base_combo.findData(board.base))
        self.table.setRowCount(len(board.ratings))
        for row, r in enumerate(board.ratings):
            name = board.names.get(r.adapter, r.adapter)
            win = f"{r.win_rate * 100:.0f}% ({r.win_rate_low * 100:.0f}–{r.win_rate_high * 100:.0f}%)"
            cells = [str(r.rank), name, f"{r.rating:.0f}", f"{r.ci_low:.0f} – {r.ci_high:.0f}", win,
                     f"{r.wins} / {r.losses} / {r.ties}", str(r.votes)]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column != 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if column == 1 and name != r.adapter:
                    item.setToolTip(r.adapter)
                self.table.setItem(row, column, item)
        votes = sum(r.votes for r in board.ratings) // 2
        self.note.setText(
            f"{votes} votes on this base. Rating: Bradley-Terry strength on the Elo scale (1000 = the reference), "
            "with a 95% bootstrap interval; a tie or 'both bad' counts half a win to each side."
            if board.ratings else "No votes yet: compare two adapters blind in the Side by side tab, or run a "
                                  "prompt set, and vote.")

    def shutdown(self) -> None:
        self._closing = True


class SessionsView(QWidget):
    """Saved chat sessions, newest first; `open_requested(session id)` reopens one."""

    open_requested = Signal(str)

    def __init__(self, records: Records, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.records = records
        self.list = QListWidget()
        self.list.itemDoubleClicked.connect(lambda item: self.open_requested.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._delete)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Chat sessions are saved as you chat. Double-click one to reopen it."))
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    def refresh(self) -> None:
        self.list.clear()
        for session in self.records.sessions():
            panes = len(session.panes)
            when = session.updated[:16].replace("T", " ")
            item = QListWidgetItem(f"{session.title or '(untitled)'} — {session.base}, {panes} panes · {when} UTC")
            item.setData(Qt.ItemDataRole.UserRole, session.id)
            self.list.addItem(item)

    def _selected(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def _open(self) -> None:
        if (session_id := self._selected()) is not None:
            self.open_requested.emit(session_id)

    def _delete(self) -> None:
        if (session_id := self._selected()) is not None:
            self.records.delete_session(session_id)
            self.refresh()
