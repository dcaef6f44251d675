"""Train-from-folder data: read a folder of the user's files into tokenized, packed training samples.

The public API the training engine and the front doors use:

- `scan_folder(folder, max_file_mb=...)`: every file read (no tokenizer needed) into parsed samples and a
  `DataReport` that accounts for every entry (files over the size limit, pipes, links out of the folder
  and unreadable folders are listed with the reason, not read).
- `prepare_dataset(folder, tokenizer, ...)`: tokenized train/validation samples plus the full report
  (token counts, longest sample, samples over the sequence length).
- `pack_samples` / `packed_rows` / `PackedCollator`: padding-free packing with per-sample position_ids.
  Train with `model.config.use_cache = False`, or transformers ignores the packing boundaries.

Modules: files (the folder walk, link policy and size limits), decode (bytes to text), readers (text
to numbered records), formats (record shapes), scan (files to samples), tokenize (chat template and labels), prepare (policy, stats, split),
packing (rows and collator), report (what the user sees). Nothing here imports torch at import time.
"""

from __future__ import annotations

from studio.core.dataset.files import DEFAULT_MAX_FILE_MB
from studio.core.dataset.packing import PackedCollator, pack_samples, packed_rows, row_from_samples
from studio.core.dataset.prepare import LONG_SAMPLE_POLICIES, NoSamplesError, prepare_dataset, split_groups
from studio.core.dataset.report import DataReport, FileReport, SkippedItem
from studio.core.dataset.samples import (
    IGNORE_INDEX,
    Message,
    PreparedDataset,
    Sample,
    ScanResult,
    TokenizedSample,
)
from studio.core.dataset.scan import scan_folder

__all__ = [
    "DEFAULT_MAX_FILE_MB", "IGNORE_INDEX", "LONG_SAMPLE_POLICIES", "DataReport", "FileReport", "Message",
    "NoSamplesError", "PackedCollator", "PreparedDataset", "Sample", "ScanResult", "SkippedItem", "TokenizedSample",
    "pack_samples", "packed_rows", "prepare_dataset", "row_from_samples", "scan_folder", "split_groups",
]
