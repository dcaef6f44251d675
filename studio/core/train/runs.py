"""The training runs in the data directory, summarised from their files: for the run browser and the CLI.

`list_runs(data)` reads each run's config and events (through its RunDir) into RunSummary rows. A run
whose last event is not Finished, Failed or Stopped was interrupted (the app closed or crashed),
unless another live process holds its lock (studio.core.train.run_lock): then it is running elsewhere.
One killed after publishing its adapter but before recording that is finished, its record completed.
Plain Python, no torch or Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.library.store import AdapterEntry, AdapterLibrary
from studio.core.paths import DataDir
from studio.core.train import published, run_lock
from studio.core.train.events import Eval, Failed, Finished, RunStarted, Step, Stopped
from studio.core.train.run_dir import RunDir

RESUMABLE = ("interrupted", "stopped", "failed")
HIDDEN_DIFF_KEYS = {"schema_version", "resume"}


@dataclass
class RunSummary:
    run_id: str
    run_dir: RunDir
    config: dict[str, Any]
    status: str  # finished | stopped | failed | interrupted | running (in another process)
    step: int = 0
    max_steps: int = 0
    final_loss: float | None = None
    best_eval: float | None = None
    adapter_id: str | None = None
    message: str = ""
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.get("adapter_name") or Path(self.config.get("data_folder", "") or self.run_id).name

    @property
    def started(self) -> str:
        """From the run id (YYYYmmdd-HHMMSS-...)."""
        stamp = self.run_id[:15]
        if len(stamp) == 15 and stamp[8] == "-" and stamp.replace("-", "").isdigit():
            return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}"
        return ""

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE


def summarize_run(run: RunDir) -> RunSummary | None:
    """One run folder as a RunSummary; None when it has no readable config."""
    config = run.read_config()
    if config is None:
        return None
    summary = RunSummary(run_id=run.run_id, run_dir=run, config=config, status="interrupted")
    by_step: dict[int, float] = {}  # a resumed run redoes steps after its checkpoint: keep the latest
    for event in run.events():
        if isinstance(event, Step):
            by_step[event.step] = event.loss
            summary.step, summary.max_steps, summary.final_loss = event.step, event.max_steps, event.loss
        elif isinstance(event, Eval):
            summary.best_eval = event.eval_loss if summary.best_eval is None else min(summary.best_eval, event.eval_loss)
        elif isinstance(event, RunStarted):
            summary.max_steps = event.max_steps
            summary.status = "interrupted"
        elif isinstance(event, Finished):
            summary.status, summary.adapter_id = "finished", event.adapter_id
        elif isinstance(event, Stopped):
            summary.status = "stopped"
        elif isinstance(event, Failed):
            summary.status, summary.message = "failed", event.message
    if summary.status == "interrupted" and run_lock.holder(run) is not None:
        summary.status = "running"  # another live process (a second window, the CLI) is training it
    summary.steps = sorted(by_step)
    summary.losses = [by_step[s] for s in summary.steps]
    return summary


def list_runs(data: DataDir) -> list[RunSummary]:
    """Every run in the data directory, newest first. A run killed after its adapter reached the library
    but before its end was recorded has that record completed here (studio.core.train.published)."""
    summaries = [summary for summary in map(summarize_run, RunDir.all(data)) if summary is not None]
    unended = [s for s in summaries if s.status in ("interrupted", "failed")]
    if unended:
        entries = AdapterLibrary(data).list()
        for summary in unended:
            _complete_if_published(summary, entries)
    return summaries


def _complete_if_published(summary: RunSummary, entries: list[AdapterEntry]) -> None:
    if published.published_by(entries, summary.run_id) is None:
        return
    try:
        run_lock.acquire(summary.run_dir)
    except StudioError:
        return  # a trainer took the run this instant: it records its own end
    try:
        finished = published.complete_record(summary.run_dir, entries)
    finally:
        run_lock.release(summary.run_dir)
    if finished is not None:
        summary.status, summary.adapter_id, summary.message = "finished", finished.adapter_id, ""


def config_diff(a: dict[str, Any], b: dict[str, Any], everything: bool = False) -> list[tuple[str, str, str]]:
    """(setting, value in a, value in b) for the settings that differ (or all of them)."""
    rows = []
    for key in sorted((set(a) | set(b)) - HIDDEN_DIFF_KEYS):
        left, right = a.get(key, "—"), b.get(key, "—")
        if everything or left != right:
            rows.append((key, _show(left), _show(right)))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "—"
    return "—" if value in ("", None) else str(value)
