"""The real default model: converted once from the GGUF, and it answers a question sensibly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_conversion_is_complete_and_done_once(default_base_dir: Path):
    from studio.core.basemodels import DEFAULT_BASE_ID, inspect_base_model
    from studio.core.paths import DataDir
    from studio.ml.base.default_model import ensure_default_model

    info = inspect_base_model(default_base_dir)
    assert info.architecture == "LlamaForCausalLM"
    assert 130e6 < info.parameters < 140e6
    assert info.has_chat_template and not info.warnings  # no leftover GGUF quantization_config
    assert default_base_dir.name == DEFAULT_BASE_ID
    weights = default_base_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    again = ensure_default_model(DataDir(default_base_dir.parents[1]))
    assert again == default_base_dir
    assert time.monotonic() - started < 0.5
    assert weights.stat().st_mtime_ns == before


def test_the_known_default_shape_matches_the_converted_model(default_base_dir: Path):
    """Estimates and the preflight before the first conversion use DEFAULT_BASE_SHAPE and DEFAULT_BASE_LINEAR:
    they must be the real model's."""
    from studio.core.basemodels import (
        DEFAULT_BASE_LINEAR,
        DEFAULT_BASE_SHAPE,
        SHAPE_KEYS,
        base_config,
        read_config,
    )
    from studio.core.paths import DataDir
    from studio.core.train.preflight import linear_names

    config = read_config(default_base_dir)
    assert set(DEFAULT_BASE_SHAPE) == {*SHAPE_KEYS, "max_position_embeddings"}
    assert {key: config.get(key) for key in DEFAULT_BASE_SHAPE} == DEFAULT_BASE_SHAPE
    assert linear_names(default_base_dir) == set(DEFAULT_BASE_LINEAR)  # what the preflight lets targets name
    assert base_config(DataDir(default_base_dir.parents[1]), None) == config  # once converted, the real one


def test_default_model_answers_a_question(default_base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_base_dir)
    model = AutoModelForCausalLM.from_pretrained(default_base_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_bitsandbytes_loads_the_converted_model_in_4bit(default_base_dir: Path):
    """The saved config carries no GGUF quantization_config, so bitsandbytes accepts it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(default_base_dir, quantization_config=quant)
    assert model.is_loaded_in_4bit
