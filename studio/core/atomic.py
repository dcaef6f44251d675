"""Atomic file writes: a crash, a kill or a full disk leaves either the old file or the new one.

Write to a temporary file in the same folder, fsync, then rename over the target. Folders are
built under a temporary name (a locked work folder, studio.core.scratch) and renamed into place the
same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from studio.core import scratch


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; rename is durable enough there.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_for_write(path: Path | str) -> Iterator[BinaryIO]:
    """A binary handle to a temp file beside `path`; on success it is fsynced and renamed over `path`.

    For content streamed in pieces (a zip being built) that should not be held in memory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    with open_for_write(path) as handle:
        handle.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def staging_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; on success it is renamed to `final`.

    `final` must not exist yet. On any error the staging folder is removed and `final` untouched;
    after a kill, studio.core.scratch removes it (it is a locked work folder).
    """
    final = Path(final)
    with scratch.work_dir(final.parent, final.name) as tmp:
        yield tmp
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        os.replace(tmp, final)
        _fsync_dir(final.parent)
