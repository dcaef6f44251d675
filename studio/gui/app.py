"""Create the QApplication and show the main window. torch is not imported here (fast start)."""

from __future__ import annotations

import logging
import os
import sys
import time
from logging.handlers import RotatingFileHandler

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from studio import APP_NAME, ORG_NAME, __version__
from studio.core.leftovers import remove_leftovers
from studio.core.paths import RESOURCES_DIR, data_dir

EXIT_AFTER_SHOWN_ENV = "LORA_STUDIO_EXIT_AFTER_SHOWN"
SHOWN_MARKER = "LORA_STUDIO_WINDOW_SHOWN"
log = logging.getLogger(__name__)

def setup_logging(log_dir) -> None:
    handler = RotatingFileHandler(log_dir / "studio.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def make_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication([sys.argv[0], *(argv or [])])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationVersion(__version__)
    app.setWindowIcon(QIcon(str(RESOURCES_DIR / "icons" / "lora-studio.png")))
    return app


def run_gui(argv: list[str]) -> int:
    app = make_app(argv)
    from PySide6.QtCore import QSettings

    from studio.gui.settings_dialog import DATA_DIR_KEY, THEME_KEY, TORCH_THREADS_KEY, apply_theme
    from studio.ml.base.threads import apply_thread_share  # imports no torch

    settings = QSettings()
    apply_theme(app, settings.value(THEME_KEY, "system", type=str))
    apply_thread_share(settings.value(TORCH_THREADS_KEY, 0, type=int))  # before any worker imports torch
    chosen_home = settings.value(DATA_DIR_KEY, "", type=str)
    data = data_dir(chosen_home) if chosen_home and not os.environ.get("LORA_STUDIO_HOME") else data_dir()
    setup_logging(data.logs)
    from studio.gui.main_window import MainWindow
    from studio.gui.workers import start_job

    window = MainWindow(data)
    # What killed processes left (a live one's work folders are locked and kept): hundreds of MB to
    # delete at worst, so in a worker, never between the double-click and the window.
    start_job(lambda emit: remove_leftovers(data), parent=window,
              on_error=lambda err, details: log.warning("Could not remove leftovers: %s", err))
    from studio.gui.error_dialog import install_excepthook

    install_excepthook(lambda: window)
    if os.environ.get(EXIT_AFTER_SHOWN_ENV):
        window.shown.connect(lambda: report_shown_and_quit(app))
    window.show()
    return app.exec()


def seconds_since_process_start() -> float:
    """From the launcher's clock when it passed one (psutil's start time is rounded to the boot second)."""
    launched = os.environ.get("LORA_STUDIO_LAUNCH_T0")
    if launched:
        return time.time() - float(launched)
    import psutil

    return time.time() - psutil.Process().create_time()


def report_shown_and_quit(app: QApplication) -> None:
    """For launcher tests and the start-up benchmark: say the window is up, then leave."""
    print(f"{SHOWN_MARKER} after {seconds_since_process_start():.2f} s; torch imported: "
          f"{'torch' in sys.modules}", flush=True)
    QTimer.singleShot(0, app.quit)
