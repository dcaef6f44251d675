"""From a folder and a tokenizer to train/validation samples and the full report.

Scans the folder, tokenizes every sample (chat template or prose windows), applies the caller's
policy for samples longer than the sequence length ("truncate" or "drop"), fills the report's token
statistics, and splits train/validation with a seeded shuffle (windows of one document stay on the
same side). It does not pack: see packing.py.
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

from studio.core.dataset.files import DEFAULT_MAX_FILE_MB
from studio.core.dataset.report import DataReport, FileReport
from studio.core.dataset.samples import IGNORE_INDEX, PreparedDataset, Sample, ScanResult, TokenizedSample
from studio.core.dataset.scan import scan_folder
from studio.core.dataset.tokenize import ChatRenderer, cut_conversation
from studio.core.errors import StudioError

log = logging.getLogger(__name__)

LONG_SAMPLE_POLICIES = ("truncate", "drop")


class NoSamplesError(StudioError):
    """The folder gave nothing to train on; `report` says why, file by file."""

    def __init__(self, message: str, report: DataReport, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.report = report


def prepare_dataset(folder: Path | str, tokenizer: Any, *, seq_len: int = 1024, val_fraction: float = 0.1,
                    seed: int = 42, long_samples: str = "truncate", scan: ScanResult | None = None,
                    max_file_mb: float = DEFAULT_MAX_FILE_MB) -> PreparedDataset:
    """Tokenize every sample in `folder` for `tokenizer`, split it, and report on it.

    `scan` may pass a `scan_folder` result already shown to the user, so the folder is not read twice;
    otherwise the folder is scanned with `max_file_mb` (see scan_folder). A sample the tokenizer
    fails on is skipped and reported. Raises NoSamplesError (a StudioError) when nothing is left to
    train on.
    """
    if long_samples not in LONG_SAMPLE_POLICIES:
        raise ValueError(f"long_samples must be one of {LONG_SAMPLE_POLICIES}, not {long_samples!r}")
    if seq_len < 8:
        raise ValueError(f"seq_len must be at least 8 tokens, not {seq_len}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    scan = scan if scan is not None else scan_folder(folder, max_file_mb=max_file_mb)
    report = copy.deepcopy(scan.report)  # the scan's own report stays as it was shown
    renderer = ChatRenderer(tokenizer)
    if renderer.warning and renderer.warning not in report.warnings:
        report.warnings.append(renderer.warning)
    by_path = {f.path: f for f in report.files}
    for f in report.files:
        if f.error is None:
            f.sequences, f.tokens, f.longest, f.over_seq_len, f.truncated = 0, 0, None, 0, 0
    groups: list[list[TokenizedSample]] = []
    for sample in scan.samples:
        path, line = sample.source.rsplit(":", 1)
        file_report = by_path[path]
        try:
            kept = _tokenize(renderer, sample, seq_len, long_samples, file_report)
        except Exception as err:  # one sample the tokenizer chokes on must not end the run
            log.exception("tokenizing %s failed", sample.source)
            kept = f"could not be tokenized ({type(err).__name__}: {str(err)[:160]}); fix or remove this record"
        if isinstance(kept, str):
            file_report.skip(int(line), kept)
            file_report.samples -= 1
            continue
        if not kept:
            file_report.skip(int(line), "no tokens")
            file_report.samples -= 1
            continue
        file_report.sequences = (file_report.sequences or 0) + len(kept)
        file_report.tokens = (file_report.tokens or 0) + sum(len(s) for s in kept)
        groups.append(kept)
    for f in report.files:
        f.skipped.sort(key=lambda item: item.line)
    train, validation = split_groups(groups, val_fraction, seed)
    report.tokenized, report.seq_len, report.long_samples = True, seq_len, long_samples
    report.train_samples, report.validation_samples = len(train), len(validation)
    if not train:
        raise NoSamplesError(f"No training samples could be made from {report.folder}.", report,
                             hint="Check the dataset report: every file and line that was skipped says why.")
    log.info("prepared %d train and %d validation sequences (seq_len %d)", len(train), len(validation), seq_len)
    return PreparedDataset(train=train, validation=validation, report=report)


def _tokenize(renderer: ChatRenderer, sample: Sample, seq_len: int, long_samples: str,
              file_report: FileReport) -> list[TokenizedSample] | str:
    if sample.kind == "chat":
        cut = cut_conversation(sample, seq_len)
        if cut is not None and not any(m.role == "assistant" for m in cut.messages):
            file_report.over_seq_len += 1
            if long_samples == "drop":
                return f"longer than the sequence length (more than {seq_len} tokens), dropped"
            return f"longer than the sequence length (more than {seq_len} tokens) with no answer before the cut"
        rendered = renderer.render_chat(cut or sample)
        if isinstance(rendered, str):
            return rendered
        return _apply_long_policy(rendered, seq_len, long_samples, file_report, cut=cut is not None)
    kept = renderer.render_text(sample, seq_len)
    for window in kept:
        file_report.longest = max(file_report.longest or 0, len(window))
    return kept


def _apply_long_policy(sample: TokenizedSample, seq_len: int, policy: str, file_report: FileReport, *,
                       cut: bool = False) -> list[TokenizedSample] | str:
    """`cut`: the conversation was cut before rendering (cut_conversation), so it is longer still."""
    length = len(sample)
    file_report.longest = max(file_report.longest or 0, length)
    if length <= seq_len and not cut:
        return [sample]
    file_report.over_seq_len += 1
    shown = f"{length}+" if cut else str(length)
    if policy == "drop":
        return f"longer than the sequence length ({shown} > {seq_len} tokens), dropped"
    labels = sample.labels[:seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        return f"longer than the sequence length ({shown} > {seq_len} tokens) with no answer before the cut"
    file_report.truncated += 1
    return [TokenizedSample(input_ids=sample.input_ids[:seq_len], labels=labels, source=sample.source)]


def validation_count(n: int, val_fraction: float) -> int:
    """At least one validation sample from 5 samples up (when val_fraction > 0), none below."""
    if val_fraction <= 0 or n < 5:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


def split_groups(groups: list[list[TokenizedSample]], val_fraction: float,
                 seed: int) -> tuple[list[TokenizedSample], list[TokenizedSample]]:
    """Seeded train/validation split that keeps each group (a document's windows) on one side."""
    if len(groups) == 1:  # a single long document: split its windows instead
        groups = [[s] for s in groups[0]]
    total = sum(len(g) for g in groups)
    wanted = validation_count(total, val_fraction)
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    chosen: set[int] = set()
    count = 0
    for index in order:
        if count >= wanted:
            break
        if count + len(groups[index]) <= wanted:
            chosen.add(index)
            count += len(groups[index])
    if wanted and not chosen:  # every group is bigger than the validation share: take the smallest
        smallest = min(order, key=lambda i: len(groups[i]))
        if len(groups[smallest]) < total:
            chosen.add(smallest)
    train = [s for i, g in enumerate(groups) if i not in chosen for s in g]
    validation = [s for i, g in enumerate(groups) if i in chosen for s in g]
    return train, validation
