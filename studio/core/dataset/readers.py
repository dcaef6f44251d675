"""Readers: the decoded text of one file to numbered records (or numbered errors).

JSONL gives one record per line; a .json file holds a list of records or one record (or, as people
do, JSON Lines under a .json name); CSV/TSV rows become records through their header; .txt/.md is
one prose document. Line numbers are 1-based and point where the record starts. A record that
Python's JSON reader cannot hold (nested thousands deep, an integer of more than 4,300 digits) is
an invalid record with its reason, like a syntax error. Readers do not decide shapes or build
samples: see formats.py and scan.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from studio.core.dataset.formats import EXPECTED_COLUMNS, csv_columns
from studio.core.dataset.report import SkippedItem

TEXT_FORMATS = {".txt": "txt", ".md": "md", ".markdown": "md"}
JSON_FORMATS = {".jsonl": "jsonl", ".json": "json"}
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv"}
SUPPORTED = {**TEXT_FORMATS, **JSON_FORMATS, **TABLE_FORMATS}


@dataclass
class Records:
    """What a reader found in one file."""

    records: list[tuple[int, Any]] = field(default_factory=list)  # (line, JSON value or CSV row dict)
    errors: list[SkippedItem] = field(default_factory=list)
    file_error: str | None = None  # the whole file is unusable
    table_shape: str | None = None  # CSV/TSV: the shape named by the header, e.g. "question/answer"
    notes: list[str] = field(default_factory=list)


def read_records(text: str, fmt: str) -> Records:
    if not text or text.isspace():
        return Records(file_error="empty file")
    if fmt == "jsonl":
        return _read_jsonl(text)
    if fmt == "json":
        return _read_json(text)
    if fmt in ("csv", "tsv"):
        return _read_table(text, "\t" if fmt == "tsv" else ",")
    if fmt in ("txt", "md"):
        return Records(records=[(1, {"text": text})])
    raise ValueError(f"no reader for {fmt!r}")


# Python refuses to read integers longer than this (CVE-2020-10735); 3.10 before 3.10.7 has no limit
_MAX_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
_LONG_INTEGER = re.compile(rf"\d{{{_MAX_DIGITS + 1},}}")


def _loads(text: str) -> Any:
    """json.loads, with the two ways valid-looking JSON still fails turned into JSONDecodeError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (more than about 1,000 levels of [ ] or { })",
                                   text, 0) from None
    except ValueError as err:  # "Exceeds the limit (4300 digits) for integer string conversion"
        match = _LONG_INTEGER.search(text)
        msg = f"a number with more than {_MAX_DIGITS:,} digits" if match else str(err)
        raise json.JSONDecodeError(msg, text, match.start() if match else 0) from None


def _read_jsonl(text: str) -> Records:
    found = Records()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.records.append((number, _loads(line)))
        except json.JSONDecodeError as err:
            found.errors.append(SkippedItem(number, f"invalid JSON at line {number}: {err.msg} (column {err.colno})"))
    if not found.records and not found.errors:
        found.file_error = "empty file"
    return found


def _read_json(text: str) -> Records:
    try:
        value = _loads(text)
    except json.JSONDecodeError as err:
        if _looks_like_json_lines(text):
            found = _read_jsonl(text)
            found.notes.append("read as JSON Lines (one record per line)")
            return found
        return Records(file_error=f"invalid JSON at line {err.lineno}: {err.msg} (column {err.colno})")
    if isinstance(value, dict):
        return Records(records=[(_line_of(text, len(text) - len(text.lstrip())), value)])
    if isinstance(value, list):
        if not value:
            return Records(file_error="empty file (an empty JSON list)")
        return Records(records=list(_array_items(text)))
    return Records(file_error=f"unknown shape (the file holds a JSON {type(value).__name__}, "
                              "expected a list of records or one record)")


def _looks_like_json_lines(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(_loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _array_items(text: str):
    """(line, item) for each item of a top-level JSON array already known to be valid."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # past "["
    while True:
        pos = _skip_ws(text, pos)
        if text[pos] == "]":
            return
        item, end = decoder.raw_decode(text, pos)
        yield _line_of(text, pos), item
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos += 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _read_table(text: str, delimiter: str) -> Records:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long answers are fine (default 128 KiB)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    found = Records()
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as err:
        return Records(file_error=f"unreadable header ({err})" if isinstance(err, csv.Error) else "empty file")
    mapped = csv_columns(header)
    if mapped is None:
        shown = ", ".join(h.strip() for h in header) or "none"
        return Records(file_error=f"unknown shape: columns {shown} (expected {EXPECTED_COLUMNS})")
    found.table_shape, columns = mapped
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            found.errors.append(SkippedItem(line, f"unreadable row ({err})"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            found.errors.append(SkippedItem(start, f"row has {len(row)} fields, expected {len(header)}"))
            continue
        found.records.append((start, {key: row[index] for key, index in columns.items()}))
    if not found.records and not found.errors:
        found.file_error = "empty file (a header and no rows)"
    return found
