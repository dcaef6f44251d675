"""The filesystem side of a scan: which entries of the folder are read, and their bytes within limits.

`walk_folder` lists every non-hidden entry under the folder and decides for each one, without
opening any file: an ordinary file is read; a named pipe, socket or device is not (reading one
blocks forever or never ends); an unreadable folder is reported. Links follow one policy: a link
whose target lies outside the dataset folder is never followed (nothing outside the folder the
user chose is trained on); a link to a file or folder that the walk reads at its own place anyway
is not read twice; a link to something the walk would not otherwise reach (a hidden file or
folder inside) is followed once; a link that points back to a folder containing it (a loop) or to
nothing (broken) is reported. Every decision not to read something becomes a `FileReport` with the
reason and what to do.

`read_limited` opens one file without blocking, checks that it still is an ordinary file, and
reads it only when it is within the per-file size limit and what is left of the scan's total.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from studio.core.dataset.report import FileReport
from studio.core.errors import StudioError

MB = 1_000_000
DEFAULT_MAX_FILE_MB = 64.0  # about 16M tokens of prose; raise it per scan (max_file_mb) for bigger files
TOTAL_FACTOR = 4  # one scan reads at most this many times the per-file limit, all files together
_READ_CHUNK = 1 << 20
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_BINARY", 0))
LIMIT_HINT = "raise the limit (`--max-file-mb` on the command line, max_file_mb in a training config)"


@dataclass(frozen=True)
class ReadLimits:
    """How much one scan reads: per file, and all files together."""

    max_file_bytes: int
    max_total_bytes: int

    @classmethod
    def from_mb(cls, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> ReadLimits:
        if not max_file_mb > 0:  # also refuses NaN
            raise StudioError(f"The file size limit must be a positive number of MB, not {max_file_mb}.",
                              hint=f"The default is {DEFAULT_MAX_FILE_MB:g} MB per file.")
        per_file = int(max_file_mb * MB)
        return cls(max_file_bytes=per_file, max_total_bytes=per_file * TOTAL_FACTOR)


@dataclass(frozen=True)
class FoundFile:
    """An ordinary file to read: `rel` is what the user sees, `path` what is opened."""

    rel: str  # relative to the dataset folder, forward slashes (through a followed link when via is set)
    path: Path
    via: str | None = None  # "link -> target" when reached through a followed link


@dataclass
class Walk:
    files: list[FoundFile] = field(default_factory=list)
    not_read: list[FileReport] = field(default_factory=list)  # entries decided against, with the reason
    hidden: int = 0


def format_size(size: int) -> str:
    if size >= 10 * MB:
        return f"{size / MB:,.0f} MB"
    if size >= MB:
        return f"{size / MB:.1f} MB"
    return f"{size / 1000:.0f} kB" if size >= 1000 else f"{size} bytes"


def walk_folder(folder: Path) -> Walk:
    """Every non-hidden entry under `folder`: files to read, and the reason for each one not read."""
    walk = _Walker(folder)
    walk.run()
    walk.result.files.sort(key=lambda f: f.rel)
    walk.result.not_read.sort(key=lambda r: r.path)
    return walk.result


class _Walker:
    def __init__(self, folder: Path) -> None:
        self.root = Path(os.path.realpath(folder))
        self.result = Walk()
        self.dirs: dict[Path, str] = {}  # real folder -> the path it is read at
        self.file_paths: dict[Path, str] = {}  # real file -> the path it is read at
        self.links: list[tuple[str, Path, str | None]] = []  # (rel, link, via): decided after the real tree
        self.pending: list[tuple[Path, str, str | None]] = []  # folders to list: a loop, not recursion,
        # so a folder nested thousands deep is walked like any other

    def run(self) -> None:
        self._walk_dir(self.root, "", None)
        while self.pending or self.links:  # a followed folder may hold more links: they join the queue
            if self.pending:
                self._list_dir(*self.pending.pop())
            else:
                self._follow(*self.links.pop(0))

    def _walk_dir(self, real: Path, prefix: str, via: str | None) -> None:
        self.dirs[real] = prefix or "."
        self.pending.append((real, prefix, via))

    def _list_dir(self, real: Path, prefix: str, via: str | None) -> None:
        try:
            with os.scandir(real) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self._folder(prefix.rstrip("/") or ".", f"unreadable folder ({_why(err)}): nothing in it was read. "
                         "Make it readable (for example chmod u+rx) or move it out of the dataset folder.")
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                self.result.hidden += 1
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as err:
                self._file(rel, f"unreadable ({_why(err)}): not read. Check the file's permissions.")
                continue
            if stat.S_ISLNK(mode):
                self.links.append((rel, Path(entry.path), via))
            elif stat.S_ISDIR(mode):
                self._walk_dir(real / entry.name, rel + "/", via)
            elif stat.S_ISREG(mode):
                self._add_file(rel, real / entry.name, via)
            else:
                self._file(rel, _special(mode))

    def _follow(self, rel: str, link: Path, via: str | None) -> None:
        shown = _link_text(link)
        try:
            target = Path(os.path.realpath(link, strict=True))
            mode = os.stat(target).st_mode
        except OSError as err:
            if err.errno == errno.ELOOP:
                self._file(rel, f"link loop ({rel} -> '{shown}' leads back to itself): not followed. Remove the link.")
            elif err.errno == errno.ENOENT:
                self._file(rel, f"broken link (its target '{shown}' does not exist): not read. Remove or fix the link.")
            else:
                self._file(rel, f"unreadable link to {shown} ({_why(err)}): not read.")
            return
        is_dir = stat.S_ISDIR(mode)
        report = self._folder if is_dir else self._file
        if not target.is_relative_to(self.root):
            what = "folder" if is_dir else "file"
            report(rel, f"link to a {what} outside the dataset folder ({target}): not read, so nothing outside "
                        f"the folder you chose is trained on. Copy the {what} into the dataset folder to use it.")
            return
        inside = self._rel(target)
        if is_dir:
            if link.parent.resolve().is_relative_to(target):
                report(rel, f"link loop ({rel} points to {inside.rstrip('/')}/, a folder that contains the link): "
                            "not followed.")
            elif target in self.dirs:
                report(rel, f"link to a folder already read as {self.dirs[target].rstrip('/')}/: not read twice.")
            else:
                self._walk_dir(target, rel + "/", via or f"{rel} -> {inside}")
        elif not stat.S_ISREG(mode):
            report(rel, f"link to {inside}, which is {_special(mode)}")
        else:
            self._add_file(rel, target, via or f"{rel} -> {inside}")

    def _add_file(self, rel: str, real: Path, via: str | None) -> None:
        if real in self.file_paths:  # reached a second time through a link
            self._file(rel, f"the same file as {self.file_paths[real]}, already read: not read twice.")
            return
        self.file_paths[real] = rel
        self.result.files.append(FoundFile(rel, real, via))

    def _rel(self, target: Path) -> str:
        return target.relative_to(self.root).as_posix() or "."

    def _file(self, rel: str, reason: str) -> None:
        suffix = Path(rel).suffix.lower().lstrip(".")
        self.result.not_read.append(FileReport(path=rel, format=suffix or "-", error=reason))

    def _folder(self, rel: str, reason: str) -> None:
        self.result.not_read.append(FileReport(path=rel.rstrip("/") + "/", format="folder", kind="folder",
                                               error=reason))


@dataclass(frozen=True)
class Read:
    """What `read_limited` got: the bytes, or the reason there are none; the size when it is known."""

    data: bytes | None
    size: int | None = None
    error: str | None = None


def read_limited(path: Path, limits: ReadLimits, total_left: int) -> Read:
    """The bytes of one ordinary file, or the reason it was not read (not regular, too big, unreadable).

    Opened without blocking and without following a link, then checked with fstat: what was an
    ordinary file during the walk may have been swapped for a pipe or a link since.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return Read(None, error="became a link after the folder was listed: not read. Scan the folder again.")
        return Read(None, error=f"unreadable file ({_why(err)}): not read. Check the file's permissions.")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Read(None, error=_special(info.st_mode))
        if info.st_size > limits.max_file_bytes:
            return Read(None, info.st_size, _too_big(info.st_size, limits))
        if info.st_size > total_left:
            return Read(None, info.st_size, _over_total(info.st_size, limits))
        # One read of the whole file (no list of chunks joined into a second copy), then more only if
        # it grew; never past one byte over the limit, so a file still growing is not read forever.
        chunks = [os.read(fd, min(info.st_size, limits.max_file_bytes) + 1)]
        got = len(chunks[0])
        while got <= limits.max_file_bytes and chunks[-1]:
            chunks.append(os.read(fd, min(_READ_CHUNK, limits.max_file_bytes + 1 - got)))
            got += len(chunks[-1])
        if got > limits.max_file_bytes:
            return Read(None, None, _too_big(got, limits, growing=True))
        if got > total_left:
            return Read(None, got, _over_total(got, limits))
        return Read(chunks[0] if got == len(chunks[0]) else b"".join(chunks), got)
    except OSError as err:
        return Read(None, error=f"unreadable file ({_why(err)}): not read.")
    finally:
        os.close(fd)


def _too_big(size: int, limits: ReadLimits, *, growing: bool = False) -> str:
    what = "grew past" if growing else f"is {format_size(size)}, over"
    return (f"too large: the file {what} the limit of {format_size(limits.max_file_bytes)} per file, so it was "
            f"not read. Split it into smaller files, or {LIMIT_HINT}.")


def _over_total(size: int, limits: ReadLimits) -> str:
    return (f"not read: with this file ({format_size(size)}) the scan would hold more than "
            f"{format_size(limits.max_total_bytes)} of files in all ({TOTAL_FACTOR} times the per-file limit). "
            f"Move some files out of the folder, or {LIMIT_HINT}.")


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        what = "a named pipe (FIFO)"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    else:
        what = "not an ordinary file"
    return (f"{what}, not an ordinary file: not read (it could block or never end). "
            "Training data must be ordinary files.")


def _link_text(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "?"


def _why(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    return (err.strerror or str(err)).lower()
