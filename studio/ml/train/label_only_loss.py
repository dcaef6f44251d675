"""Causal-LM training loss computed only at the positions that carry a label.

A chat sample trains on the assistant's tokens only: the system prompt, the user's turn and the
template's markup are labelled -100. transformers' causal-LM forward still projects every position
through the LM head, [tokens x vocabulary] logits in float32 for the loss, and throws most of them
away. Here the decoder runs as usual, the hidden states of the labelled positions are picked out,
and only those go through the head and the cross-entropy: the same loss and gradients (the other
positions never reach the loss), with the head's compute and the logits' memory cut by the share of
unlabelled tokens. That share is large for short chats, where logits are a big part of the step.

Used only for model families whose forward is "decoder, then lm_head" with nothing in between
(LABEL_ONLY_MODEL_TYPES: no logit soft-capping or scaling); anything else returns None and the
caller uses the model's own loss. The loss is reduced exactly as transformers' ForCausalLMLoss does:
a sum divided by `num_items_in_batch` when given, else a mean.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Families whose LM head is applied straight to the decoder's last hidden state.
LABEL_ONLY_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
LOGIT_CHANGING_CONFIG_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder stack and the LM head of a (peft-wrapped) causal LM, or None when the shortcut does
    not apply to it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in LABEL_ONLY_MODEL_TYPES:
        return None
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in LOGIT_CHANGING_CONFIG_KEYS):
        return None
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head


def label_only_loss(model: torch.nn.Module, inputs: dict[str, Any],
                    num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | None:
    """The causal-LM loss of `inputs` (which hold `labels`), or None when the shortcut does not apply."""
    parts = decoder_and_head(model)
    labels = inputs.get("labels")
    if parts is None or labels is None or "inputs_embeds" in inputs:
        return None
    decoder, head = parts
    # Position t predicts token t + 1: shift the labels left, the last position predicts nothing.
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = targets != IGNORE_INDEX
    decoder_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    hidden = decoder(**decoder_inputs, use_cache=False).last_hidden_state
    logits = head(hidden[keep]).float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep], reduction="mean")
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
