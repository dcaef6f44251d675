"""The dataset report the user reads before training: every file, every skipped line, the totals.

Plain dataclasses with `to_dict()` (for `--json`) and `to_text()` (a human table). The report only
records what the scanner and the tokenizer step tell it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SkippedItem:
    """One line, row or record that did not become a sample, and why."""

    line: int  # 1-based line (JSONL/CSV/TXT) or the line where a JSON record starts
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class FileReport:
    """What became of one file. `error` set means the whole file was skipped."""

    path: str  # relative to the scanned folder, with forward slashes (a folder's ends with "/")
    format: str  # "jsonl", "json", "csv", "tsv", "txt", "md", the extension of an unsupported file, "folder"
    kind: str = "file"  # "file", or "folder" for a folder (or a link to one) that was not read
    size: int | None = None  # bytes, when the file was opened
    shape: str | None = None  # "messages", "sharegpt", "alpaca", "prompt_completion", "qa", "text", "prose"
    encoding: str | None = None  # "utf-8", or the detected legacy encoding ("cp1252", ...)
    samples: int = 0  # records taken as samples (after removing duplicates)
    skipped: list[SkippedItem] = field(default_factory=list)
    error: str | None = None  # whole-file reason: "unsupported file type .png", "binary file", ...
    notes: list[str] = field(default_factory=list)
    # Filled in by prepare_dataset (None before tokenization):
    sequences: int | None = None  # tokenized training sequences (a long document gives several windows)
    tokens: int | None = None  # tokens in the kept sequences (after truncation)
    longest: int | None = None  # longest sample in tokens, before truncation
    over_seq_len: int = 0  # samples longer than the sequence length (truncated or dropped)
    truncated: int = 0

    def skip(self, line: int, reason: str) -> None:
        self.skipped.append(SkippedItem(line, reason))

    @property
    def used(self) -> bool:
        return self.error is None and self.samples > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "kind": self.kind, "format": self.format, "size": self.size,
            "shape": self.shape, "encoding": self.encoding,
            "used": self.used, "samples": self.samples, "error": self.error, "notes": list(self.notes),
            "skipped": [item.to_dict() for item in self.skipped],
            "sequences": self.sequences, "tokens": self.tokens, "longest": self.longest,
            "over_seq_len": self.over_seq_len, "truncated": self.truncated,
        }


@dataclass
class DataReport:
    """The whole folder: one FileReport per (non-hidden) file or folder not read, warnings, and totals."""

    folder: str
    files: list[FileReport] = field(default_factory=list)
    hidden_ignored: int = 0  # hidden files and folders (names starting with ".") are not read
    max_file_bytes: int | None = None  # the scan's limits (files over them are reported, not read)
    max_total_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)
    # Filled in by prepare_dataset:
    tokenized: bool = False
    seq_len: int | None = None
    long_samples: str | None = None  # "truncate" | "drop"
    train_samples: int | None = None
    validation_samples: int | None = None

    def file(self, path: str) -> FileReport:
        for report in self.files:
            if report.path == path:
                return report
        raise KeyError(path)

    @property
    def total_samples(self) -> int:
        return sum(f.samples for f in self.files)

    @property
    def total_skipped(self) -> int:
        return sum(len(f.skipped) for f in self.files)

    def totals(self) -> dict[str, Any]:
        files = [f for f in self.files if f.kind == "file"]
        used = [f for f in files if f.used]
        totals: dict[str, Any] = {
            "files": len(files), "files_used": len(used), "files_skipped": len(files) - len(used),
            "folders_not_read": len(self.files) - len(files),
            "samples": self.total_samples, "skipped_lines": self.total_skipped,
        }
        if self.tokenized:
            longest = [f.longest for f in self.files if f.longest is not None]
            totals.update({
                "sequences": sum(f.sequences or 0 for f in self.files),
                "tokens": sum(f.tokens or 0 for f in self.files),
                "longest_sample_tokens": max(longest, default=0),
                "over_seq_len": sum(f.over_seq_len for f in self.files),
                "truncated": sum(f.truncated for f in self.files),
                "train_samples": self.train_samples, "validation_samples": self.validation_samples,
            })
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder, "seq_len": self.seq_len, "long_samples": self.long_samples,
            "hidden_ignored": self.hidden_ignored, "warnings": list(self.warnings),
            "limits": {"max_file_bytes": self.max_file_bytes, "max_total_bytes": self.max_total_bytes},
            "totals": self.totals(), "files": [f.to_dict() for f in self.files],
        }

    def to_text(self) -> str:
        header = ["FILE", "FORMAT", "SHAPE", "SAMPLES", "SKIPPED"]
        if self.tokenized:
            header += ["TOKENS", "LONGEST"]
        rows = [header]
        details: dict[int, list[str]] = {}
        for index, f in enumerate(self.files, start=1):
            row = [f.path, f.format, f.shape or "-", str(f.samples), str(len(f.skipped))]
            if self.tokenized:
                row += [_num(f.tokens), _num(f.longest)]
            rows.append(row)
            lines = [f"skipped: {f.error}"] if f.error else []
            lines += [f"encoding: {f.encoding} (not UTF-8)"] if f.encoding not in (None, "utf-8") else []
            lines += f.notes
            lines += [f"line {item.line}: {item.reason}" for item in f.skipped]
            if f.over_seq_len:
                what = f"{f.truncated} truncated" if f.truncated else "dropped"
                lines.append(f"{f.over_seq_len} longer than {self.seq_len} tokens ({what})")
            details[index] = lines
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        numeric = {i for i, name in enumerate(header) if i >= 3}
        out = [f"Dataset report for {self.folder}"]
        for index, row in enumerate(rows):
            cells = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)]
            out.append("  " + "  ".join(cells).rstrip())
            out.extend(f"      {line}" for line in details.get(index, []))
        t = self.totals()
        summary = (f"Totals: {t['files']} files ({t['files_used']} used, {t['files_skipped']} skipped), "
                   f"{t['samples']} samples, {t['skipped_lines']} lines skipped")
        if t["folders_not_read"]:
            summary += f"; {t['folders_not_read']} folder(s) not read"
        out.append(summary)
        if self.tokenized:
            policy = "truncated" if self.long_samples == "truncate" else "dropped"
            out.append(f"Tokens: {t['tokens']:,} in {t['sequences']} sequences; longest sample "
                       f"{t['longest_sample_tokens']:,} tokens; {t['over_seq_len']} longer than "
                       f"{self.seq_len} ({policy})")
            out.append(f"Split: {t['train_samples']} train, {t['validation_samples']} validation")
        if self.hidden_ignored:
            out.append(f"Hidden files and folders ignored: {self.hidden_ignored}")
        out.extend(f"Warning: {w}" for w in self.warnings)
        return "\n".join(out)


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
