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


@pytest.fixture(autouse=True)
def no_leftover_workers(qapp):
    """Fail a test that leaves a background job running (napari's rule): a job outliving its test
    would touch widgets that are gone, or leak into the next test."""
    yield
    from PySide6.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if not pool.waitForDone(60_000):
        pytest.fail(f"{pool.activeThreadCount()} background job(s) still running 60 s after the test ended")
    import multiprocessing

    # A training run's child process ends with its supervising job; one still alive was left behind.
    left = multiprocessing.active_children()
    for child in left:
        child.kill()
    assert not left, f"training process(es) left running: {left}"
