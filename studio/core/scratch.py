"""Hidden work folders that an OS lock marks as in use, and the removal of those a dead process left.

Whatever the studio builds under a temporary name (an adapter being added, a zip being unpacked, a
base model being converted, a blend or a checkpoint being saved) is built in `work_dir(parent,
label)`: a hidden folder `.<label>-<token>.staging` in `parent`, guarded by an OS lock (filelock:
flock / LockFileEx) on `.<label>-<token>.staging.lock` beside it. The lock is taken before the
folder exists and let go after it is gone, and the OS drops it when its process ends however it
ends. So `remove_stale(parent)` can tell a killed process's leftovers (nobody holds the lock:
removed) from a folder a live process is writing (the lock is held: left alone), without guessing
from ages. Folders named the way the studio named its work folders before these locks
(`LEFTOVER_PATTERNS`) are removed the same way: no live process holds a lock for them.
Which folders of the data directory are swept is studio.core.leftovers'.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

log = logging.getLogger(__name__)

SUFFIX = ".staging"
LOCK_SUFFIX = ".lock"
# Work folders by name: today's (`.*.staging`) and those the studio made before they were locked.
LEFTOVER_PATTERNS = (f".*{SUFFIX}", ".import-*.tmp", ".adapter-*", ".blend-*", ".resize-*", ".*.deleting")
ORPHAN_LOCK_AGE_S = 60.0  # a lock file without its folder: its process died between the two steps
_LABEL_MAX = 80  # file names stay well under 255 bytes with the token and suffixes


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK_SUFFIX)


def _lock(folder: Path) -> filelock.BaseFileLock:
    # thread_local=False: the lock belongs to the process, not to the thread that took it
    return filelock.FileLock(_lock_path(folder), timeout=0, thread_local=False)


def _let_go(lock: filelock.BaseFileLock) -> None:
    lock.release(force=True)
    with contextlib.suppress(OSError):
        Path(lock.lock_file).unlink(missing_ok=True)


@contextlib.contextmanager
def work_dir(parent: Path | str, label: str) -> Iterator[Path]:
    """A new, empty hidden folder in `parent`, held by this process until the block ends.

    Whatever is still in it then is removed; a caller that renames the folder into place (see
    studio.core.atomic.staging_dir) does so inside the block, while the lock still guards it.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:_LABEL_MAX] or "work"
    while True:
        folder = parent / f".{stem}-{secrets.token_hex(6)}{SUFFIX}"
        lock = _lock(folder)
        lock.acquire()  # a fresh name: nobody else can hold it
        try:
            folder.mkdir()
            break
        except FileExistsError:
            _let_go(lock)
        except BaseException:
            _let_go(lock)
            raise
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _let_go(lock)


def is_leftover_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LEFTOVER_PATTERNS)


def remove_stale(parent: Path | str) -> list[Path]:
    """Remove the work folders in `parent` that no live process holds; returns what was removed."""
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []  # no such folder (yet), or unreadable: nothing of ours to remove
    removed = []
    for folder in entries:
        if not is_leftover_name(folder.name) or not folder.is_dir() or folder.is_symlink():
            continue
        lock = _lock(folder)
        try:
            lock.acquire()
        except filelock.Timeout:
            continue  # a live process is working in it
        except OSError as err:
            log.warning("Could not check whether %s is in use: %s", folder, err)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            _let_go(lock)
    for lock_file in entries:
        if lock_file.name.endswith(SUFFIX + LOCK_SUFFIX) and lock_file.is_file():
            _remove_orphan_lock(lock_file)
    return removed


def _remove_orphan_lock(lock_file: Path) -> None:
    """A lock file whose folder is gone; a young one may be a live process between its two steps."""
    folder = lock_file.with_name(lock_file.name[: -len(LOCK_SUFFIX)])
    try:
        if folder.exists() or time.time() - lock_file.stat().st_mtime < ORPHAN_LOCK_AGE_S:
            return
    except OSError:
        return
    lock = _lock(folder)
    try:
        lock.acquire()
    except (filelock.Timeout, OSError):
        return
    _let_go(lock)
