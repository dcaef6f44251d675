"""Error dialogs that say what happened and what to do, with the traceback behind "Show Details…".

A StudioError carries its own hint; other exceptions get a generic one. The full traceback also goes
to the log file (logging), so a user can attach it to a bug report.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from PySide6.QtWidgets import QMessageBox, QWidget

from studio import APP_NAME

log = logging.getLogger(__name__)
GENERIC_HINT = "The details below say more; the same text is in the log file."


def error_text(err: BaseException) -> tuple[str, str]:
    """(what happened, what to do) for any exception."""
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    hint = getattr(err, "hint", "") or GENERIC_HINT
    return message, hint


def show_error(parent: QWidget | None, err: BaseException, details: str = "", *, title: str = "",
               modal: bool = False) -> QMessageBox:
    """Show `err` (non-blocking unless `modal`); returns the box so tests can read and close it."""
    message, hint = error_text(err)
    log.error("%s%s", message, f"\n{details}" if details else "")
    box = QMessageBox(QMessageBox.Icon.Warning, title or APP_NAME, message, parent=parent)
    box.setObjectName("errorDialog")
    box.setInformativeText(hint)
    if details:
        log_file = log_file_path()
        box.setDetailedText(details + (f"\n(This is also in the log file {log_file}.)" if log_file else ""))
    if modal:
        box.exec()
    else:
        box.open()
    return box


def log_file_path() -> str:
    """Where the app's log file is, when logging writes to one."""
    for handler in logging.getLogger().handlers:
        filename = getattr(handler, "baseFilename", "")
        if filename:
            return filename
    return ""


def install_excepthook(parent: Callable[[], QWidget | None]) -> None:
    """An exception escaping a Qt slot is shown and logged instead of killing the app."""

    def hook(kind, err, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, err, tb)
            return
        show_error(parent(), err, "".join(traceback.format_exception(kind, err, tb)))

    sys.excepthook = hook
