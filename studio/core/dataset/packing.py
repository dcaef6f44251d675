"""Packing: many short samples in one row of up to seq_len tokens, with no padding and no cross-talk.

Samples are bin-packed greedily, first-fit-decreasing. A packed row carries `position_ids` that
restart at 0 for every sample and no `attention_mask`: transformers (masking_utils.
find_packed_sequence_indices) then builds a block-diagonal causal mask for sdpa/eager attention, and
flash-attention reads the same position_ids as varlen boundaries. The first label of every sample is
-100, so no loss is taken on predicting one sample from the end of the previous one.

The model must run with `use_cache=False` (set `model.config.use_cache = False` for training):
transformers only looks for packed sequences when there is no KV cache, and with the config's default
`use_cache=True` a forward pass creates an empty cache and every sample attends to the ones before it.

Batches of several rows are padded to the longest row (pad id, labels -100; the padding gets its own
position run so it forms a separate "sequence"). torch is imported only inside the collator call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.core.dataset.samples import IGNORE_INDEX, TokenizedSample

if TYPE_CHECKING:
    import torch


def pack_samples(samples: list[TokenizedSample], seq_len: int) -> list[list[TokenizedSample]]:
    """Group samples into rows of at most seq_len tokens, first-fit-decreasing (deterministic)."""
    too_long = [s for s in samples if len(s) > seq_len]
    if too_long:
        raise ValueError(f"{len(too_long)} samples are longer than seq_len={seq_len} (first: {too_long[0].source},"
                         f" {len(too_long[0])} tokens); truncate or drop them before packing")
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))  # stable: ties keep input order
    tree = _FirstFit(len(samples), seq_len)
    rows: list[list[TokenizedSample]] = []
    for index in order:
        sample = samples[index]
        if not len(sample):
            continue
        row = tree.place(len(sample))
        if row == len(rows):
            rows.append([])
        rows[row].append(sample)
    return rows


class _FirstFit:
    """A max segment tree over the bins' free space: the leftmost bin that fits, in O(log n)."""

    def __init__(self, capacity: int, seq_len: int) -> None:
        self.size = 1
        while self.size < max(1, capacity):
            self.size *= 2
        self.free = [0] * (2 * self.size)
        for leaf in range(self.size):
            self.free[self.size + leaf] = seq_len  # unopened bins are empty bins
        for node in range(self.size - 1, 0, -1):
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])

    def place(self, length: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.free[2 * node] >= length else 2 * node + 1
        leaf = node - self.size
        self.free[node] -= length
        node //= 2
        while node:
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])
            node //= 2
        return leaf


def row_from_samples(samples: list[TokenizedSample]) -> dict[str, list[int]]:
    """One packed row: concatenated ids and labels, position_ids restarting at 0 for each sample."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for sample in samples:
        input_ids.extend(sample.input_ids)
        labels.append(IGNORE_INDEX)
        labels.extend(sample.labels[1:])
        position_ids.extend(range(len(sample)))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def packed_rows(samples: list[TokenizedSample], seq_len: int) -> list[dict[str, list[int]]]:
    """[{"input_ids", "labels", "position_ids"}], one per packed row, ready for PackedCollator."""
    return [row_from_samples(row) for row in pack_samples(samples, seq_len)]


class PackedCollator:
    """data_collator for a DataLoader / HF Trainer over `packed_rows` output.

    Returns input_ids, labels and position_ids as torch.long tensors and, on purpose, no
    attention_mask (an attention_mask would switch transformers' packed-sequence detection off).
    """

    def __init__(self, pad_token_id: int, seq_len: int) -> None:
        if pad_token_id is None:
            raise ValueError("PackedCollator needs a pad token id (the tokenizer's pad, or its eos)")
        self.pad_token_id = int(pad_token_id)
        self.seq_len = seq_len

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if not rows:
            raise ValueError("PackedCollator got an empty batch")
        ids, labels, positions = [], [], []
        for row in rows:
            row_ids = _as_list(row["input_ids"])
            ids.append(row_ids)
            labels.append(_as_list(row["labels"]) if row.get("labels") is not None else list(row_ids))
            positions.append(_as_list(row["position_ids"]) if row.get("position_ids") is not None
                             else list(range(len(row_ids))))
            if not len(row_ids) == len(labels[-1]) == len(positions[-1]):
                raise ValueError("input_ids, labels and position_ids of a row differ in length")
        width = max(len(r) for r in ids)
        if width > self.seq_len:
            raise ValueError(f"a packed row has {width} tokens, more than seq_len={self.seq_len}")
        for row_ids, row_labels, row_positions in zip(ids, labels, positions, strict=True):
            pad = width - len(row_ids)
            row_ids.extend([self.pad_token_id] * pad)
            row_labels.extend([IGNORE_INDEX] * pad)
            row_positions.extend(range(pad))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }


def _as_list(value: Any) -> list[int]:
    return value.tolist() if hasattr(value, "tolist") else list(value)
