"""Clearing what killed processes left in the data directory, once at start (the app's and the CLI's).

A process killed while it staged an adapter, unpacked a zip, converted a base model or saved a
checkpoint as an adapter leaves its hidden work folder behind (hundreds of MB for a model or a
zip). `remove_leftovers(data)` sweeps the folders where the studio works: the data directory
itself, models/, adapters/, runs/, trash/ and each run folder. Only work folders no live process holds
are removed (studio.core.scratch decides, by their OS locks), so a second window or a CLI run
busy at that moment keeps its own. A run folder left empty by a kill before its config was written
(older versions made the folder first) goes too.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from studio.core import scratch
from studio.core.paths import DataDir
from studio.core.train.run_dir import RunDir

log = logging.getLogger(__name__)


def remove_leftovers(data: DataDir) -> list[Path]:
    """Remove the stale work folders in the data directory; returns what was removed."""
    runs = RunDir.all(data)
    removed: list[Path] = []
    for folder in (data.root, data.models, data.adapters, data.runs, data.trash, *(run.path for run in runs)):
        removed += scratch.remove_stale(folder)
    for run in runs:
        if not run.config.exists():
            with contextlib.suppress(OSError):
                run.path.rmdir()  # only an empty folder: anything in it is not ours to judge
                removed.append(run.path)
    for path in removed:
        log.info("Removed %s, left by a process that ended before it could", path)
    return removed
