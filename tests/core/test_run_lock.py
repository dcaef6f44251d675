"""The run lock tells a run another process is training from an interrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from studio.core import run_lock
from studio.core.errors import StudioError


def lock_for(run_dir: Path, pid: int, started: float | None = None, host: str | None = None) -> None:
    started = psutil.Process(pid).create_time() if started is None else started
    (run_dir / run_lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                          "started": started}))


@pytest.fixture
def other_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_acquire_and_release_by_this_process(tmp_path: Path) -> None:
    assert run_lock.holder(tmp_path) is None
    run_lock.acquire(tmp_path)
    assert run_lock.holder(tmp_path).pid == os.getpid()
    run_lock.acquire(tmp_path)  # this process again (a retry after OOM): allowed
    run_lock.release(tmp_path)
    assert not (tmp_path / run_lock.LOCK_NAME).exists() and run_lock.holder(tmp_path) is None


def test_a_live_other_process_holds_the_run_until_it_dies(tmp_path: Path, other_process) -> None:
    lock_for(tmp_path, other_process.pid)
    assert run_lock.holder(tmp_path).pid == other_process.pid
    with pytest.raises(StudioError, match=f"pid {other_process.pid}"):
        run_lock.acquire(tmp_path)
    run_lock.release(tmp_path)  # not ours: left alone
    assert (tmp_path / run_lock.LOCK_NAME).exists()
    other_process.kill()
    other_process.wait()
    assert run_lock.holder(tmp_path) is None  # stale now
    run_lock.acquire(tmp_path)
    assert run_lock.holder(tmp_path).pid == os.getpid()


def test_stale_locks_are_ignored(tmp_path: Path, other_process) -> None:
    lock_for(tmp_path, other_process.pid, started=1.0)  # the pid was reused by another program
    assert run_lock.holder(tmp_path) is None
    lock_for(tmp_path, other_process.pid, host="another-machine")
    assert run_lock.holder(tmp_path) is None
    (tmp_path / run_lock.LOCK_NAME).write_text("{not json")
    assert run_lock.holder(tmp_path) is None
