"""GUI test isolation: QSettings go to a temporary folder, never the user's real settings; the app's
change notifier for panels built on their own; and napari's rule that a test leaves nothing running
behind it (a background job, a training process, a QTimer or a QThread)."""

from __future__ import annotations

import json
import traceback
import weakref
from pathlib import Path

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


@pytest.fixture
def changes(qapp):
    """The app-wide notice of what changed, as the main window hands it to its panels."""
    from studio.gui.changes import ChangeNotifier

    notifier = ChangeNotifier()
    yield notifier
    notifier.deleteLater()


@pytest.fixture
def math_folder(tmp_path: Path) -> Path:
    """A folder of 25 tiny chat samples to train on."""
    folder = tmp_path / "math-data"
    folder.mkdir()
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                      {"role": "assistant", "content": f"The answer is {a + b}."}]})
             for a in range(1, 6) for b in range(1, 6)]
    (folder / "math.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _started_at() -> str:
    """Where the app (not Qt, pytest-qt or this file) started the timer or thread."""
    frames = [f for f in traceback.extract_stack()[:-2] if "site-packages" not in f.filename
              and not f.filename.endswith("conftest.py")]
    return f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else "?"


def _alive(qobject) -> bool:
    import shiboken6

    return qobject is not None and shiboken6.isValid(qobject)


@pytest.fixture(autouse=True)
def no_leftover_timers_or_threads(qapp, monkeypatch):
    """Fail a test that leaves a QTimer running or a QThread alive once its widgets are closed (pytest-qt
    closes them before fixtures are torn down): a timer firing into the next test touches widgets that
    are gone. Single-shot timers are counted too: they are made real timers here, owned by their
    context object as Qt does."""
    from PySide6.QtCore import QObject, QThread, QTimer

    started: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    single_shots: list[tuple[QTimer, str]] = []
    threads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    timer_start, thread_start, single_shot = QTimer.start, QThread.start, QTimer.singleShot

    def start(self, *args):
        started[self] = _started_at()
        timer_start(self, *args)

    def one_shot(msec, *args):
        context, func = (None, args[0]) if len(args) == 1 else args if len(args) == 2 else (None, None)
        if not callable(func) or (context is not None and not isinstance(context, QObject)):
            return single_shot(msec, *args)  # another overload: left to Qt, unchecked
        timer = QTimer(context, singleShot=True)
        timer.timeout.connect(func)
        single_shots.append((timer, _started_at()))
        timer_start(timer, msec)
        return None

    def thread(self, *args):
        threads[self] = _started_at()
        thread_start(self, *args)

    monkeypatch.setattr(QTimer, "start", start)
    monkeypatch.setattr(QTimer, "singleShot", staticmethod(one_shot))
    monkeypatch.setattr(QThread, "start", thread)
    yield
    running = [where for timer, where in [*started.items(), *single_shots] if _alive(timer) and timer.isActive()]
    for timer, _ in [*started.items(), *single_shots]:
        if _alive(timer):
            timer.stop()
    alive = [where for thread, where in threads.items() if _alive(thread) and thread.isRunning()]
    assert not running, f"QTimer(s) still running after the test, started at: {running}"
    assert not alive, f"QThread(s) still running after the test, started at: {alive}"


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
