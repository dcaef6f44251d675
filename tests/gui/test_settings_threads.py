"""The settings dialog's torch thread share: stored with the other settings and applied at once."""

from __future__ import annotations

import os


def test_the_thread_setting_is_stored_and_applied(qtbot, monkeypatch):
    import torch
    from PySide6.QtCore import QSettings

    from studio.gui.settings_dialog import TORCH_THREADS_KEY, SettingsDialog
    from studio.ml.base.threads import THREADS_ENV

    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # restored after the test
    monkeypatch.setattr("studio.ml.base.threads.LAUNCH_OVERRIDE", "")
    before = torch.get_num_threads()
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    assert dialog.threads_spin.value() == 0 and dialog.threads_spin.text().startswith("auto")
    try:
        dialog.threads_spin.setValue(1)
        dialog.accept()
        assert QSettings().value(TORCH_THREADS_KEY, 0, type=int) == 1
        assert torch.get_num_threads() == 1 and os.environ[THREADS_ENV] == "1"  # training runs inherit it
        assert SettingsDialog().threads_spin.value() == 1
    finally:
        torch.set_num_threads(before)
