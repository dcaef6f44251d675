"""Which process is training a run right now: an OS file lock in the run folder.

A run folder whose events stop without Finished, Stopped or Failed is either interrupted (the
process died) or still training in another process (a second window, the CLI). The trainer holds an
OS lock on the run's lock file (flock / LockFileEx through the filelock package) for as long as it trains;
the OS drops it when the process ends, however it ends, so a lock is never stale and taking it is
atomic: two processes resuming the same run at the same instant cannot both get it.
The holder file beside it names the holder (pid, host, start time) for messages; it is written after
the lock is taken and removed before it is let go. Both names are the RunDir's.
Used by studio.ml.train.run and the run list (studio.core.train.runs).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import filelock
import psutil

from studio.core import atomic
from studio.core.errors import StudioError
from studio.core.train.run_dir import RunDir

log = logging.getLogger(__name__)

ACQUIRE_WAIT_S = 0.5  # covers another process's momentary probe in holder()

_held: dict[Path, filelock.BaseFileLock] = {}  # run folders this process trains
_held_guard = threading.Lock()


@dataclass(frozen=True)
class RunHolder:
    pid: int
    host: str
    started: float  # the holding process's start time (seconds since the epoch)


def _key(run: RunDir) -> Path:
    return run.path.resolve()


def _os_lock(run: RunDir, timeout: float) -> filelock.BaseFileLock:
    # thread_local=False: the lock belongs to the process, not to the thread that took it
    return filelock.FileLock(run.lock_file, timeout=timeout, thread_local=False)


def _read(run: RunDir) -> RunHolder | None:
    try:
        data = json.loads(run.holder_file.read_text(encoding="utf-8"))
        return RunHolder(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _me() -> RunHolder:
    return RunHolder(os.getpid(), socket.gethostname(), psutil.Process().create_time())


def holder(run: RunDir) -> RunHolder | None:
    """The live process on this machine training this run, or None (nobody, or a dead trainer's leftovers)."""
    if _key(run) in _held:
        return _read(run) or _me()
    named = _read(run)
    if named is None:
        return None  # never locked, or released: a trainer writes running.json while it holds the lock
    if named.host != socket.gethostname():
        return None  # a lock from another machine (a synced folder) cannot be checked: not ours to honour
    probe = _os_lock(run, timeout=0)
    try:
        probe.acquire()
    except filelock.Timeout:
        return named  # a live process holds it
    except OSError as err:
        log.warning("Could not check the run lock in %s: %s", run.path, err)
        return None
    probe.release()
    return None  # the trainer that wrote running.json is gone (killed, crashed)


def acquire(run: RunDir) -> None:
    """Take the run for this process; StudioError if another trainer (another process, or another run
    in this one) is training it."""
    key = _key(run)
    busy_hint = "Wait for it to finish, or stop it from the window or terminal that started it."
    with _held_guard:
        if key in _held:
            raise StudioError(f"Run {run.run_id!r} is being trained right now by this process.", hint=busy_hint)
        lock = _os_lock(run, timeout=ACQUIRE_WAIT_S)
        try:
            lock.acquire()
        except filelock.Timeout:
            other = _read(run)
            who = f" (pid {other.pid})" if other is not None else ""
            raise StudioError(f"Run {run.run_id!r} is being trained right now by another process{who}.",
                              hint=busy_hint) from None
        _held[key] = lock
    me = _me()
    try:
        atomic.write_json(run.holder_file, {"pid": me.pid, "host": me.host, "started": me.started})
    except BaseException:
        release(run)  # a lock nobody will release would hold the run until this process exits
        raise


def release(run: RunDir) -> None:
    """Let the run go if this process holds it."""
    with _held_guard:
        lock = _held.pop(_key(run), None)
        if lock is None:
            return
        try:
            run.holder_file.unlink(missing_ok=True)
        except OSError as err:
            log.warning("Could not remove %s: %s", run.holder_file, err)
        lock.release(force=True)
