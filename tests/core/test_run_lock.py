"""The run lock tells a run another process is training from an interrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.train import run_lock
from studio.core.train.run_dir import RunDir
from tests.lock_holder import held_by_another_process


def test_acquire_and_release_by_this_process(tmp_path: Path) -> None:
    assert run_lock.holder(RunDir(tmp_path)) is None
    run_lock.acquire(RunDir(tmp_path))
    assert run_lock.holder(RunDir(tmp_path)).pid == os.getpid()
    with pytest.raises(StudioError, match="by this process"):  # a second trainer of the run in this process
        run_lock.acquire(RunDir(tmp_path))
    run_lock.release(RunDir(tmp_path))
    assert not RunDir(tmp_path).holder_file.exists() and run_lock.holder(RunDir(tmp_path)) is None
    run_lock.acquire(RunDir(tmp_path))  # and it can be taken again
    run_lock.release(RunDir(tmp_path))


def test_a_live_other_process_holds_the_run_until_it_dies(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path) as other:
        assert run_lock.holder(RunDir(tmp_path)).pid == other.pid
        with pytest.raises(StudioError, match=f"another process \\(pid {other.pid}\\)"):
            run_lock.acquire(RunDir(tmp_path))
        run_lock.release(RunDir(tmp_path))  # not ours: left alone
        assert run_lock.holder(RunDir(tmp_path)).pid == other.pid
    # SIGKILLed: running.json is left behind, but the OS let the lock go with the process
    assert RunDir(tmp_path).holder_file.exists()
    assert run_lock.holder(RunDir(tmp_path)) is None
    run_lock.acquire(RunDir(tmp_path))
    assert run_lock.holder(RunDir(tmp_path)).pid == os.getpid()
    run_lock.release(RunDir(tmp_path))


def test_leftovers_that_name_no_live_trainer_are_ignored(tmp_path: Path) -> None:
    # running.json naming this very process (a pid reused by the app) while nobody holds the OS lock
    RunDir(tmp_path).holder_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                            "started": time.time()}))
    assert run_lock.holder(RunDir(tmp_path)) is None
    RunDir(tmp_path).holder_file.write_text("{not json")
    assert run_lock.holder(RunDir(tmp_path)) is None
    with held_by_another_process(tmp_path) as other:
        data = json.loads(RunDir(tmp_path).holder_file.read_text())
        RunDir(tmp_path).holder_file.write_text(json.dumps({**data, "host": "another-machine"}))
        assert run_lock.holder(RunDir(tmp_path)) is None  # another machine's lock (a synced folder): not ours to judge
        assert other.poll() is None


RACE = """
import sys, time
from pathlib import Path
from studio.core.train import run_lock
from studio.core.train.run_dir import RunDir
from studio.core.errors import StudioError
start_at = float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
try:
    run_lock.acquire(RunDir(Path(sys.argv[1])))
    print("won", flush=True)
    time.sleep(1.5)
except StudioError:
    print("refused", flush=True)
"""


def test_processes_racing_for_one_run_get_it_once(tmp_path: Path) -> None:
    """Resumes started at the same instant from several processes: exactly one trains."""
    for attempt in range(2):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        start_at = time.time() + 2.0  # after every interpreter has started
        racers = [subprocess.Popen([sys.executable, "-c", RACE, str(run_dir), str(start_at)],
                                   stdout=subprocess.PIPE, text=True) for _ in range(4)]
        outcomes = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
        assert outcomes == ["refused", "refused", "refused", "won"], outcomes
