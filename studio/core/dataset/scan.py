"""Read every file of a folder of the user's files into samples plus a report.

Every non-hidden entry appears in the report: used, or skipped with its reason (not an ordinary
file, a link out of the folder, too large, unsupported type, binary, undecodable, empty, invalid
JSON, unknown shape; which entries are read at all is files.py's walk). The shape is decided per
file by the majority of its records; records of another shape are reported, not guessed. Exact
duplicates (whitespace-normalised) are dropped and point at the first copy. A file that breaks a
reader in a way nobody foresaw is skipped with the error, never the whole scan. No tokenizer is
needed here.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from studio.core.dataset.decode import decode_bytes
from studio.core.dataset.files import DEFAULT_MAX_FILE_MB, FoundFile, ReadLimits, read_limited, walk_folder
from studio.core.dataset.formats import describe_unknown, detect_shape, invalid_text, single_turn, to_sample
from studio.core.dataset.readers import SUPPORTED, read_records
from studio.core.dataset.report import DataReport, FileReport
from studio.core.dataset.samples import Sample, ScanResult
from studio.core.errors import StudioError

log = logging.getLogger(__name__)


def scan_folder(folder: Path | str, *, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> ScanResult:
    """Read every file under `folder` (recursively, hidden entries ignored) into samples and a report.

    A file over `max_file_mb` megabytes is reported and not read; all files together are read up
    to TOTAL_FACTOR times that (later files are reported), so a scan's memory stays bounded.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"The dataset folder {folder} does not exist or is not a folder.",
                          hint="Choose a folder that holds your .jsonl, .json, .csv, .tsv, .txt or .md files.")
    limits = ReadLimits.from_mb(max_file_mb)
    report = DataReport(folder=str(folder), max_file_bytes=limits.max_file_bytes,
                        max_total_bytes=limits.max_total_bytes)
    samples: list[Sample] = []
    seen: dict[bytes, str] = {}  # dedup key -> source of the first copy
    walk = walk_folder(folder)
    report.hidden_ignored = walk.hidden
    report.files.extend(walk.not_read)
    total_left = limits.max_total_bytes
    for found in walk.files:
        file_report, file_samples = _read_contained(found, limits, total_left)
        total_left -= file_report.size if file_report.size is not None and file_report.error is None else 0
        for sample in file_samples:
            problem = invalid_text(sample)
            if problem:
                file_report.skip(_line(sample.source), problem)
                continue
            key = sample.dedup_key()
            if key in seen:
                file_report.skip(_line(sample.source), f"duplicate of {seen[key]}")
                continue
            seen[key] = sample.source
            samples.append(sample)
            file_report.samples += 1
        file_report.skipped.sort(key=lambda item: item.line)
        report.files.append(file_report)
    report.files.sort(key=lambda f: f.path)
    log.info("scanned %s: %d files, %d samples", folder, len(report.files), len(samples))
    return ScanResult(samples=samples, report=report)


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


def _read_contained(found: FoundFile, limits: ReadLimits, total_left: int) -> tuple[FileReport, list[Sample]]:
    """One file read; whatever goes wrong inside it is that file's error, not the scan's."""
    try:
        report, samples = _read_file(found, limits, total_left)
    except RecursionError:
        report, samples = _failed(found, "nested too deeply to read (more than about 1,000 levels of "
                                         "brackets): not read. Flatten the data or remove the file."), []
    except MemoryError:
        report, samples = _failed(found, "too large to hold in memory: not read. Split it into smaller files."), []
    except Exception as err:  # a reader bug or a library's surprise: report it, keep scanning
        log.exception("reading %s failed", found.path)
        report, samples = _failed(found, f"could not be read ({type(err).__name__}: {str(err)[:200]}). "
                                         "Fix or remove the file."), []
    if found.via:
        report.notes.append(f"read through the link {found.via}")
    return report, samples


def _failed(found: FoundFile, reason: str) -> FileReport:
    suffix = Path(found.rel).suffix.lower()
    return FileReport(path=found.rel, format=SUPPORTED.get(suffix, suffix.lstrip(".") or "-"), error=reason)


def _read_file(found: FoundFile, limits: ReadLimits, total_left: int) -> tuple[FileReport, list[Sample]]:
    rel = found.rel
    suffix = Path(rel).suffix.lower()
    fmt = SUPPORTED.get(suffix)
    if fmt is None:
        kind = suffix or "(no extension)"
        return FileReport(path=rel, format=suffix.lstrip(".") or "-", error=f"unsupported file type {kind}"), []
    report = FileReport(path=rel, format=fmt)
    read = read_limited(found.path, limits, total_left)
    report.size = read.size
    if read.data is None:
        report.error = read.error
        return report, []
    if not read.data or read.data.isspace():  # (not .strip(): that copies the whole file)
        report.error = "empty file"
        return report, []
    decoded = decode_bytes(read.data)
    del read  # the bytes go as soon as there is text: a scan holds one copy of a file, not two
    if decoded.text is None:
        report.error = decoded.error
        return report, []
    report.encoding = decoded.encoding
    parsed = read_records(decoded.text, fmt)
    report.notes.extend(parsed.notes)
    report.skipped.extend(parsed.errors)
    if parsed.file_error:
        report.error = parsed.file_error
        return report, []
    if parsed.table_shape is not None:
        report.shape = parsed.table_shape
        return report, _table_samples(parsed.records, rel, report)
    if fmt in ("txt", "md"):
        report.shape = "prose"
        return report, [Sample(kind="text", source=f"{rel}:1", text=decoded.text, text_is_file=True)]
    return report, _json_samples(parsed.records, rel, report)


def _json_samples(records: list, rel: str, report: FileReport) -> list[Sample]:
    if not records:
        report.error = "no valid record (see the skipped lines)"
        return []
    shapes = [(line, record, detect_shape(record)) for line, record in records]
    counts = Counter(shape for _, _, shape in shapes if shape is not None)
    if not counts:
        report.shape = None
        for line, record, _ in shapes:
            report.skip(line, describe_unknown(record))
        report.error = "no record of a known shape"
        return []
    majority = counts.most_common(1)[0][0]
    report.shape = majority
    samples: list[Sample] = []
    for line, record, shape in shapes:
        if shape is None:
            report.skip(line, describe_unknown(record))
        elif shape != majority:
            report.skip(line, f"record of shape '{shape}' in a file of shape '{majority}'")
        else:
            sample = to_sample(shape, record, f"{rel}:{line}")
            if isinstance(sample, str):
                report.skip(line, sample)
            else:
                samples.append(sample)
    return samples


def _table_samples(records: list, rel: str, report: FileReport) -> list[Sample]:
    samples: list[Sample] = []
    for line, row in records:
        sample = single_turn(row["user"], row["answer"], f"{rel}:{line}", extra=row.get("input"),
                             system=row.get("system"), what=report.shape.split("/")[0])
        if isinstance(sample, str):
            report.skip(line, sample)
        else:
            samples.append(sample)
    return samples
