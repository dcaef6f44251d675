"""Training checkpoints in runs/<run-id>/checkpoints/: completeness markers, the last good one, pruning.

transformers' Trainer writes `checkpoint-N/` file by file. A kill in the middle leaves a folder that
looks like a checkpoint but is not one, so after the Trainer is done with a folder the studio fsyncs
its files and writes a marker last (atomically) that lists every file with its size. Only folders
whose marker agrees with what is on disk count as checkpoints: for resuming, for the best adapter,
for pruning. Knows nothing about models or events.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from studio.core import atomic

log = logging.getLogger(__name__)

MARKER = "studio-complete.json"
PREFIX = "checkpoint-"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoints_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path | str, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"{PREFIX}{step}"


def step_of(folder: Path | str) -> int | None:
    match = _STEP.match(Path(folder).name)
    return int(match.group(1)) if match else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER and ".tmp" not in p.name)


def mark_complete(folder: Path | str, info: dict[str, Any] | None = None) -> None:
    """Flush the checkpoint's files to disk, then write the marker that vouches for them."""
    folder = Path(folder)
    listing = {}
    for path in _files(folder):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        listing[path.relative_to(folder).as_posix()] = path.stat().st_size
    missing = [name for name in ADAPTER_FILES if name not in listing]
    if missing:
        raise RuntimeError(f"checkpoint {folder} lacks {', '.join(missing)}")
    atomic.write_json(folder / MARKER, {"step": step_of(folder), "files": listing, **(info or {})})


def read_marker(folder: Path | str) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def all_checkpoints(run_dir: Path | str) -> list[Path]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def complete_checkpoints(run_dir: Path | str) -> list[Path]:
    return [p for p in all_checkpoints(run_dir) if is_complete(p)]


def last_complete(run_dir: Path | str) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def remove_incomplete(run_dir: Path | str) -> list[Path]:
    """Delete checkpoint folders a crash or kill left half-written."""
    removed = []
    for folder in all_checkpoints(run_dir):
        if not is_complete(folder):
            log.info("Removing incomplete checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def prune(run_dir: Path | str, keep_last: int, protect: set[Path] | None = None) -> list[Path]:
    """Keep the newest `keep_last` complete checkpoints (and any in `protect`); delete older ones.

    Older incomplete folders go too; the newest folder is left alone even when incomplete, since the
    Trainer may still be writing it.
    """
    protect = {Path(p).resolve() for p in (protect or set())}
    folders = all_checkpoints(run_dir)
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
