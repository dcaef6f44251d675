"""Which process is training a run right now: a lock file in the run folder.

A run folder whose events stop without Finished, Stopped or Failed is either interrupted (the
process died) or still training in another process (a second window, the CLI). The lock tells them
apart: `running.json` holds the trainer's pid, host and process start time; it is removed when the
run ends, and a lock whose process is gone (or whose pid now belongs to another program, told by
the start time) is stale and ignored. Resuming a run that another live process holds is refused, so
two trainers never write one run folder.

Knows nothing about training; used by studio.ml.training and the run browser.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from studio.core.errors import StudioError

log = logging.getLogger(__name__)

LOCK_NAME = "running.json"
START_TIME_SLACK_S = 1.0  # process start times are read back with limited precision


@dataclass(frozen=True)
class RunHolder:
    pid: int
    host: str
    started: float  # the holding process's start time (seconds since the epoch)


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _read(run_dir: Path) -> RunHolder | None:
    try:
        data = json.loads((run_dir / LOCK_NAME).read_text(encoding="utf-8"))
        return RunHolder(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder(run_dir: Path | str) -> RunHolder | None:
    """The live process on this machine training this run, or None (no lock, or a stale one)."""
    held = _read(Path(run_dir))
    if held is None or held.host != socket.gethostname():
        return None  # a lock from another machine (a synced folder) cannot be checked: not ours to honour
    started = _process_started(held.pid)
    if started is None or abs(started - held.started) > START_TIME_SLACK_S:
        return None
    return held


def acquire(run_dir: Path | str) -> None:
    """Mark this process as the run's trainer; StudioError if another live process already is."""
    run_dir = Path(run_dir)
    other = holder(run_dir)
    if other is not None and other.pid != os.getpid():
        raise StudioError(f"Run {run_dir.name!r} is being trained right now by another process (pid {other.pid}).",
                          hint="Wait for it to finish, or stop it from the window or terminal that started it.")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_started(os.getpid())}
    (run_dir / LOCK_NAME).write_text(json.dumps(me), encoding="utf-8")


def release(run_dir: Path | str) -> None:
    """Remove the lock if this process holds it."""
    run_dir = Path(run_dir)
    held = _read(run_dir)
    if held is not None and held.pid == os.getpid():
        try:
            (run_dir / LOCK_NAME).unlink()
        except OSError as err:
            log.warning("Could not remove the run lock %s: %s", run_dir / LOCK_NAME, err)
