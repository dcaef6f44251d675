"""torch's thread share: the override, the setting, half the cores; applied before torch starts and passed on
to a spawned training child."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.ml.base.threads import THREADS_ENV, parse_threads, thread_share

REPO = Path(__file__).resolve().parents[2]


def test_the_share_is_the_override_else_the_setting_else_half_the_cores():
    assert thread_share(None, override="", cores=2) == 1
    assert thread_share("auto", override="", cores=16) == 8
    assert thread_share(0, override="", cores=1) == 1
    assert thread_share(3, override="", cores=2) == 3
    assert thread_share(3, override="2", cores=16) == 2
    assert thread_share(None, override="auto", cores=8) == 4
    assert parse_threads(" 4 ") == 4 and parse_threads("") is None
    for bad in ("many", "-1", 2.5):
        with pytest.raises(StudioError, match="not a number of CPU threads"):
            parse_threads(bad)


def run_fresh(code: str, **env: str) -> str:
    """Run `code` in a new interpreter (torch not imported yet) with only `env` set of the thread variables."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    clean.update(env, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=clean, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


CHILD = """
import multiprocessing as mp
import sys

def child(queue):
    from studio.ml.base.threads import apply_thread_share  # what the training child does first
    apply_thread_share()
    import torch
    queue.put(torch.get_num_threads())

if __name__ == "__main__":
    from studio.ml.base.threads import apply_thread_share
    apply_thread_share(int(sys.argv[1]))          # the app at start, torch not imported yet
    assert "torch" not in sys.modules
    import torch
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    print(torch.get_num_threads(), queue.get(timeout=240))
    process.join()
"""


def test_the_apps_setting_reaches_torch_and_the_training_child(tmp_path):
    """torch would take every core (2 here, more elsewhere); the setting 1 holds in the app and its child."""
    script = tmp_path / "share.py"
    script.write_text(textwrap.dedent(CHILD))

    def app_and_child(setting: int, **env: str) -> str:
        return run_fresh(f"import runpy, sys; sys.argv = ['share.py', '{setting}']; "
                         f"runpy.run_path({str(script)!r}, run_name='__main__')", **env)

    assert app_and_child(1) == "1 1"
    # The variable the user started the app with wins over the setting, in the child too.
    assert app_and_child(2, **{THREADS_ENV: "1"}) == "1 1"
    assert app_and_child(2) == "2 2"


def test_applying_after_torch_started_sets_its_threads(monkeypatch):
    import torch

    from studio.ml.base.threads import apply_thread_share

    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # restored after the test
    monkeypatch.setattr("studio.ml.base.threads.LAUNCH_OVERRIDE", "")
    before = torch.get_num_threads()
    try:
        assert apply_thread_share(2) == 2 and torch.get_num_threads() == 2
        assert apply_thread_share(1) == 1 and torch.get_num_threads() == 1
        import os

        assert os.environ[THREADS_ENV] == os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
