"""Create the QApplication and show the main window. torch is not imported here (fast start)."""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler

from PySide6.QtWidgets import QApplication

from studio import APP_NAME, ORG_NAME, __version__
from studio.core.paths import data_dir


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
    return app


def run_gui(argv: list[str]) -> int:
    app = make_app(argv)
    data = data_dir()
    setup_logging(data.logs)
    from studio.gui.main_window import MainWindow

    window = MainWindow(data)
    window.show()
    return app.exec()
