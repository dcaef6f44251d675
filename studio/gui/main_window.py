"""The main window: a sidebar of panels (Library, Train, Blend, Chat) and a live status bar.

Opens without importing torch; the device is probed in the background after the window shows.
It owns the one app-wide ChangeNotifier (studio.gui.changes) that every panel announces to and
refreshes from, and the watch on the data directory that turns the CLI's changes into the same
notice. It routes requests between panels ("compare with base" from the library opens the chat
panel, ...) and asks before closing while a panel is busy.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import psutil
from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

from studio import APP_NAME, __version__
from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.changes import Changes
from studio.core.paths import DataDir
from studio.gui.blend.panel import BlendPanel
from studio.gui.changes import ChangeNotifier, DataDirWatcher
from studio.gui.chat.panel import ChatPanel
from studio.gui.library.panel import LibraryPanel
from studio.gui.settings_dialog import BASE_MODEL_KEY, SettingsDialog
from studio.gui.train.panel import TrainPanel
from studio.gui.welcome import WelcomePage
from studio.gui.workers import freeze_imported_heap, start_job

log = logging.getLogger(__name__)
WELCOME_DONE_KEY = "welcome/done"
LIBRARY, TRAIN, BLEND, CHAT = range(4)


ABOUT_PACKAGES = ("PySide6-Essentials", "torch", "transformers", "peft", "bitsandbytes", "accelerate")


def about_text(data: DataDir) -> str:
    """The About box: app version, the versions of the libraries that matter, the data directory.
    Read from package metadata, so showing it imports nothing heavy."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    rows = [f"Python {platform.python_version()}"]
    for package in ABOUT_PACKAGES:
        try:
            rows.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            rows.append(f"{package} not installed")
    return (f"<b>{APP_NAME}</b> {__version__}<br>Fine-tune, blend and compare LoRA adapters on your own GPU."
            f"<br><br>{'<br>'.join(rows)}<br><br>Data directory: {data.root}")


def is_adapter_drop(path: Path) -> bool:
    """A zip or a folder holding a peft adapter: what the library imports (it checks the rest)."""
    return path.suffix.lower() == ".zip" or (path / "adapter_config.json").is_file()


def probe_device(emit) -> tuple[str, str]:
    """Runs in a worker: imports torch (slow) to name the device. Returns (kind, name)."""
    import torch

    freeze_imported_heap()

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", "CPU"


class MainWindow(QMainWindow):
    shown = Signal()

    def __init__(self, data: DataDir) -> None:
        super().__init__()
        self.data = data
        self.setWindowTitle(f"{APP_NAME} {__version__}")
        self.resize(1100, 700)

        self.device_kind = ""  # "cuda" | "cpu" once probed
        self.pending_demo_run = False
        self.demo_steps = 0  # 0: the demo's own step count (tests use a tiny one)
        # One notice of what changed for the whole app; the panels connect to it first, so they have
        # started re-reading before the window's own reaction (the demo's comparison) runs.
        self.changes = ChangeNotifier(self)
        self.library_panel = LibraryPanel(data, self.changes)
        self.train_panel = TrainPanel(data, self.changes)
        self.blend_panel = BlendPanel(data, self.changes)
        self.chat_panel = ChatPanel(data, self.changes)
        self.watcher = DataDirWatcher(data, self.changes, self)
        self.sidebar = QListWidget()
        self.sidebar.setFixedWidth(140)
        self.stack = QStackedWidget()
        panels = [("Library", self.library_panel), ("Train", self.train_panel), ("Blend", self.blend_panel),
                  ("Chat", self.chat_panel)]
        for index, (name, widget) in enumerate(panels):
            self.sidebar.addItem(name)
            self.stack.addWidget(widget)
            action = QAction(name, self, shortcut=QKeySequence(f"Ctrl+{index + 1}"))
            action.triggered.connect(lambda _=False, i=index: self.sidebar.setCurrentRow(i))
            self.addAction(action)
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.sidebar.setCurrentRow(0)

        panels_page = QWidget()
        layout = QHBoxLayout(panels_page)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.stack, 1)
        # The root stack holds the panels, and the welcome page in front of them on a first run.
        self.root_stack = QStackedWidget()
        self.root_stack.addWidget(panels_page)
        self.setCentralWidget(self.root_stack)
        self._build_menu()
        self._connect_panels()
        self.setAcceptDrops(True)

        self.settings = QSettings()
        self.base_label = QLabel()
        self._show_base()
        self.device_label = QLabel("Device: detecting…")
        self.memory_label = QLabel()
        for widget in (self.base_label, self.device_label, self.memory_label):
            self.statusBar().addPermanentWidget(widget)
        self.memory_timer = QTimer(self, interval=1000)
        self.memory_timer.timeout.connect(self.update_memory)
        self.memory_timer.start()
        self.update_memory()
        self.probe_timer = QTimer(self, singleShot=True, interval=200)
        self.probe_timer.timeout.connect(self._start_probes)

        geometry = self.settings.value("main/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.welcome: WelcomePage | None = None
        if not self.settings.value(WELCOME_DONE_KEY, False, type=bool):
            self.show_welcome()

    def show_welcome(self) -> None:
        """The first-run page, on top of the panels until the user moves on."""
        self.welcome = WelcomePage(self.data, self.changes)
        self.welcome.dismissed.connect(self.close_welcome)
        self.welcome.try_it_requested.connect(self.try_it)
        self.welcome.base_model_chosen.connect(self.set_base_model)
        self.root_stack.addWidget(self.welcome)
        self.root_stack.setCurrentWidget(self.welcome)
        if getattr(self, "_probed", False):  # opened again from the File menu: the first show's probes are past
            self.welcome.start_probes()

    def close_welcome(self) -> None:
        self.settings.setValue(WELCOME_DONE_KEY, True)
        if self.welcome is not None:
            self.root_stack.removeWidget(self.welcome)
            self.welcome.deleteLater()
            self.welcome = None
        self.root_stack.setCurrentIndex(0)
        self.sidebar.setCurrentRow(0)

    def try_it(self, sample_folder=None) -> None:
        """The first-run demo: train a small adapter on the sample dataset, then compare it with the base."""
        from studio.core.train.demo import DEMO_STEPS, demo_config

        self.close_welcome()
        config = demo_config(self.device_kind or "cpu", steps=self.demo_steps or DEMO_STEPS)
        if sample_folder is not None:
            config = config.replace(data_folder=str(sample_folder))
        self.pending_demo_run = True
        self.show_panel(TRAIN)
        self.train_panel.start_run(config)

    def set_base_model(self, base: str) -> None:
        self.settings.setValue(BASE_MODEL_KEY, base)
        self._show_base()
        self.statusBar().showMessage(f"Base model set to {base}", 5000)

    def open_settings(self) -> None:
        if SettingsDialog(self).exec():
            self._show_base()

    def _show_base(self) -> None:
        self.base_label.setText(f"Base: {self.settings.value(BASE_MODEL_KEY, DEFAULT_BASE_ID, type=str)}")

    def show_panel(self, index: int) -> None:
        self.sidebar.setCurrentRow(index)

    def _connect_panels(self) -> None:
        library = self.library_panel
        library.chat_requested.connect(lambda adapter_id: self.open_chat([adapter_id]))
        library.compare_requested.connect(lambda adapter_id: self.open_chat([adapter_id, "base"]))
        library.continue_requested.connect(self.continue_training)
        library.export_requested.connect(self.open_export)
        self.train_panel.compare_requested.connect(lambda adapter_id: self.open_chat([adapter_id, "base"]))
        # A demo run that ended without an adapter (stopped, failed) opens nothing later.
        self.train_panel.run_finished.connect(lambda _result: setattr(self, "pending_demo_run", False))
        self.chat_panel.blend_requested.connect(self.open_blend)
        self.changes.changed.connect(self._changed)

    def _changed(self, changes: Changes) -> None:
        if changes.base_models:
            self._show_base()
        added = sorted(changes.adapters_added)
        if added:
            self.statusBar().showMessage(f"{', '.join(added)} {'is' if len(added) == 1 else 'are'} in the library",
                                         8000)
        if self.pending_demo_run and changes.runs_finished and added:  # the demo ends in the comparison
            self.pending_demo_run = False
            self.open_chat([added[0], "base"])

    def open_chat(self, refs: list[str]) -> None:
        self.show_panel(CHAT)
        self.chat_panel.open_comparison(refs)

    def open_blend(self, weights: dict) -> None:
        self.show_panel(BLEND)
        self.blend_panel.set_parents(weights)

    def continue_training(self, adapter_id: str) -> None:
        self.show_panel(TRAIN)
        self.train_panel.continue_training(adapter_id)

    def open_export(self, adapter_id: str) -> None:
        from studio.gui.library.export_dialog import ExportDialog

        ExportDialog(self.data, adapter_id, self.changes, self).open()

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        import_action = QAction("&Import adapter…", self, shortcut=QKeySequence("Ctrl+I"))
        import_action.triggered.connect(self.library_panel.ask_import)
        train_action = QAction("&Train from a folder…", self, shortcut=QKeySequence("Ctrl+N"))
        train_action.triggered.connect(lambda: (self.show_panel(TRAIN), self.train_panel.start_wizard()))
        settings_action = QAction("&Settings…", self, shortcut=QKeySequence("Ctrl+,"))
        settings_action.triggered.connect(self.open_settings)
        base_action = QAction("&Base model: pick a folder, the HF cache or download…", self)
        base_action.triggered.connect(lambda: self.welcome is None and self.show_welcome())
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addActions([train_action, import_action, base_action, settings_action, quit_action])
        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def show_about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}", about_text(self.data))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not getattr(self, "_probed", False):
            self._probed = True
            # After the first paint: the device probe imports torch, which takes seconds. The window owns
            # the timer, so closing it early stops the probes from starting.
            self.probe_timer.start()
            self.shown.emit()

    def _start_probes(self) -> None:
        if self.welcome is not None:
            self.welcome.start_probes()
        self.start_device_probe()

    def start_device_probe(self) -> None:
        start_job(probe_device, on_done=self._set_device, on_error=lambda e, d: self._set_device("unknown"),
                  parent=self)

    def _set_device(self, probed: tuple[str, str] | str) -> None:
        kind, name = probed if isinstance(probed, tuple) else ("", probed)
        self.device_kind = kind
        self.device_label.setText(f"Device: {name}")

    def update_memory(self) -> None:
        """VRAM used / total once the device probe found a GPU (torch is loaded by then), else RAM."""
        torch = sys.modules.get("torch")
        if self.device_kind == "cuda" and torch is not None:
            free, total = torch.cuda.mem_get_info()  # the driver's figure: every process on the GPU
            self.memory_label.setText(f"VRAM {(total - free) / 2**30:.1f} / {total / 2**30:.1f} GB")
            return
        memory = psutil.virtual_memory()
        self.memory_label.setText(f"RAM {(memory.total - memory.available) / 2**30:.1f} / "
                                  f"{memory.total / 2**30:.1f} GB")

    # ------------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """A drop anywhere on the window: adapters (folders with adapter_config.json, zips) are imported
        into the library; any other folder is taken as training data and opens the wizard on it."""
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        for path in paths:
            if is_adapter_drop(path):
                self.show_panel(LIBRARY)
                self.library_panel.import_path(path)
            elif path.is_dir():
                self.show_panel(TRAIN)
                self.train_panel.start_wizard(path)
            else:
                self.statusBar().showMessage(f"{path.name}: drop an adapter folder or .zip to import it, or a "
                                             "folder of your files to train on it", 10000)
        event.acceptProposedAction()

    def panels(self) -> list[QWidget]:
        return [self.train_panel, self.blend_panel, self.chat_panel]

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        busy = [panel for panel in self.panels() if panel.busy()]
        if busy and not self.confirm_close(busy):
            event.ignore()
            return
        self.settings.setValue("main/geometry", self.saveGeometry())
        self.memory_timer.stop()
        self.probe_timer.stop()
        self.watcher.stop()
        self.library_panel.shutdown()
        for panel in self.panels():
            panel.shutdown()  # stops cleanly: a training run leaves its checkpoint
        super().closeEvent(event)

    def confirm_close(self, busy: list[QWidget]) -> bool:
        what = "A training run is in progress" if self.train_panel in busy else "Work is still running"
        answer = QMessageBox.question(
            self, f"Quit {APP_NAME}?",
            f"{what}. Quit anyway? A training run stops at the next step and keeps its checkpoint, so you "
            "can resume it from the Train panel next time.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes
