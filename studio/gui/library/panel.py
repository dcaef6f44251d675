"""The Library panel: a sortable, filterable table of adapters with import, export and delete.

It shows what studio.core.library.store reports and calls its methods; listing and importing run off the
GUI thread. Each import, delete and restore is announced on the app's ChangeNotifier, and the list
re-reads itself from every notice that touches adapters (whoever made the change, the CLI included).
The selected adapter's details live in studio.gui.library.detail; actions that belong to other
panels (chat, compare, continue training, export) are re-emitted as signals for the main window.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.library.store import AdapterLibrary
from studio.core.paths import DataDir
from studio.gui.changes import ChangeNotifier, Reload
from studio.gui.error_dialog import show_error
from studio.gui.library.detail import AdapterDetail, human_bytes
from studio.gui.recent_folders import last_folder, remember_folder
from studio.gui.workers import start_job

IMPORT_FOLDERS = "import"  # recent_folders purpose
COLUMNS = ["Name", "Base", "Method", "Rank", "Size", "Created", "Final loss", "Tags"]


class LibraryPanel(QWidget):
    """Lists the adapters of the data directory; `refreshed` fires after each reload with the count."""

    refreshed = Signal(int)
    imported = Signal(str)
    chat_requested = Signal(str)
    compare_requested = Signal(str)
    continue_requested = Signal(str)
    export_requested = Signal(str)

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        self.library = AdapterLibrary(data)
        self.entries: dict[str, object] = {}
        self.reload = Reload(self, lambda: (self.library.list(), self.library.problems()), self._fill,
                             self._show_error)
        self.setAcceptDrops(True)

        self.filter_edit = QLineEdit(placeholderText="Filter by name, base or tag…")
        self.filter_edit.textChanged.connect(self.apply_filter)
        import_button = QPushButton("Import…")
        import_menu = QMenu(import_button)
        import_menu.addAction("Adapter folder…", self.ask_import)
        import_menu.addAction("Zipped adapter (.zip)…", self.ask_import_zip)
        import_button.setMenu(import_menu)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(lambda: self.selected_id() and self.export_requested.emit(self.selected_id()))
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_selected)
        self.delete_button.setShortcut("Del")
        self.trash_button = QPushButton("Trash…", toolTip="Deleted adapters, restorable until the trash is emptied")
        self.trash_button.clicked.connect(self.open_trash)

        toolbar = QHBoxLayout()
        toolbar.addWidget(self.filter_edit, 1)
        for button in (import_button, self.export_button, self.delete_button, self.trash_button):
            toolbar.addWidget(button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self.show_selected)

        self.detail = AdapterDetail(data, self.library, changes)
        for name in ("chat_requested", "compare_requested", "continue_requested", "export_requested"):
            getattr(self.detail, name).connect(getattr(self, name).emit)
        self.empty_label = QLabel("The library is empty. Import an adapter (button or drag a folder or .zip "
                                  "here), or train one.")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.problems_label = QLabel()
        self.problems_label.setWordWrap(True)
        self.problems_label.setStyleSheet("color: #b35c00")
        # Delete is undoable: an inline bar (not a modal box) offers Undo for a while.
        self.last_trash_id: str | None = None
        self.pending_select: str | None = None
        self.undo_label = QLabel()
        undo_button = QPushButton("Undo")
        undo_button.clicked.connect(self.undo_delete)
        self.undo_button = undo_button
        self.undo_bar = QWidget()
        undo_layout = QHBoxLayout(self.undo_bar)
        undo_layout.setContentsMargins(0, 0, 0, 0)
        undo_layout.addWidget(self.undo_label, 1)
        undo_layout.addWidget(undo_button)
        self.undo_bar.setVisible(False)
        self.undo_timer = QTimer(self, singleShot=True, interval=20_000)
        self.undo_timer.timeout.connect(lambda: self.undo_bar.setVisible(False))

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        splitter.setSizes([620, 420])
        layout = QVBoxLayout(self)
        layout.addLayout(toolbar)
        layout.addWidget(self.empty_label)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.problems_label)
        layout.addWidget(self.undo_bar)
        changes.changed.connect(self._changed)
        self.refresh()

    # ------------------------------------------------------------------ loading

    def refresh(self) -> None:
        """Re-read the library in a worker (the first time, and after each notice about adapters)."""
        self.reload.start()

    def _changed(self, changes: Changes) -> None:
        if changes.adapters:
            self.refresh()

    def _fill(self, result) -> None:
        entries, problems = result
        self.entries = {e.id: e for e in entries}
        keep = self.pending_select or self.selected_id()
        self.pending_select = None
        self.table.setSortingEnabled(False)
        self.table.clearSelection()
        self.table.setRowCount(len(entries) + len(problems))
        for row, entry in enumerate(entries):
            m = entry.manifest
            metrics = m.metrics if isinstance(m.metrics, dict) else {}
            final_loss = metrics.get("final_train_loss", metrics.get("final_loss"))
            values = [m.name, m.base_model or "?", m.method, str(m.rank), human_bytes(entry.size_bytes),
                      m.created[:16].replace("T", " "),
                      f"{final_loss:.3f}" if isinstance(final_loss, (int, float)) else "", ", ".join(m.tags)]
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, entry.id)
                self.table.setItem(row, col, item)
        grey = self.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        for row, (path, message) in enumerate(problems, start=len(entries)):
            # A broken folder is listed greyed with its reason, so it can be seen and thrown away.
            for col, value in enumerate([Path(path).name, f"not usable: {message}", *[""] * 6]):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, Path(path).name)
                item.setForeground(grey)
                item.setToolTip(message)
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        self.empty_label.setVisible(not entries)
        self.problems_label.setText("Not usable: " + "; ".join(f"{Path(p).name}: {msg}" for p, msg in problems)
                                    if problems else "")
        self.apply_filter(self.filter_edit.text())
        if keep in self.entries:
            self.select(keep)
        else:
            self.show_selected()
        self.refreshed.emit(len(entries))

    def apply_filter(self, text: str) -> None:
        needle = text.lower().strip()
        for row in range(self.table.rowCount()):
            cells = " ".join(self.table.item(row, c).text().lower() for c in (0, 1, 7))
            self.table.setRowHidden(row, bool(needle) and needle not in cells)

    def selected_id(self) -> str | None:
        items = self.table.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def select(self, adapter_id: str) -> bool:
        """Select the row of `adapter_id`; False when it is not listed (yet)."""
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) == adapter_id:
                self.table.selectRow(row)
                return True
        return False

    def show_selected(self) -> None:
        self.detail.show_entry(self.entries.get(self.selected_id() or ""))

    # ------------------------------------------------------------------ actions

    def ask_import(self) -> None:
        """An adapter comes as a folder or a .zip; the menu on the Import button offers both."""
        path = QFileDialog.getExistingDirectory(self, "Import an adapter folder", last_folder(IMPORT_FOLDERS))
        if path:
            remember_folder(IMPORT_FOLDERS, path)
            self.import_path(Path(path))

    def ask_import_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a zipped adapter", last_folder(IMPORT_FOLDERS),
                                              "Zip archives (*.zip)")
        if path:
            remember_folder(IMPORT_FOLDERS, path)
            self.import_path(Path(path))

    def import_path(self, path: Path) -> None:
        start_job(lambda emit: self.library.import_path(path), on_done=self._imported, on_error=self._show_error,
                  parent=self)

    def _imported(self, entry) -> None:
        self.pending_select = entry.id
        self.changes.announce(Changes(adapters_added={entry.id}))
        self.imported.emit(entry.id)

    def shutdown(self) -> None:
        self.undo_timer.stop()

    def delete_selected(self) -> None:
        adapter_id = self.selected_id()
        if not adapter_id:
            return
        name = self.entries[adapter_id].name if adapter_id in self.entries else adapter_id
        try:
            self.last_trash_id = self.library.delete(adapter_id)
        except Exception as err:  # noqa: BLE001 - shown; the library is unchanged
            show_error(self, err)
            return
        self.undo_label.setText(f"“{name}” was moved to the trash.")
        self.undo_bar.setVisible(True)
        self.undo_timer.start()
        self.changes.announce(Changes(adapters_deleted={adapter_id}))

    def undo_delete(self) -> None:
        """Bring back the adapter deleted last (it waits in the trash until the trash is emptied)."""
        self.undo_timer.stop()
        self.undo_bar.setVisible(False)
        if self.last_trash_id:
            trash_id, self.last_trash_id = self.last_trash_id, None
            try:
                entry = self.library.restore(trash_id)
            except Exception as err:  # noqa: BLE001
                show_error(self, err)
                return
            self.pending_select = entry.id
            self.changes.announce(Changes(adapters_restored={entry.id}))

    def open_trash(self):
        """The trash as a dialog (returned for tests); a restored adapter is selected in the list."""
        from studio.gui.library.trash_dialog import TrashDialog

        dialog = TrashDialog(self.library, self.changes, self)
        dialog.restored.connect(self._restored)
        dialog.open()
        return dialog

    def _restored(self, adapter_id: str) -> None:
        """The trash dialog restored an adapter (and announces it): select it once the list has it."""
        self.undo_bar.setVisible(False)
        self.last_trash_id = None
        self.pending_select = adapter_id

    def _show_error(self, err: BaseException, details: str) -> None:
        show_error(self, err, details)

    # ------------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        for url in event.mimeData().urls():
            self.import_path(Path(url.toLocalFile()))
