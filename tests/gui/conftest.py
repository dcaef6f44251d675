"""GUI test isolation: QSettings go to a temporary folder, never the user's real settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, qapp):
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    qapp.setOrganizationName("LoRA Studio Tests")
    qapp.setApplicationName("LoRA Studio Tests")
    yield
    QSettings().clear()
