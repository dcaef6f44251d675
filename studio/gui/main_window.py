"""The main window: a sidebar of panels (Library, Train, Blend, Chat) and a live status bar.

Opens without importing torch; the device is probed in the background after the window shows.
Knows nothing about training or adapters beyond the panels it hosts.
"""

from __future__ import annotations

import logging

import psutil
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QListWidget, QMainWindow, QMessageBox, QStackedWidget, QVBoxLayout, QWidget,
)

from studio import APP_NAME, __version__
from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.paths import DataDir
from studio.gui.library_panel import LibraryPanel
from studio.gui.settings_dialog import SettingsDialog
from studio.gui.welcome import WelcomePage
from studio.gui.workers import start_job

log = logging.getLogger(__name__)
WELCOME_DONE_KEY = "welcome/done"


def placeholder(title: str, text: str) -> QWidget:
    widget = QWidget()
    layout = QVBoxLayout(widget)
    label = QLabel(f"<h2>{title}</h2><p>{text}</p>")
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setWordWrap(True)
    layout.addWidget(label)
    return widget


def probe_device(emit) -> str:
    """Runs in a worker: imports torch (slow) to name the device."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU"


class MainWindow(QMainWindow):
    shown = Signal()

    def __init__(self, data: DataDir) -> None:
        super().__init__()
        self.data = data
        self.setWindowTitle(f"{APP_NAME} {__version__}")
        self.resize(1100, 700)

        self.library_panel = LibraryPanel(data)
        self.sidebar = QListWidget()
        self.sidebar.setFixedWidth(140)
        self.stack = QStackedWidget()
        panels = [
            ("Library", self.library_panel),
            ("Train", placeholder("Train", "Train a new adapter from a folder of your files.")),
            ("Blend", placeholder("Blend", "Blend adapters into a new one, or merge one into the base.")),
            ("Chat", placeholder("Chat", "Chat with two adapters side by side and vote for the better one.")),
        ]
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

        self.base_label = QLabel(f"Base: {DEFAULT_BASE_ID}")
        self.device_label = QLabel("Device: detecting…")
        self.memory_label = QLabel()
        for widget in (self.base_label, self.device_label, self.memory_label):
            self.statusBar().addPermanentWidget(widget)
        self.memory_timer = QTimer(self, interval=1000)
        self.memory_timer.timeout.connect(self.update_memory)
        self.memory_timer.start()
        self.update_memory()

        self.settings = QSettings()
        geometry = self.settings.value("main/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.welcome: WelcomePage | None = None
        if not self.settings.value(WELCOME_DONE_KEY, False, type=bool):
            self.show_welcome()

    def show_welcome(self) -> None:
        """The first-run page, on top of the panels until the user moves on."""
        self.welcome = WelcomePage(self.data)
        self.welcome.dismissed.connect(self.close_welcome)
        self.welcome.try_it_requested.connect(self.try_it)
        self.root_stack.addWidget(self.welcome)
        self.root_stack.setCurrentWidget(self.welcome)

    def close_welcome(self) -> None:
        self.settings.setValue(WELCOME_DONE_KEY, True)
        if self.welcome is not None:
            self.root_stack.removeWidget(self.welcome)
            self.welcome.deleteLater()
            self.welcome = None
        self.root_stack.setCurrentIndex(0)
        self.sidebar.setCurrentRow(0)

    def try_it(self, sample_folder) -> None:
        """Hook for the sample-dataset demo; the Train panel takes it over when present."""
        self.close_welcome()
        self.sidebar.setCurrentRow(1)

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        import_action = QAction("&Import adapter…", self, shortcut=QKeySequence("Ctrl+I"))
        import_action.triggered.connect(self.library_panel.ask_import)
        settings_action = QAction("&Settings…", self, shortcut=QKeySequence("Ctrl+,"))
        settings_action.triggered.connect(lambda: SettingsDialog(self).exec())
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addActions([import_action, settings_action, quit_action])
        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def show_about(self) -> None:
        import platform

        from PySide6 import __version__ as pyside_version

        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b> {__version__}<br>Python {platform.python_version()}, "
                          f"PySide6 {pyside_version}<br>Data directory: {self.data.root}")

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not getattr(self, "_probed", False):
            self._probed = True
            if self.welcome is not None:
                QTimer.singleShot(300, self.welcome.start_probes)
            # After the first paint: the device probe imports torch, which takes seconds.
            QTimer.singleShot(200, lambda: start_job(probe_device, on_done=self._set_device,
                                                      on_error=lambda e, d: self._set_device("unknown"),
                                                      parent=self))
            self.shown.emit()

    def _set_device(self, name: str) -> None:
        self.device_label.setText(f"Device: {name}")

    def update_memory(self) -> None:
        memory = psutil.virtual_memory()
        self.memory_label.setText(f"RAM {(memory.total - memory.available) / 2**30:.1f} / "
                                  f"{memory.total / 2**30:.1f} GB")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.settings.setValue("main/geometry", self.saveGeometry())
        self.memory_timer.stop()
        super().closeEvent(event)
