"""Unpack an adapter .zip without trusting it: no entry may escape the target folder, be a symlink or
encrypted, and a zip bomb (a huge expansion ratio or total, or tens of thousands of entries) is
refused before a byte is written. The caller may unpack only the entries it will use.

The size limits are set for adapters: no adapter is anywhere near 20 GiB.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from studio.core.errors import StudioError, disk_full_as_message

MAX_ZIP_TOTAL_BYTES = 20 * 1024**3  # no adapter is this large; a zip claiming more is refused
MAX_ZIP_ENTRIES = 1000  # an adapter zip holds a handful of files; 50k entries would be 50k files to check
MAX_ZIP_RATIO = 200  # deflate rarely beats ~10x on weights; a bomb gets ~1000x
RATIO_MIN_BYTES = 1024 * 1024
ZIP_JUNK = ("__MACOSX",)  # folders zip tools add that are never the adapter


def extract_zip_safely(src: Path, dest: Path, *, max_total: int = MAX_ZIP_TOTAL_BYTES,
                       max_ratio: float = MAX_ZIP_RATIO, max_entries: int = MAX_ZIP_ENTRIES,
                       keep: Callable[[zipfile.ZipInfo], bool] | None = None) -> None:
    """Unpack `src` into the empty folder `dest`, refusing anything that could escape or explode.

    Every entry is checked; only those `keep(info)` accepts (all by default) are written, and only
    their sizes count against `max_total` and the free space.
    """
    label = src.name
    remake = "Re-create the zip from the adapter folder (for example with `lora-studio export --zip`)."
    root = dest.resolve()
    try:
        with zipfile.ZipFile(src) as archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise StudioError(f"{label} was refused: it holds {len(infos)} entries; an adapter has a "
                                  f"handful (at most {max_entries} are accepted).", hint=remake)
            infos_kept = [i for i in infos if keep is None or keep(i)]
            for info in infos:
                name = info.filename.replace("\\", "/")
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
                    raise StudioError(f"{label} was refused: entry {info.filename!r} has an absolute path, "
                                      "which would be written outside the folder the zip unpacks into.", hint=remake)
                if not (root / name).resolve().is_relative_to(root):
                    raise StudioError(f"{label} was refused: entry {info.filename!r} uses '..' to reach outside "
                                      "the folder the zip unpacks into.", hint=remake)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise StudioError(f"{label} was refused: entry {info.filename!r} is a symbolic link.",
                                      hint=remake)
                if info.flag_bits & 0x1:
                    raise StudioError(f"{label} was refused: entry {info.filename!r} is encrypted.",
                                      hint="Unpack it yourself and import the folder.")
                if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                    raise StudioError(f"{label} was refused: entry {info.filename!r} expands {info.compress_size} "
                                      f"bytes into {info.file_size} (a zip bomb?).", hint=remake)
            total = sum(info.file_size for info in infos_kept)
            if total > max_total:
                raise StudioError(f"{label} was refused: it would unpack to {total / 1024**3:.1f} GiB, more than "
                                  f"the {max_total / 1024**3:.0f} GiB an adapter may take.", hint=remake)
            free = shutil.disk_usage(dest).free
            if total > free:
                raise StudioError(f"Not enough disk space to unpack {label}: it needs {total / 1024**2:.0f} MiB, "
                                  f"{free / 1024**2:.0f} MiB are free.", hint="Free some space and try again.")
            with disk_full_as_message(dest, f"unpack {label}"):
                _write_entries(archive, infos_kept, dest, label, remake)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise StudioError(f"{label} is not a readable zip file ({err}).",
                          hint="Download or copy it again, or import the unpacked folder.") from err


def _write_entries(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dest: Path, label: str,
                   remake: str) -> None:
    for info in infos:
        target = dest / info.filename.replace("\\", "/")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as fin, target.open("wb") as fout:
            written = 0
            while chunk := fin.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:
                    raise StudioError(f"{label} was refused: entry {info.filename!r} holds more data "
                                      "than its header says.", hint=remake)
                fout.write(chunk)
