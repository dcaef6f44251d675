"""How a long job reports progress and is cancelled: one event type, one stop protocol.

A long job (a blend, a merge or export, a resize, the default model's conversion, a base model
download) takes `progress: OnProgress | None` and `should_stop: ShouldStop | None`. It reports
frozen `StageProgress(stage, fraction, message)` events (the fraction of the whole job, or None
when it cannot be known, e.g. a download of unknown size) and, between steps, asks `should_stop()`;
when that says yes it raises `Cancelled`, having written nothing. `Steps` does both for a job, and
`Steps.span(low, high)` lets a job hand a sub-job its share of the bar. The asking side passes any
`() -> bool` as should_stop, usually a threading.Event's `is_set`. Training uses the same
should_stop (checked at step boundaries) with its own typed events (studio.core.train.events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from studio.core.errors import StudioError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageProgress:
    """One step of a long job: its stage, the overall fraction done (None: unknown), a sentence."""

    stage: str
    fraction: float | None
    message: str


OnProgress = Callable[[StageProgress], None]
ShouldStop = Callable[[], bool]


class Cancelled(StudioError):
    """The user stopped a long job; nothing was written."""


def describe_progress(event: StageProgress) -> str:
    """The event as one line for a log or a terminal: "  40% Writing safetensors…"."""
    return event.message if event.fraction is None else f"{event.fraction * 100:3.0f}% {event.message}"


def span(progress: OnProgress, low: float, high: float) -> OnProgress:
    """`progress` for a sub-job whose 0..1 fills [low, high] of the whole job's bar."""
    def report(event: StageProgress) -> None:
        fraction = None if event.fraction is None else low + (high - low) * event.fraction
        progress(StageProgress(event.stage, fraction, event.message))

    return report


class Steps:
    """A job's reporter: `steps(stage, fraction, message)` first honours should_stop (raising
    Cancelled with `cancelled_hint`), then logs the step and reports it."""

    def __init__(self, progress: OnProgress | None, should_stop: ShouldStop | None,
                 cancelled_hint: str = "Nothing was written.") -> None:
        self.progress, self.should_stop, self.cancelled_hint = progress, should_stop, cancelled_hint

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())

    def check(self, message: str) -> None:
        """Raise Cancelled if the job was asked to stop before `message`."""
        if self.stop_requested():
            raise Cancelled(f"Stopped before: {message}", hint=self.cancelled_hint)

    def __call__(self, stage: str, fraction: float | None, message: str) -> None:
        self.check(message)
        event = StageProgress(stage, fraction, message)
        log.info("%s", describe_progress(event))
        if self.progress:
            self.progress(event)
