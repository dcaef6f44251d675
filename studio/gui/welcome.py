"""The first-run welcome page: what this machine can do, the default model, and "Try it".

Shows the hardware doctor's verdict, prepares the default base model with a progress bar, offers a
route to a bigger base model, and starts the sample-dataset demo. All work runs in background
jobs; this page only displays results, and announces a base model it converted or downloaded on the
app's ChangeNotifier.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.paths import DataDir
from studio.core.progress import StageProgress
from studio.core.train.demo import SAMPLE_DATASET
from studio.gui.changes import ChangeNotifier
from studio.gui.recent_folders import last_folder, remember_folder
from studio.gui.workers import start_job

log = logging.getLogger(__name__)


def _doctor(emit) -> dict:
    from studio.ml.base.hardware import doctor_report

    return doctor_report()


class WelcomePage(QWidget):
    """Emits `try_it_requested(sample_folder)` and `base_model_chosen(path_or_id)`; `dismissed` to close."""

    try_it_requested = Signal(Path)
    base_model_chosen = Signal(str)
    dismissed = Signal()
    default_model_ready = Signal(Path)

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        title = QLabel("<h1>Welcome to LoRA Studio</h1>"
                       "<p>Train small adapters that teach your local chat model new facts, styles and "
                       "skills, then compare them side by side.</p>")
        title.setWordWrap(True)

        self.machine_label = QLabel("Looking at this machine…")
        self.machine_label.setWordWrap(True)
        machine_box = QGroupBox("This machine")
        QVBoxLayout(machine_box).addWidget(self.machine_label)

        self.model_label = QLabel("Default base model: SmolLM2-135M-Instruct (a small real chat model).")
        self.model_progress = QProgressBar()
        self.model_progress.setRange(0, 100)
        self.prepare_button = QPushButton("Prepare the default model")
        self.prepare_button.clicked.connect(self.prepare_default_model)
        model_box = QGroupBox("Base model")
        model_layout = QVBoxLayout(model_box)
        model_layout.addWidget(self.model_label)
        model_layout.addWidget(self.model_progress)
        model_layout.addWidget(self.prepare_button)

        bigger_box = QGroupBox("A bigger base model")
        bigger_layout = QVBoxLayout(bigger_box)
        bigger_layout.addWidget(QLabel("Pick one already in your Hugging Face cache, a local folder, or "
                                       "download a hub id."))
        self.cache_list = QListWidget()
        self.cache_list.setMaximumHeight(90)
        self.cache_list.itemDoubleClicked.connect(lambda item: self.base_model_chosen.emit(item.text()))
        bigger_layout.addWidget(self.cache_list)
        row = QHBoxLayout()
        folder_button = QPushButton("Local folder…")
        folder_button.clicked.connect(self.pick_folder)
        download_button = QPushButton("Download a hub id…")
        download_button.clicked.connect(self.ask_download)
        row.addWidget(folder_button)
        row.addWidget(download_button)
        bigger_layout.addLayout(row)
        self.bigger_status = QLabel()
        self.bigger_status.setWordWrap(True)
        bigger_layout.addWidget(self.bigger_status)

        self.try_button = QPushButton("Try it: train a small adapter on the sample dataset")
        self.try_button.setDefault(True)
        self.try_button.clicked.connect(lambda: self.try_it_requested.emit(SAMPLE_DATASET))
        skip_button = QPushButton("Go to the library")
        skip_button.clicked.connect(self.dismissed.emit)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(skip_button)
        buttons.addWidget(self.try_button)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(machine_box)
        layout.addWidget(model_box)
        layout.addWidget(bigger_box)
        layout.addStretch(1)
        layout.addLayout(buttons)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

    def start_probes(self) -> None:
        """Run after the window shows: the doctor imports torch, the cache scan reads disk."""
        start_job(_doctor, on_done=self._show_machine,
                  on_error=lambda err, details: self.machine_label.setText(f"Could not probe the device: {err}"),
                  parent=self)
        start_job(lambda emit: self._cached_models(), on_done=self._show_cache, parent=self)
        from studio.ml.base.default_model import default_model_dir, is_converted  # cheap: no torch at import

        if is_converted(self.data):
            self._model_ready(default_model_dir(self.data))

    def _cached_models(self) -> list[str]:
        from studio.core.basemodels import hf_cache_models

        return [m.id for m in hf_cache_models()]

    def _show_cache(self, ids: list[str]) -> None:
        self.cache_list.clear()
        self.cache_list.addItems(ids or ["(nothing in the Hugging Face cache)"])

    def _show_machine(self, report: dict) -> None:
        self.machine_label.setText(report.get("summary") or str(report))

    def prepare_default_model(self) -> None:
        from studio.ml.base.default_model import ensure_default_model

        self.prepare_button.setEnabled(False)
        self.model_label.setText("Converting SmolLM2-135M-Instruct (once; about 20 s on a CPU)…")
        start_job(lambda emit: ensure_default_model(self.data, progress=emit),
                  on_event=self._conversion_progress, on_done=self._converted,
                  on_error=self._conversion_failed, parent=self)

    def _converted(self, path: Path) -> None:
        self._model_ready(path)
        self.changes.announce(Changes(base_models_added={Path(path).name}))

    def _conversion_progress(self, event: StageProgress) -> None:
        self.model_progress.setValue(int((event.fraction or 0) * 100))
        self.model_label.setText(event.message)

    def _model_ready(self, path: Path) -> None:
        self.model_progress.setValue(100)
        self.prepare_button.setEnabled(False)
        self.prepare_button.setText("Ready")
        self.model_label.setText(f"Default base model ready: SmolLM2-135M-Instruct ({path}).")
        self.default_model_ready.emit(Path(path))

    def _conversion_failed(self, err: BaseException, details: str) -> None:
        self.prepare_button.setEnabled(True)
        self.model_label.setText(f"Could not prepare the default model: {err}")

    def pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Pick a Hugging Face model folder",
                                                  last_folder("base_models"))
        if not folder:
            return
        remember_folder("base_models", folder)
        from studio.core.basemodels import inspect_base_model
        from studio.core.errors import StudioError

        try:
            info = inspect_base_model(Path(folder))
        except StudioError as err:
            self.bigger_status.setText(str(err))
            return
        self.bigger_status.setText(f"{info.id}: {info.architecture}, {info.parameters / 1e9:.2f}B parameters.")
        self.base_model_chosen.emit(str(info.path))

    def ask_download(self) -> None:
        repo_id, ok = QInputDialog.getText(self, "Download a base model", "Hugging Face model id:",
                                           text="HuggingFaceTB/SmolLM2-360M-Instruct")
        if not ok or not repo_id.strip():
            return
        from studio.core.basemodels import download_base_model

        self.bigger_status.setText(f"Downloading {repo_id}…")
        start_job(lambda emit: download_base_model(repo_id.strip(), self.data, progress=emit),
                  on_event=lambda event: self.bigger_status.setText(event.message),
                  on_done=self._downloaded,
                  on_error=lambda err, details: self.bigger_status.setText(str(err)), parent=self)

    def _downloaded(self, info) -> None:
        self.bigger_status.setText(f"Downloaded {info.id}.")
        self.changes.announce(Changes(base_models_added={Path(info.path).name}))
        self.base_model_chosen.emit(str(info.path))
