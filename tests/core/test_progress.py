"""The one progress-and-cancel protocol of long jobs (studio.core.progress): frozen events, a stop
asked between steps raising Cancelled, a sub-job's share of the bar, one line for a terminal."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from studio.core.progress import Cancelled, StageProgress, Steps, describe_progress, span


def test_steps_report_frozen_events_until_a_stop_is_asked() -> None:
    seen: list[StageProgress] = []
    stop = threading.Event()
    steps = Steps(seen.append, stop.is_set, cancelled_hint="Nothing was saved.")
    steps("load", 0.25, "Loading…")
    steps("download", None, "Asking the hub…")  # a fraction nobody can know yet
    assert seen == [StageProgress("load", 0.25, "Loading…"), StageProgress("download", None, "Asking the hub…")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].fraction = 1.0  # type: ignore[misc]
    stop.set()
    with pytest.raises(Cancelled, match="Stopped before: Saving") as caught:
        steps("save", 0.9, "Saving…")
    assert caught.value.hint == "Nothing was saved." and len(seen) == 2  # the stopped step is not reported
    Steps(None, None)("quiet", 1.0, "nobody listens")  # both sides are optional


def test_a_sub_job_fills_its_share_of_the_bar_and_events_read_as_one_line() -> None:
    seen: list[StageProgress] = []
    half = span(seen.append, 0.5, 0.9)
    half(StageProgress("blend", 0.5, "Blending…"))
    half(StageProgress("blend", None, "Still blending…"))
    assert seen[0] == StageProgress("blend", pytest.approx(0.7), "Blending…") and seen[1].fraction is None
    assert describe_progress(StageProgress("convert", 0.4, "Writing…")) == " 40% Writing…"
    assert describe_progress(StageProgress("download", None, "Asking the hub…")) == "Asking the hub…"
