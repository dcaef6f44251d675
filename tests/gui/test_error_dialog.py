"""Error dialogs: the user's message and hint up front, the traceback behind details, all in the log."""

from __future__ import annotations

import logging
import sys

from studio.core.errors import StudioError


def test_studio_error_shows_message_hint_and_details(qtbot, caplog):
    from studio.gui.error_dialog import show_error

    with caplog.at_level(logging.ERROR):
        box = show_error(None, StudioError("The folder has no usable samples.", hint="Add .jsonl files."),
                         "Traceback (most recent call last): ...")
    qtbot.addWidget(box)
    assert box.text() == "The folder has no usable samples."
    assert box.informativeText() == "Add .jsonl files."
    assert box.detailedText().startswith("Traceback")
    assert "no usable samples" in caplog.text and "Traceback" in caplog.text
    box.close()


def test_plain_exception_gets_a_generic_hint_and_the_hook_keeps_the_app_alive(qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from studio.gui.error_dialog import GENERIC_HINT, install_excepthook

    shown = []
    monkeypatch.setattr(QMessageBox, "open", lambda box: shown.append(box))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    install_excepthook(lambda: None)
    try:
        raise ValueError("boom")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    assert len(shown) == 1 and shown[0].text() == "boom" and shown[0].informativeText() == GENERIC_HINT
    assert "ValueError: boom" in shown[0].detailedText()
