"""The trash: adapters deleted from the library, restorable until the trash is emptied.

Lists AdapterLibrary.trash() (newest first) with when each was deleted and its size; Restore puts
the selected one back under its original id, Empty trash deletes them all for good (after asking).
Both are announced on the app's ChangeNotifier, and the list re-reads itself from every notice that
touches the trash. `restored(adapter_id)` lets the library panel select the adapter it gets back.
"""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.library.store import AdapterLibrary
from studio.gui.changes import ChangeNotifier
from studio.gui.error_dialog import show_error
from studio.gui.library.detail import human_bytes

COLUMNS = ["Adapter", "Deleted", "Size"]


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


class TrashDialog(QDialog):
    restored = Signal(str)

    def __init__(self, library: AdapterLibrary, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library, self.changes = library, changes
        self.setWindowTitle("Trash")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(560, 360)
        self.last_error = None  # the last error box, for tests
        self.table = QTableWidget(0, len(COLUMNS), editTriggers=QAbstractItemView.EditTrigger.NoEditTriggers,
                                  selectionBehavior=QAbstractItemView.SelectionBehavior.SelectRows,
                                  selectionMode=QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemDoubleClicked.connect(lambda _item: self.restore_selected())
        self.summary = QLabel()
        self.restore_button = QPushButton("Restore", clicked=self.restore_selected)
        self.empty_button = QPushButton("Empty trash…", clicked=self.ask_empty)
        close_button = QPushButton("Close", clicked=self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(self.summary, 1)
        for button in (self.empty_button, self.restore_button, close_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        changes.changed.connect(self._changed)  # a bound slot: disconnected when the dialog is deleted
        self.refresh()

    def _changed(self, changes: Changes) -> None:
        if changes.trash:
            self.refresh()

    def refresh(self) -> None:
        items = self.library.trash()
        self.table.setRowCount(len(items))
        for row, item in enumerate(items):
            name = QTableWidgetItem(item.name or item.original_id)
            name.setData(Qt.ItemDataRole.UserRole, item.trash_id)
            name.setToolTip(f"{item.original_id} (trash id {item.trash_id})")
            self.table.setItem(row, 0, name)
            self.table.setItem(row, 1, QTableWidgetItem(_when(item.deleted)))
            self.table.setItem(row, 2, QTableWidgetItem(human_bytes(item.size_bytes)))
        total = sum(item.size_bytes for item in items)
        self.summary.setText(f"{len(items)} adapter(s), {human_bytes(total)}" if items else "The trash is empty.")
        if items:
            self.table.selectRow(0)
        self._update_buttons()

    def selected_trash_id(self) -> str | None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _update_buttons(self) -> None:
        self.restore_button.setEnabled(self.selected_trash_id() is not None)
        self.empty_button.setEnabled(self.table.rowCount() > 0)

    def restore_selected(self) -> None:
        trash_id = self.selected_trash_id()
        if trash_id is None:
            return
        try:
            entry = self.library.restore(trash_id)
        except Exception as err:  # noqa: BLE001 - shown; the trash and the library are as they were
            self.last_error = show_error(self, err)
            return
        self.restored.emit(entry.id)  # first: the panel's re-read after the notice selects it
        self.changes.announce(Changes(adapters_restored={entry.id}))

    def ask_empty(self) -> None:
        count = self.table.rowCount()
        answer = QMessageBox.question(self, "Empty trash", f"Delete the {count} adapter(s) in the trash for good? "
                                      "This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            try:
                self.library.empty_trash()
            except OSError as err:  # a file held open elsewhere: what could go is gone, the rest stays listed
                self.last_error = show_error(self, err)
            self.changes.announce(Changes(trash_changed=True))
