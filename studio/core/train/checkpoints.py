"""A run's training checkpoints: completeness markers, the last good one, the kept steps, pruning.

transformers' Trainer writes `checkpoint-N/` file by file. A kill in the middle leaves a folder that
looks like a checkpoint but is not one, so after the Trainer is done with a folder the studio fsyncs
its files and writes a marker last (atomically) that lists every file with its size. Only folders
whose marker agrees with what is on disk count as checkpoints: for resuming, for the best adapter,
for pruning. Where the folders and markers live is the RunDir's (studio.core.train.run_dir).
Plain Python: no torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from studio.core import atomic
from studio.core.train.run_dir import RunDir, marker_of, step_of

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TRAINER_STATE_NAME = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, in every checkpoint it saves


def _files(folder: Path) -> list[Path]:
    marker = marker_of(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p != marker and ".tmp" not in p.name)


def mark_complete(folder: Path, info: dict[str, Any] | None = None) -> None:
    """Flush the checkpoint's files to disk, then write the marker that vouches for them."""
    listing = {}
    for path in _files(folder):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        listing[path.relative_to(folder).as_posix()] = path.stat().st_size
    missing = [name for name in ADAPTER_FILES if name not in listing]
    if missing:
        raise RuntimeError(f"checkpoint {folder} lacks {', '.join(missing)}")
    atomic.write_json(marker_of(folder), {"step": step_of(folder), "files": listing, **(info or {})})


def read_marker(folder: Path | str) -> dict[str, Any] | None:
    try:
        data = json.loads(marker_of(Path(folder)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def trainer_state(folder: Path | str) -> dict[str, Any]:
    """The Trainer's own record in a checkpoint (global step, tokens seen, log history); {} if unreadable."""
    try:
        data = json.loads((Path(folder) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_complete(folder: Path | str) -> bool:
    """The marker exists and every file it lists is there with the recorded size."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None or not isinstance(marker.get("files"), dict):
        return False
    for name, size in marker["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return all(name in marker["files"] for name in ADAPTER_FILES)


def complete_checkpoints(run: RunDir) -> list[Path]:
    return [p for p in run.checkpoint_folders() if is_complete(p)]


def kept_steps(run: RunDir) -> list[int]:
    """The steps of the run's complete checkpoints, oldest first."""
    return [step_of(folder) or 0 for folder in complete_checkpoints(run)]


def last_complete(run: RunDir) -> Path | None:
    done = complete_checkpoints(run)
    return done[-1] if done else None


def complete_at(run: RunDir, step: int | None) -> Path | None:
    """The run's checkpoint at `step` when it is complete, else None."""
    if not step:
        return None
    folder = run.checkpoint(step)
    return folder if is_complete(folder) else None


def remove_incomplete(run: RunDir) -> list[Path]:
    """Delete checkpoint folders a crash or kill left half-written."""
    removed = []
    for folder in run.checkpoint_folders():
        if not is_complete(folder):
            log.info("Removing incomplete checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def prune(run: RunDir, keep_last: int, protect: set[Path] | None = None) -> list[Path]:
    """Keep the newest `keep_last` complete checkpoints (and any in `protect`); delete older ones.

    Older incomplete folders go too; the newest folder is left alone even when incomplete, since the
    Trainer may still be writing it.
    """
    protect = {Path(p).resolve() for p in (protect or set())}
    folders = run.checkpoint_folders()
    complete = [p for p in folders if is_complete(p)]
    keep = set(complete[-keep_last:]) if keep_last > 0 else set()
    newest = folders[-1] if folders else None
    removed = []
    for folder in folders:
        if folder in keep or folder.resolve() in protect or folder == newest:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
