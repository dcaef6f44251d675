"""The Library panel: a sortable, filterable table of adapters with import, export and delete.

It shows what studio.core.library reports and calls its methods; listing and importing run off the
GUI thread. Knows nothing about how adapters are validated or stored.
"""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMessageBox, QPlainTextEdit,
    QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from studio.core.library import AdapterLibrary
from studio.core.paths import DataDir
from studio.gui.workers import start_job

COLUMNS = ["Name", "Base", "Method", "Rank", "Size", "Created", "Final loss", "Tags"]


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} KB"


class LibraryPanel(QWidget):
    """Lists the adapters of the data directory; `refreshed` fires after each reload with the count."""

    refreshed = Signal(int)

    def __init__(self, data: DataDir, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library = AdapterLibrary(data)
        self.entries: dict[str, object] = {}
        self.setAcceptDrops(True)

        self.filter_edit = QLineEdit(placeholderText="Filter by name, base or tag…")
        self.filter_edit.textChanged.connect(self.apply_filter)
        import_button = QPushButton("Import…")
        import_button.clicked.connect(self.ask_import)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self.ask_export)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_selected)
        refresh_button = QPushButton("Refresh")
        refresh_button.clicked.connect(self.refresh)

        toolbar = QHBoxLayout()
        toolbar.addWidget(self.filter_edit, 1)
        for button in (import_button, self.export_button, self.delete_button, refresh_button):
            toolbar.addWidget(button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self.show_selected)

        self.detail = QPlainTextEdit(readOnly=True)
        self.detail.setPlaceholderText("Select an adapter to see its manifest.")
        self.empty_label = QLabel("The library is empty. Import an adapter (button or drag a folder or .zip "
                                  "here), or train one.")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.problems_label = QLabel()
        self.problems_label.setWordWrap(True)
        self.problems_label.setStyleSheet("color: #b35c00")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        splitter.setSizes([700, 300])
        layout = QVBoxLayout(self)
        layout.addLayout(toolbar)
        layout.addWidget(self.empty_label)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.problems_label)
        self.refresh()

    # ------------------------------------------------------------------ loading

    def refresh(self) -> None:
        start_job(lambda emit: (self.library.list(), self.library.problems()),
                  on_done=self._fill, on_error=self._show_error, parent=self)

    def _fill(self, result) -> None:
        entries, problems = result
        self.entries = {e.id: e for e in entries}
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            m = entry.manifest
            final_loss = m.metrics.get("final_loss") if isinstance(m.metrics, dict) else None
            values = [m.name, m.base_model or "?", m.method, str(m.rank), _size(entry.size_bytes),
                      m.created[:16].replace("T", " "), f"{final_loss:.3f}" if final_loss else "",
                      ", ".join(m.tags)]
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, entry.id)
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        self.empty_label.setVisible(not entries)
        self.problems_label.setText("Not usable: " + "; ".join(f"{Path(p).name}: {msg}" for p, msg in problems)
                                    if problems else "")
        self.apply_filter(self.filter_edit.text())
        self.refreshed.emit(len(entries))

    def apply_filter(self, text: str) -> None:
        needle = text.lower().strip()
        for row in range(self.table.rowCount()):
            cells = " ".join(self.table.item(row, c).text().lower() for c in (0, 1, 7))
            self.table.setRowHidden(row, bool(needle) and needle not in cells)

    def selected_id(self) -> str | None:
        items = self.table.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def show_selected(self) -> None:
        entry = self.entries.get(self.selected_id() or "")
        self.detail.setPlainText(json.dumps(entry.to_dict(), indent=2, ensure_ascii=False) if entry else "")

    # ------------------------------------------------------------------ actions

    def ask_import(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Import an adapter folder")
        if path:
            self.import_path(Path(path))

    def import_path(self, path: Path) -> None:
        start_job(lambda emit: self.library.import_path(path),
                  on_done=lambda entry: self.refresh(), on_error=self._show_error, parent=self)

    def ask_export(self) -> None:
        adapter_id = self.selected_id()
        if not adapter_id:
            return
        dest, _ = QFileDialog.getSaveFileName(self, "Export adapter as .zip", f"{adapter_id}.zip", "Zip (*.zip)")
        if dest:
            start_job(lambda emit: self.library.export(adapter_id, Path(dest), as_zip=True),
                      on_error=self._show_error, parent=self)

    def delete_selected(self) -> None:
        adapter_id = self.selected_id()
        if not adapter_id:
            return
        trash_id = self.library.delete(adapter_id)
        self.refresh()
        box = QMessageBox(QMessageBox.Icon.Information, "Moved to the trash",
                          f"{adapter_id} was moved to the trash.", parent=self)
        undo = box.addButton("Undo", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Ok)
        box.exec()
        if box.clickedButton() is undo:
            self.library.restore(trash_id)
            self.refresh()

    def _show_error(self, err: BaseException, details: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, "LoRA Studio", str(err), parent=self)
        box.setDetailedText(details)
        box.open()

    # ------------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        for url in event.mimeData().urls():
            self.import_path(Path(url.toLocalFile()))
