"""The label-only loss equals transformers' causal-LM loss, value and LoRA gradients, and stays out of
the way of model families it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studio.ml.train.label_only_loss import IGNORE_INDEX, decoder_and_head, label_only_loss


@pytest.fixture
def lora_model(tiny_base_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(base, config).train()


def chat_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows, the second padded; the first half of each sample is a prompt (no labels)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    labels = ids.clone()
    labels[:, :10] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, 31])
def test_loss_and_gradients_equal_the_models_own(lora_model, num_items):
    batch = chat_batch(lora_model.config.vocab_size)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    reference = lora_model(**batch, **extra).loss
    reference.backward()
    expected = lora_grads(lora_model)
    lora_model.zero_grad()

    ours = label_only_loss(lora_model, batch, extra.get("num_items_in_batch"))
    ours.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    got = lora_grads(lora_model)
    assert set(got) == set(expected) and len(got) == 12  # 2 layers x 3 modules x (A, B)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_model_families_with_changed_logits_are_left_to_the_model(lora_model):
    assert decoder_and_head(lora_model) is not None
    base = lora_model.get_base_model()
    base.config.final_logit_softcapping = 30.0  # Gemma 2 style: the head's output is transformed
    assert decoder_and_head(lora_model) is None
    assert label_only_loss(lora_model, chat_batch(base.config.vocab_size)) is None
    base.config.final_logit_softcapping = None
    base.config.model_type = "gpt2"
    assert decoder_and_head(lora_model) is None
