"""Error dialogs that say what happened and what to do, with the traceback behind "Show Details…".

A StudioError carries its own hint; other exceptions get a generic one. The full traceback also goes
to the log file (logging), so a user can attach it to a bug report. Knows nothing about the job that
failed.
"""

from __future__ import annotations

import logging

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
        box.setDetailedText(details)
    if modal:
        box.exec()
    else:
        box.open()
    return box
