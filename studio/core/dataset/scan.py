"""Walk a folder of the user's files and read every one into samples plus a report.

Every non-hidden file appears in the report: used, or skipped with its reason (unsupported type,
binary, undecodable, empty, invalid JSON, unknown shape). The shape is decided per file by the
majority of its records; records of another shape are reported, not guessed. Exact duplicates
(whitespace-normalised) are dropped and point at the first copy. No tokenizer is needed here.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from studio.core.dataset.decode import decode_bytes
from studio.core.dataset.formats import describe_unknown, detect_shape, single_turn, to_sample
from studio.core.dataset.readers import SUPPORTED, read_records
from studio.core.dataset.report import DataReport, FileReport
from studio.core.dataset.samples import Sample, ScanResult
from studio.core.errors import StudioError

log = logging.getLogger(__name__)


def scan_folder(folder: Path | str) -> ScanResult:
    """Read every file under `folder` (recursively, hidden entries ignored) into samples and a report."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"The dataset folder {folder} does not exist or is not a folder.",
                          hint="Choose a folder that holds your .jsonl, .json, .csv, .tsv, .txt or .md files.")
    report = DataReport(folder=str(folder))
    samples: list[Sample] = []
    seen: dict[str, str] = {}  # dedup key -> source of the first copy
    files, report.hidden_ignored = _walk(folder)
    for path in files:
        rel = path.relative_to(folder).as_posix()
        file_report, file_samples = _read_file(path, rel)
        for sample in file_samples:
            key = sample.dedup_key()
            if key in seen:
                file_report.skip(_line(sample.source), f"duplicate of {seen[key]}")
                continue
            seen[key] = sample.source
            samples.append(sample)
            file_report.samples += 1
        file_report.skipped.sort(key=lambda item: item.line)
        report.files.append(file_report)
    log.info("scanned %s: %d files, %d samples", folder, len(report.files), len(samples))
    return ScanResult(samples=samples, report=report)


def _walk(folder: Path) -> tuple[list[Path], int]:
    files: list[Path] = []
    hidden = 0
    for root, dirs, names in os.walk(folder):
        hidden += sum(1 for d in dirs if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                hidden += 1
            else:
                files.append(Path(root) / name)
    files.sort(key=lambda p: p.relative_to(folder).as_posix())
    return files, hidden


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


def _read_file(path: Path, rel: str) -> tuple[FileReport, list[Sample]]:
    suffix = path.suffix.lower()
    fmt = SUPPORTED.get(suffix)
    if fmt is None:
        kind = suffix or "(no extension)"
        return FileReport(path=rel, format=suffix.lstrip(".") or "-", error=f"unsupported file type {kind}"), []
    report = FileReport(path=rel, format=fmt)
    try:
        data = path.read_bytes()
    except OSError as err:
        report.error = f"unreadable file ({err.strerror or err})"
        return report, []
    if not data.strip():
        report.error = "empty file"
        return report, []
    decoded = decode_bytes(data)
    if decoded.text is None:
        report.error = decoded.error
        return report, []
    report.encoding = decoded.encoding
    found = read_records(decoded.text, fmt)
    report.notes.extend(found.notes)
    report.skipped.extend(found.errors)
    if found.file_error:
        report.error = found.file_error
        return report, []
    if found.table_shape is not None:
        report.shape = found.table_shape
        return report, _table_samples(found.records, rel, report)
    if fmt in ("txt", "md"):
        report.shape = "prose"
        return report, [Sample(kind="text", source=f"{rel}:1", text=decoded.text, text_is_file=True)]
    return report, _json_samples(found.records, rel, report)


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
