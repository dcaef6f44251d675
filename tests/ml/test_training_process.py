"""Training in a child process (what the window does): the same events and result as a direct call,
a stop request that reaches the child, errors that keep their message and hint, and a child that dies
mid-run turned into a clear error with its checkpoint left for a resume."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from studio.core.errors import StudioError
from studio.core.train import checkpoints
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir
from studio.ml.train.child_process import LOG_NAME, TrainingProcessError, run_training_in_child
from tests.ml.test_training import math_folder, of, tiny_config  # noqa: F401 - math_folder is a fixture


def test_child_run_streams_events_and_returns_the_result(math_folder, tiny_base_dir, studio_home):  # noqa: F811
    seen: list[ev.Event] = []
    result = run_training_in_child(tiny_config(math_folder, tiny_base_dir, sample_every=0), studio_home,
                                   on_event=seen.append)
    assert result.status == "finished" and result.step == 8 and result.adapter_id
    assert [s.step for s in of(seen, ev.Step)] == list(range(1, 9))
    assert isinstance(seen[0], ev.Preparing) and isinstance(seen[-1], ev.Finished)
    assert [type(e) for e in seen if not isinstance(e, ev.Preparing)][0] is ev.RunStarted
    # what came through the pipe is what the run wrote to its metrics file
    assert RunDir(result.run_dir).events() == seen
    # the child logs to its own file in the data directory (the window's log has one writer)
    assert "Training process" in (studio_home.logs / LOG_NAME).read_text(encoding="utf-8")


def test_stop_request_reaches_the_child_and_leaves_a_checkpoint(math_folder, tiny_base_dir, studio_home):  # noqa: F811
    steps: list[int] = []

    def record(event) -> None:
        if isinstance(event, ev.Step):
            steps.append(event.step)

    config = tiny_config(math_folder, tiny_base_dir, checkpoint_every=2, sample_every=0)
    result = run_training_in_child(config, studio_home, on_event=record, should_stop=lambda: bool(steps))
    assert result.status == "stopped" and 1 <= result.step < 8
    assert checkpoints.complete_at(RunDir(result.run_dir), result.step)


def test_errors_in_the_child_keep_their_message_and_hint(math_folder, tiny_base_dir, studio_home, tmp_path):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    seen: list[ev.Event] = []
    failed = run_training_in_child(tiny_config(empty, tiny_base_dir), studio_home, on_event=seen.append)
    assert failed.status == "failed" and failed.message and isinstance(seen[-1], ev.Failed)
    with pytest.raises(StudioError, match="no training run") as caught:  # raised in the child, before a run
        run_training_in_child(TrainConfig(resume="nope"), studio_home)
    err = caught.value
    assert isinstance(err, TrainingProcessError) and err.hint
    assert "Traceback" in err.details  # the child's own traceback, for the details view


def test_a_child_killed_mid_run_is_a_clear_error_and_the_run_stays_resumable(math_folder, tiny_base_dir,  # noqa: F811
                                                                             studio_home):
    started: list[ev.Event] = []

    def kill_after_first_checkpoint(event) -> None:
        if isinstance(event, ev.RunStarted):
            started.append(event)
        if isinstance(event, ev.Checkpoint) and len(started) == 1:
            started.append(event)
            (child,) = multiprocessing.active_children()
            os.kill(child.pid, signal.SIGKILL)  # what the OS does to a run that exhausts memory

    config = tiny_config(math_folder, tiny_base_dir, checkpoint_every=2, sample_every=0, max_steps=40)
    with pytest.raises(TrainingProcessError, match="ended unexpectedly") as caught:
        run_training_in_child(config, studio_home, on_event=kill_after_first_checkpoint)
    assert "resume" in caught.value.hint
    run_dir = RunDir.of(studio_home, started[0].run_id)
    assert checkpoints.last_complete(run_dir) is not None
    resumed = run_training_in_child(TrainConfig(resume=started[0].run_id), studio_home)
    assert resumed.status == "finished" and resumed.step == 40
