"""Run long studio jobs off the GUI thread and hand their results back as queued Qt signals.

A job is a plain callable from studio.core / studio.ml. It runs in a QThreadPool worker; its result,
error, or progress events come back through signals, which Qt delivers on the GUI thread. Widgets
are never touched from the worker.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


def freeze_imported_heap() -> None:
    """Exempt everything alive now from the garbage collector's full passes. Called once torch is
    imported: its modules and classes are ~200k objects that live until exit, and a full pass over them
    holds the GIL for 100-400 ms, a visible freeze of the window. Objects created later are collected
    as usual; call it only while no model is loaded (a frozen reference cycle is never freed)."""
    gc.freeze()


class JobSignals(QObject):
    event = Signal(object)       # progress events emitted by the job through its `emit` argument
    finished = Signal(object)    # the job's return value
    failed = Signal(object, str)  # the exception and its formatted traceback


class Job(QRunnable):
    """Runs `func(emit)` in a pool thread; `emit(event)` re-emits `event` as a queued signal."""

    def __init__(self, func: Callable[[Callable[[Any], None]], Any]) -> None:
        super().__init__()
        self.func = func
        self.signals = JobSignals()

    def run(self) -> None:
        try:
            result = self.func(self._emit_event)
        except BaseException as err:  # noqa: BLE001 - reported to the GUI, never lost in a thread
            log.exception("Background job failed")
            self._deliver(self.signals.failed, err, traceback.format_exc())
        else:
            self._deliver(self.signals.finished, result)

    def _emit_event(self, event: Any) -> None:
        self._deliver(self.signals.event, event)

    def _deliver(self, signal, *args: Any) -> None:
        """Emit, unless the widget that asked for the job (the signals' parent) is gone: then nobody
        is left to tell, which is not an error (e.g. a wizard closed while its scan ran)."""
        try:
            signal.emit(*args)
        except RuntimeError:
            log.debug("A background job ended after the widget that started it was closed")


def start_job(func: Callable[[Callable[[Any], None]], Any], *, on_done: Callable[[Any], None] | None = None,
              on_error: Callable[[BaseException, str], None] | None = None,
              on_event: Callable[[Any], None] | None = None, parent: QObject | None = None) -> Job:
    job = Job(func)
    if parent is not None:
        job.signals.setParent(parent)  # slots die with the widget instead of firing on a dead one
    if on_done:
        job.signals.finished.connect(on_done)
    if on_error:
        job.signals.failed.connect(on_error)
    if on_event:
        job.signals.event.connect(on_event)
    QThreadPool.globalInstance().start(job)
    return job
