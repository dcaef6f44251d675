"""A second process that trains a run, as far as the run lock can tell: it holds the run's lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLD = """
import sys, time
from pathlib import Path
from studio.core.train import run_lock
from studio.core.train.run_dir import RunDir
run_lock.acquire(RunDir(Path(sys.argv[1])))
print("held", flush=True)
time.sleep(120)
"""


@contextmanager
def held_by_another_process(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Yields the holding process once it holds the lock; kills it (SIGKILL, no clean-up) on exit."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held", "the holder process failed to take the lock"
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
