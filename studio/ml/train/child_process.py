"""Run `run_training` in a child process, with the same call shape as calling it directly.

Why a process and not only a thread: a training step holds Python's GIL for stretches (data
collation, gc passes, safetensors writes, module imports) that froze the window's event loop for
up to ~300 ms when the run shared the GUI's interpreter. In a child process the GUI thread never
waits on it, and a crash of the run (a segfault in a CUDA kernel, the OS killing it for memory)
ends the run, not the app; its last complete checkpoint stays on disk and the run is resumable.

The child is started with "spawn" (forking a process that runs Qt threads is unsafe). Events come
back through a pipe as the frozen dataclasses of studio.core.train.events; the stop request goes the
other way through a multiprocessing Event, checked by the engine at every step boundary. Errors
come back as StudioError (message and hint kept) or, for anything else, as a StudioError that
names the original type, with the child's traceback attached for the details view.

Importing this module does not import torch; only the child does.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.progress import ShouldStop
from studio.core.train.config import TrainConfig

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often the parent checks the stop flag while no event arrives
LOG_NAME = "training.log"  # in the data directory's logs/: the child's own log (one writer per file)


@dataclass(frozen=True)
class ChildError:
    """An exception raised in the child, in a form that always pickles."""

    type_name: str
    message: str
    hint: str
    details: str
    is_studio_error: bool


class TrainingProcessError(StudioError):
    """Training failed in the child process; `details` holds the child's traceback."""

    def __init__(self, message: str, *, hint: str = "", details: str = "") -> None:
        super().__init__(message, hint=hint)
        self.details = details


def _child_main(config: TrainConfig, data: DataDir, conn, stop_event, parent_pid: int) -> None:
    """The child: one run_training call; every event, then the result or the error, goes up the pipe."""
    pipe_broken = False

    def send(message: tuple) -> None:
        nonlocal pipe_broken
        if pipe_broken:
            return
        try:
            conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            pipe_broken = True  # the app is gone: stop at the next step, keeping the checkpoint

    def should_stop() -> bool:
        return pipe_broken or stop_event.is_set() or os.getppid() != parent_pid

    try:
        _log_to_file(data)
        from studio.ml.base.threads import apply_thread_share

        threads = apply_thread_share()  # the share the app passed down in the environment
        log.info("Training process %s started (run %s, %d torch threads)", os.getpid(),
                 config.resume or config.display_name(), threads)
        from studio.ml.train.run import run_training

        result = run_training(config, data, on_event=lambda event: send(("event", event)), should_stop=should_stop)
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        if not isinstance(err, StudioError):
            log.exception("Training failed in the training process")
        send(("error", ChildError(type(err).__name__, getattr(err, "message", str(err)), getattr(err, "hint", ""),
                                  traceback.format_exc(), isinstance(err, StudioError))))
    else:
        send(("result", result))
    finally:
        conn.close()


def _log_to_file(data: DataDir) -> None:
    """The spawned child starts with no logging set up: give it its own rotating file."""
    from logging.handlers import RotatingFileHandler

    data.logs.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(data.logs / LOG_NAME, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_training_in_child(config: TrainConfig, data: DataDir, on_event: Callable[[Any], None] | None = None,
                          should_stop: ShouldStop | None = None):
    """Like studio.ml.train.run.run_training, but the run happens in a child process. Blocks until it ends
    (call it from a worker thread); returns its RunResult or raises its error."""
    context = mp.get_context("spawn")
    parent_conn, child_conn = context.Pipe(duplex=False)
    stop_event = context.Event()
    process = context.Process(target=_child_main, name="lora-studio-training", daemon=True,
                              args=(config, data, child_conn, stop_event, os.getpid()))
    process.start()
    child_conn.close()  # the parent keeps only its reading end, so EOF means the child is gone
    log.info("Training runs in child process %s", process.pid)
    outcome: tuple | None = None
    try:
        while outcome is None:
            if should_stop is not None and should_stop() and not stop_event.is_set():
                stop_event.set()
            try:
                if not parent_conn.poll(POLL_S):
                    if not process.is_alive() and not parent_conn.poll(0):
                        break
                    continue
                kind, payload = parent_conn.recv()
            except EOFError:
                break
            if kind == "event":
                if on_event is not None:
                    on_event(payload)
            else:
                outcome = (kind, payload)
    finally:
        process.join(timeout=30)
        if process.is_alive():  # it sent its outcome but hangs on exit: do not leave it behind
            process.terminate()
            process.join(timeout=10)
        parent_conn.close()

    if outcome is None:
        raise TrainingProcessError(
            f"The training process ended unexpectedly (exit code {process.exitcode}).",
            hint="This usually means the system ran out of memory or the GPU driver failed. The last complete "
                 "checkpoint is kept: resume the run from the Runs tab, with a smaller batch, sequence length "
                 "or rank if memory was short.")
    kind, payload = outcome
    if kind == "result":
        return payload
    error: ChildError = payload
    if error.is_studio_error:
        raise TrainingProcessError(error.message, hint=error.hint, details=error.details)
    raise TrainingProcessError(f"Training failed: {error.type_name}: {error.message}",
                               hint=f"The details show where it failed; {data.logs / LOG_NAME} has them too.",
                               details=error.details)
