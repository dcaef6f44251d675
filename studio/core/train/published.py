"""Which library adapter a run published, and finishing the run's record when a kill came in between.

Publishing a run is two writes: its adapter lands in the library (one rename, studio.core.library),
then its Finished event is appended to the run's metrics.jsonl. A kill between the two leaves the
adapter listed and the run looking interrupted; training it again would add a second copy. So the
adapter's studio.json names the run that made it (lineage recipe `publish_recipe`: kind "trained"
or "continued", and the run id), and whoever resumes or lists the run finds that adapter
(`published_adapter`) and writes the Finished event the kill prevented, built from the adapter's
own metrics (`finished_event`, `complete_record`). The run's OS lock (studio.core.train.run_lock)
must be held while the record is completed, so a live trainer and a listing never both write it.
Plain Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from studio.core.library.store import AdapterEntry
from studio.core.train.events import Finished, append_event
from studio.core.train.run_dir import RunDir

TRAINED, CONTINUED = "trained", "continued"  # the recipe kinds of a run's own adapter


def publish_recipe(run_id: str, parent_id: str | None) -> dict[str, Any]:
    """The lineage recipe of the adapter run `run_id` publishes (continuing `parent_id`, if any)."""
    if parent_id is None:
        return {"kind": TRAINED, "run_id": run_id}
    return {"kind": CONTINUED, "parent": parent_id, "run_id": run_id}


def published_by(entries: Iterable[AdapterEntry], run_id: str) -> AdapterEntry | None:
    """The adapter run `run_id` published, among `entries` (not one saved from its checkpoints)."""
    for entry in entries:
        recipe = entry.manifest.lineage.recipe
        if recipe.get("run_id") == run_id and recipe.get("kind") in (TRAINED, CONTINUED):
            return entry
    return None


def published_adapter(run: RunDir, entries: Iterable[AdapterEntry]) -> AdapterEntry | None:
    """The adapter `run` put in the library (`entries`: the library's) without recording it: None when
    its record says Finished, or the run published nothing."""
    if any(isinstance(event, Finished) for event in run.events()):
        return None
    return published_by(entries, run.run_id)


def finished_event(entry: AdapterEntry) -> Finished:
    """The Finished event of the run that published `entry`, from what its manifest recorded."""
    metrics = entry.manifest.metrics

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return Finished(adapter_id=entry.id, path=str(entry.path), final_loss=number("final_train_loss"),
                    eval_loss=number("best_eval_loss"), tokens_seen=int(number("tokens_seen") or 0),
                    tokens_per_second=number("tokens_per_second") or 0.0,
                    peak_memory=int(number("peak_memory_bytes") or 0), duration_s=number("duration_s") or 0.0)


def complete_record(run: RunDir, entries: Iterable[AdapterEntry]) -> Finished | None:
    """Append the Finished event of an adapter `run` published but never recorded; returns it (None:
    nothing to complete). The caller holds the run's lock."""
    entry = published_adapter(run, entries)
    if entry is None:
        return None
    finished = finished_event(entry)
    append_event(run.metrics, finished)
    return finished
