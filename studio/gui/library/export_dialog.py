"""The Export dialog: merge one adapter into its base, export it (peft, zip, Ollama, GGUF), or shrink it.

The dialog only: it collects the format, precision and destination, shows the disk space the export
needs and has, and runs studio.gui.library.export_formats.run_export in a worker with progress and a
cooperative Cancel. The back end smoke-tests every export (GGUF files are read back instead); the
dialog shows the probe prompt and the answer when done; a smaller adapter it adds to the library is
announced on the app's ChangeNotifier. The formats themselves are described in
studio.gui.library.export_formats. It imports nothing from studio.ml; run_export does, in the worker.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QSettings, QSignalBlocker, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import adapter_base
from studio.core.library.store import AdapterLibrary, slugify
from studio.core.paths import DataDir
from studio.core.progress import Cancelled, StageProgress
from studio.gui.changes import ChangeNotifier
from studio.gui.error_dialog import show_error
from studio.gui.library.export_formats import (
    ExportOutcome,
    available_formats,
    format_size,
    free_bytes,
    run_export,
)
from studio.gui.workers import start_job

LAST_FOLDER_KEY = "export/last_folder"
OK_STYLE, BAD_STYLE = "color: #1a7f37", "color: #b42318"


def _label(min_height: int, style: str = "") -> QLabel:
    """A wrapped, top-aligned label; a form gives wrapped labels no height-for-width, so reserve lines."""
    label = QLabel(wordWrap=True, styleSheet=style, minimumHeight=min_height)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    return label


class ExportDialog(QDialog):
    """Merge, export or shrink one library adapter. Work runs in a worker; closing while busy stops it."""

    def __init__(self, data: DataDir, adapter_id: str, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        self.library = AdapterLibrary(data)
        self.entry = self.library.get(adapter_id)
        self.adapter_id = self.entry.id
        self.formats = {f.key: f for f in available_formats()}
        self.smoke_check = None  # the back end's default; tests of random tiny models pass a lenient one
        self.outcome: ExportOutcome | None = None
        self.last_error = None  # the last error box, for tests
        self._stop = threading.Event()
        self._running = False
        self._close_when_done = False
        self._auto_name = ""
        try:
            self.base_info = adapter_base(data, self.entry.path, self.entry.manifest).inspect()
        except StudioError:
            self.base_info = None  # a merge then fails with the back end's own explanation
        m = self.entry.manifest
        self.setWindowTitle(f"Export {m.name}")
        self.setMinimumWidth(600)
        self.resize(660, 440)

        title = QLabel(f"<b>{m.name}</b> &nbsp;·&nbsp; base {m.base_model or '?'} &nbsp;·&nbsp; rank {m.rank}")
        self.format_combo = QComboBox()
        for fmt in self.formats.values():
            self.format_combo.addItem(fmt.label, fmt.key)
        line = self.fontMetrics().lineSpacing()
        self.format_help = _label(2 * line + 2, "color: gray")
        self.dtype_combo = QComboBox(toolTip="16-bit halves the size of 32-bit; fp16 for older GPUs; "
                                             "32-bit is exact.")
        self.rank_spin = QSpinBox(minimum=1, maximum=max(1, m.rank - 1), value=max(1, m.rank // 2),
                                  toolTip="The new, smaller rank.")
        self.folder_edit = QLineEdit(QSettings().value(LAST_FOLDER_KEY, "", type=str) or str(Path.home()))
        choose = QPushButton("Choose…")
        choose.clicked.connect(self.choose_folder)
        self.folder_row = QWidget()
        folder_layout = QHBoxLayout(self.folder_row)
        folder_layout.setContentsMargins(0, 0, 0, 0)
        folder_layout.addWidget(self.folder_edit, 1)
        folder_layout.addWidget(choose)
        self.name_edit = QLineEdit()
        self.from_edit = QLineEdit(placeholderText="an Ollama model name or the base's folder (default: ./base in the bundle)")
        self.system_edit = QLineEdit(placeholderText="optional SYSTEM prompt for the Modelfile")
        self.space_label = _label(2 * line + 2)
        self.form = QFormLayout()
        for label, widget in (("Export as", self.format_combo), ("", self.format_help),
                              ("Precision", self.dtype_combo), ("New rank", self.rank_spin),
                              ("Into folder", self.folder_row), ("Name", self.name_edit), ("FROM", self.from_edit),
                              ("SYSTEM", self.system_edit), ("Disk", self.space_label)):
            self.form.addRow(label, widget)

        self.progress = QProgressBar(maximum=1000, textVisible=False)
        self.status_label = _label(0)
        self.status_label.setText("Every export is checked before it is reported done: loaded back and asked "
                                  "a probe question (GGUF files are read back).")
        self.result_label = _label(3 * line + 2)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.export_button = QPushButton("Export")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Close")
        self.cancel_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addLayout(self.form)
        for widget in (self.progress, self.status_label, self.result_label):
            layout.addWidget(widget)
        layout.addStretch(1)
        layout.addLayout(buttons)

        self.format_combo.currentIndexChanged.connect(self._format_changed)
        self.dtype_combo.currentIndexChanged.connect(self._format_changed)
        self.rank_spin.valueChanged.connect(self._format_changed)
        self.folder_edit.textChanged.connect(self.update_space)
        self.name_edit.textChanged.connect(self.update_space)
        self._format_changed()
        self._set_running(False)

    # ------------------------------------------------------------------ the form

    def fmt(self) -> str:
        return self.format_combo.currentData()

    def destination(self) -> Path:
        return Path(self.folder_edit.text().strip() or ".").expanduser() / self.name_edit.text().strip()

    def needed_bytes(self) -> int:
        parameters = self.base_info.parameters if self.base_info is not None else None
        return self.formats[self.fmt()].needed_bytes(self.dtype_combo.currentText(), parameters,
                                                     self.entry.size_bytes)

    def _format_changed(self) -> None:
        fmt = self.formats[self.fmt()]
        self.format_help.setText(fmt.help)
        self._fit_help()
        if tuple(self.dtype_combo.itemText(i) for i in range(self.dtype_combo.count())) != fmt.dtypes:
            with QSignalBlocker(self.dtype_combo):
                self.dtype_combo.clear()
                self.dtype_combo.addItems(list(fmt.dtypes))
        resize, ollama = fmt.key == "resize", fmt.key == "ollama"
        for widget, shown in ((self.dtype_combo, bool(fmt.dtypes)), (self.from_edit, ollama),
                              (self.system_edit, ollama), (self.rank_spin, resize), (self.folder_row, not resize)):
            widget.setVisible(shown)
            self.form.labelForField(widget).setVisible(shown)
        self.form.labelForField(self.name_edit).setText("New name" if resize else "Name")
        self.form.labelForField(self.space_label).setText("Note" if resize else "Disk")
        if self.name_edit.text() in ("", self._auto_name):
            stem = self.entry.manifest.name if resize else slugify(self.entry.manifest.name)
            self._auto_name = stem + fmt.suffix.format(dtype=self.dtype_combo.currentText(),
                                                       rank=self.rank_spin.value())
            self.name_edit.setText(self._auto_name)
        self.update_space()

    def _fit_help(self) -> None:
        width = self.format_help.width() if self.format_help.isVisible() else self.width() - 110
        self.format_help.setFixedHeight(self.format_help.heightForWidth(max(width, 300)))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit_help()

    def update_space(self) -> None:
        dest, needed = self.destination(), self.needed_bytes()
        if self.fmt() == "resize":
            problem = "" if self.name_edit.text().strip() else "Give the new adapter a name."
            if self.entry.manifest.rank < 2:
                problem = "A rank-1 adapter cannot be made smaller."
            self.space_label.setText(problem or "Adds a new adapter to the library; this one stays as it is.")
            self.space_label.setStyleSheet(BAD_STYLE if problem else "")
            self.export_button.setEnabled(not self._running and not problem)
            return
        try:
            free = free_bytes(dest)
        except OSError:
            free = 0
        text = f"Needs about {format_size(needed)}; {format_size(free)} free on that disk." if needed else \
            f"{format_size(free)} free on that disk."
        problem, written = "", self.outcome is not None and dest == self.outcome.path
        if not self.name_edit.text().strip():
            problem = "Give the export a name."
        elif written:
            text += "\nWritten there; choose another name to export again."
        elif dest.exists():
            problem = f"{dest} already exists; choose another name."
        elif needed and free < needed * 1.1:
            problem = "Not enough free space: choose another disk or a smaller precision."
        self.space_label.setText(text + (f"\n{problem}" if problem else ""))
        self.space_label.setStyleSheet(BAD_STYLE if problem else "")
        self.export_button.setEnabled(not self._running and not problem and not written)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    # ------------------------------------------------------------------ running

    def busy(self) -> bool:
        return self._running

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.progress.setVisible(running)
        self.cancel_button.setText("Cancel" if running else "Close")
        for widget in (self.format_combo, self.dtype_combo, self.rank_spin, self.folder_edit, self.name_edit,
                       self.from_edit, self.system_edit):
            widget.setEnabled(not running)
        self.update_space()

    def start(self) -> None:
        if self._running:
            return
        fmt, dest, dtype, rank = self.fmt(), self.destination(), self.dtype_combo.currentText(), self.rank_spin.value()
        new_name = self.name_edit.text().strip()
        from_ref, system = self.from_edit.text().strip() or None, self.system_edit.text().strip() or None
        library, adapter_id, check, stop = self.library, self.adapter_id, self.smoke_check, self._stop
        stop.clear()
        self.outcome = None
        self.result_label.clear()
        self.progress.setValue(0)
        self.status_label.setText("Starting…")
        QSettings().setValue(LAST_FOLDER_KEY, self.folder_edit.text().strip())
        self._set_running(True)
        start_job(lambda emit: run_export(emit, library, adapter_id, fmt, dest, dtype=dtype,
                                          should_stop=stop.is_set, smoke_check=check,
                                          from_ref=from_ref, system=system, rank=rank, new_name=new_name),
                  on_done=self._done, on_error=self._failed, on_event=self._progress, parent=self)

    def _progress(self, event) -> None:
        if isinstance(event, StageProgress):
            self.progress.setValue(int(event.fraction * 1000))
            self.status_label.setText(event.message)

    def _done(self, outcome: ExportOutcome) -> None:
        self.outcome = outcome
        self._set_running(False)
        self.status_label.setText(f"Done: {outcome.path}")
        self.result_label.setStyleSheet(OK_STYLE)
        self.result_label.setText(outcome.summary + "".join(f"\n• {w}" for w in outcome.warnings))
        if outcome.adapter_id:  # "a smaller adapter" adds one to the library
            self.changes.announce(Changes(adapters_added={outcome.adapter_id}))
        self._maybe_close()

    def _failed(self, err: BaseException, details: str) -> None:
        self._set_running(False)
        if isinstance(err, Cancelled):
            self.status_label.setText("Cancelled. Nothing was written.")
        else:
            self.status_label.setText(f"Failed: {getattr(err, 'message', err)}")
            if not self._close_when_done:
                self.last_error = show_error(self, err, details)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_when_done:
            self._close_when_done = False
            super().reject()

    def cancel(self) -> None:
        """Ask the running export to stop after its current step."""
        if self._running:
            self._stop.set()
            self.status_label.setText("Stopping after the current step…")

    def shutdown(self) -> None:
        self.cancel()

    def reject(self) -> None:
        if self._running:  # Cancel first; the dialog closes when the worker has stopped
            self.cancel()
            return
        super().reject()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self._running:
            self._close_when_done = True
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)
