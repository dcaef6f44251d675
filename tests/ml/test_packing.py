"""Packed rows train exactly like separate samples: per-sample losses match, with sdpa and eager attention.

transformers 5 (masking_utils.find_packed_sequence_indices) turns position_ids that restart at 0 into
a block-diagonal causal mask when there is no attention_mask and no KV cache. These tests run the tiny
random Llama on rows built by `packed_rows` + `PackedCollator` and compare every sample's summed token
loss with the same sample run alone, and show the losses differ without the position reset (or with
the model's default use_cache=True), so the tests can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from studio.core.dataset import IGNORE_INDEX, PackedCollator, pack_samples, packed_rows, prepare_dataset  # noqa: E402

ATTENTION = ["sdpa", "eager"]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


@pytest.fixture(scope="module")
def samples(tiny_base_dir: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("packing-data")
    chats = [
        [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")],
        [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi."), ("user", "How are you today?"),
         ("assistant", "I am fine, thank you.")],
        [("user", "The quick brown fox?"), ("assistant", "It jumps over the lazy dog.")],
    ]
    lines = [json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) for chat in chats]
    (folder / "chat.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "note.txt").write_text("A question and an answer.\n\nHello, how are you today? I am fine.\n")
    prepared = prepare_dataset(folder, tokenizer, seq_len=128, val_fraction=0)
    assert len(prepared.train) == 4 and prepared.report.totals()["over_seq_len"] == 0
    return prepared.train


@pytest.fixture(scope="module", params=ATTENTION)
def model(request, tiny_base_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, attn_implementation=request.param)
    model.config.use_cache = False  # required for packing: see studio/core/dataset/packing.py
    model.eval()
    return model


def token_losses(logits, labels):
    """Loss of each position's prediction of the next label (0 where the label is -100)."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX,
                                             reduction="none")


def alone_losses(model, samples) -> list:
    out = []
    with torch.no_grad():
        for sample in samples:
            logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
            out.append(token_losses(logits, torch.tensor(sample.labels)).sum())
    return out


def packed_losses(model, batch, rows_of_samples, **overrides) -> list:
    inputs = {**batch, **overrides}
    with torch.no_grad():
        logits = model(**inputs).logits
    out = []
    for row, members in enumerate(rows_of_samples):
        losses = token_losses(logits[row], batch["labels"][row])
        start = 0
        for sample in members:
            end = start + len(sample)
            out.append(losses[start:end - 1].sum())  # position end-1 predicts the next sample's first (-100)
            start = end
    return out


def test_one_packed_row_gives_each_sample_its_own_loss(model, samples, tokenizer):
    total = sum(len(s) for s in samples)
    rows = pack_samples(samples, total)
    assert len(rows) == 1
    batch = PackedCollator(tokenizer.pad_token_id, total)(packed_rows(samples, total))
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].shape == (1, total)  # no padding at all
    assert tokenizer.pad_token_id not in batch["input_ids"][0].tolist()
    order = rows[0]
    packed = packed_losses(model, batch, rows)
    alone = alone_losses(model, order)
    torch.testing.assert_close(torch.stack(packed), torch.stack(alone), atol=1e-5, rtol=1e-5)

    # The model's own loss over the packed batch is the mean over exactly the trained tokens.
    with torch.no_grad():
        hf_loss = model(**batch).loss
    trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert trained == sum(s.trained_tokens for s in samples) - sum(1 for s in samples if s.labels[0] != IGNORE_INDEX)
    torch.testing.assert_close(hf_loss, torch.stack(alone).sum() / trained, atol=1e-5, rtol=1e-5)

    # Without the position reset, every sample after the first sees its neighbours: losses differ.
    continuous = torch.arange(total).unsqueeze(0)
    leaky = packed_losses(model, batch, rows, position_ids=continuous)
    assert (torch.stack(leaky) - torch.stack(alone)).abs()[1:].min() > 1e-3


def test_the_kv_cache_default_disables_packed_masks(model, samples, tokenizer):
    total = sum(len(s) for s in samples)
    rows = pack_samples(samples, total)
    batch = PackedCollator(tokenizer.pad_token_id, total)(packed_rows(samples, total))
    alone = torch.stack(alone_losses(model, rows[0]))
    with_cache = torch.stack(packed_losses(model, batch, rows, use_cache=True))
    assert (with_cache - alone).abs()[1:].min() > 1e-3


def test_padded_batch_of_packed_rows(model, samples, tokenizer):
    seq_len = max(len(s) for s in samples) + 8
    rows = pack_samples(samples, seq_len)
    assert len(rows) >= 2 and len({sum(len(s) for s in row) for row in rows}) > 1
    batch = PackedCollator(tokenizer.pad_token_id, seq_len)(packed_rows(samples, seq_len))
    pads = batch["input_ids"] == tokenizer.pad_token_id
    assert pads.any() and (batch["labels"][pads] == IGNORE_INDEX).all()
    packed = packed_losses(model, batch, rows)
    alone = alone_losses(model, [s for row in rows for s in row])
    torch.testing.assert_close(torch.stack(packed), torch.stack(alone), atol=1e-5, rtol=1e-5)
