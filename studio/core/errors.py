"""The studio's user-facing error, and the one rule that turns a full disk into such an error.

`StudioError(message, hint)` carries a message that says what was wrong and what to do.
`disk_full_as_message(path, doing)` wraps any write: an ENOSPC / EDQUOT OSError inside becomes
"Could not DOING: the disk is full (N MB free at PATH)."; other OSErrors pass through unchanged.
`is_disk_full` also knows the other shapes a full disk takes in the libraries the studio writes through
(torch's serializer, safetensors), which raise RuntimeErrors that never say "disk".
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

# No space left on the device, or the user's disk quota exceeded: the same thing to the user.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class StudioError(Exception):
    """An error meant for the user. `str(err)` is complete, plain-language advice."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip())


# How a full disk reads when it reaches us through a library instead of as an OSError: torch.save's C++
# writer ("PytorchStreamWriter failed writing file data/0: file write failed") and safetensors' Rust
# I/O error ("No space left on device" / StorageFull).
_DISK_FULL_TEXTS = ("no space left on device", "storagefull", "disk quota exceeded",
                    "pytorchstreamwriter failed writing file")


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is the disk (or the user's quota) being full."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if not isinstance(current, OSError) and any(text in str(current).lower() for text in _DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: Path | str, doing: str) -> StudioError:
    """'Could not DOING: the disk is full (N MB free at PATH).' for the file system holding `path`."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent  # the nearest folder that exists is on the same disk
    try:
        free = f"{shutil.disk_usage(where).free / 1024**2:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return StudioError(f"Could not {doing}: the disk is full ({free} at {where}).",
                       hint="Free some space (empty the trash with `lora-studio trash --empty`), then try again.")


@contextlib.contextmanager
def disk_full_as_message(path: Path | str, doing: str) -> Iterator[None]:
    """Run the block; a full disk inside raises `disk_full_error(path, doing)` instead of an OSError."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, doing) from err
        raise
