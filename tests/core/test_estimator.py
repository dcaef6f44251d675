"""The estimator against real peft: exact trainable counts and adapter file sizes, plus the memory model."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.train.estimator import (
    CUDA_CONTEXT_BYTES,
    KNOWN_MODELS,
    NF4_DOUBLE_QUANT_BYTES,
    EstimateRequest,
    estimate,
    estimate_for_base,
    verdict,
)
from studio.core.train.estimator_params import (
    _adapter_file_bytes,
    _entries,
    adapter_tensors,
    model_shape,
    safetensors_file_bytes,
    safetensors_header,
)

REPO = Path(__file__).resolve().parents[2]
GB = 10**9
PEFT_TARGETS = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "all-linear": "all-linear"}


def _peft_adapter(base_dir: Path, out: Path, targets, rank: int, method: str):
    """(base params, peft's trainable count, saved adapter file) for one real peft adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    base_params = sum(p.numel() for p in model.parameters())
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                        target_modules=PEFT_TARGETS.get(targets, targets) if isinstance(targets, str)
                        else list(targets),
                        use_dora=method == "dora", use_rslora=method == "rslora")
    peft_model = get_peft_model(model, config)
    trainable = peft_model.get_nb_trainable_parameters()[0]
    peft_model.save_pretrained(out)
    return base_params, trainable, out / "adapter_model.safetensors"


def _check_against_peft(base_dir: Path, out: Path, targets, rank: int, method: str) -> None:
    base_params, trainable, file = _peft_adapter(base_dir, out, targets, rank, method)
    est = estimate_for_base(base_dir, targets=targets, rank=rank, alpha=2 * rank, method=method)
    assert est.trainable_params == trainable
    assert est.total_params == base_params
    assert est.trainable_percent == pytest.approx(100 * trainable / (base_params + trainable))
    assert est.adapter_file_bytes == file.stat().st_size
    # Byte for byte, the header we build is the one safetensors wrote.
    raw = file.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    config = json.loads((base_dir / "config.json").read_text())
    built = safetensors_header(adapter_tensors(model_shape(config), est.target_modules, rank, method == "dora"),
                               "F32", {"format": "pt"})
    assert built == raw[8:8 + header_len]


TINY_CASES = [
    ("attention", 4, "lora"),
    ("all-linear", 16, "lora"),
    ("all-linear", 64, "dora"),
    ("attention", 16, "rslora"),
    (("q_proj", "v_proj"), 4, "dora"),
    ("all-linear", 4, "rslora"),
]


@pytest.mark.parametrize(("targets", "rank", "method"), TINY_CASES)
def test_counts_and_file_size_match_peft_on_tiny_model(tiny_base_dir, tmp_path, targets, rank, method):
    _check_against_peft(tiny_base_dir, tmp_path / "adapter", targets, rank, method)


@pytest.mark.slow
@pytest.mark.parametrize(("targets", "rank", "method"), [
    ("attention", 16, "lora"), ("all-linear", 64, "dora"), ("all-linear", 4, "rslora"),
])
def test_counts_and_file_size_match_peft_on_default_model(default_base_dir, tmp_path, targets, rank, method):
    _check_against_peft(default_base_dir, tmp_path / "adapter", targets, rank, method)


def test_known_model_shapes_match_transformers_and_peft():
    """The ladder's configs, instantiated on the meta device (no memory): same counts as ours."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    for name, config in KNOWN_MODELS.items():
        hf_config = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        est = estimate(EstimateRequest(config=config, rank=8, targets="all-linear"))
        assert est.total_params == sum(p.numel() for p in model.parameters()), name
        if name in ("Qwen2.5-3B", "Llama-3.1-8B"):  # GQA 2 with qkv biases; untied head
            peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
            assert est.trainable_params == peft_model.get_nb_trainable_parameters()[0], name


def test_fast_header_arithmetic_equals_the_built_header():
    for config in KNOWN_MODELS.values():
        shape = model_shape(config)
        for targets in (("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                               "up_proj", "down_proj")):
            modules = tuple((name, *shape.linear(name)) for name in targets)
            for rank, dora, dtype in ((1, False, "F32"), (16, True, "F32"), (128, False, "BF16")):
                built = safetensors_file_bytes(_entries(shape.layers, modules, rank, dora), dtype,
                                               {"format": "pt"})
                assert _adapter_file_bytes(shape.layers, modules, rank, dora, dtype) == built


def test_nf4_constant_matches_bitsandbytes_storage():
    import bitsandbytes as bnb
    import torch

    weight = torch.randn(512, 1024, dtype=torch.bfloat16)
    packed, state = bnb.functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    stored = (packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
              + state.state2.absmax.numel() * state.state2.absmax.element_size())
    assert stored / weight.numel() == pytest.approx(NF4_DOUBLE_QUANT_BYTES, rel=1e-6)
    assert abs(NF4_DOUBLE_QUANT_BYTES - 0.516) < 5e-4


def test_importing_the_estimator_does_not_import_torch():
    code = "import studio.core.train.estimator, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def _peak(**kwargs) -> int:
    return estimate(EstimateRequest(config=KNOWN_MODELS["Llama-3.1-8B"], **kwargs)).predicted_peak_bytes


def test_8b_qlora_prediction_is_plausible_and_terms_add_up():
    est = estimate(EstimateRequest(config=KNOWN_MODELS["Llama-3.1-8B"], quant="4bit", rank=16,
                                   targets="all-linear", seq_len=2048, batch_size=1))
    assert 6 * GB < est.predicted_peak_bytes < 16 * GB
    assert est.predicted_peak_bytes == sum(est.memory.values())
    assert all(value >= 0 for value in est.memory.values())
    assert est.trainable_params == 41_943_040  # 16 · Σ(in+out) over 7 projections × 32 layers
    assert est.total_params == 8_030_261_248  # Llama-3.1-8B's published count
    assert est.memory["base_linear_weights"] == pytest.approx(6_979_321_856 * 0.516, rel=1e-3)
    assert est.memory["lora_weights"] + est.memory["lora_gradients"] + est.memory["optimizer_states"] \
        == 16 * est.trainable_params
    json.dumps(est.to_dict())


def test_memory_grows_with_sequence_batch_and_rank():
    assert _peak(seq_len=512) < _peak(seq_len=1024) < _peak(seq_len=2048) < _peak(seq_len=4096)
    assert _peak(batch_size=1) < _peak(batch_size=2) < _peak(batch_size=4)
    assert _peak(rank=8) < _peak(rank=16) < _peak(rank=64)


def test_memory_options_move_the_prediction_the_right_way():
    assert _peak(gradient_checkpointing=True) < _peak(gradient_checkpointing=False)
    assert _peak(fused_cross_entropy=True) < _peak(fused_cross_entropy=False)
    assert _peak(optimizer="paged_adamw_8bit") < _peak(optimizer="adamw")
    assert _peak(quant="4bit") < _peak(quant="8bit") < _peak(quant="none")
    assert _peak(double_quant=True) < _peak(double_quant=False)
    assert _peak(method="lora") < _peak(method="dora")
    assert _peak(upcast_non_quantized=False) < _peak(upcast_non_quantized=True)
    assert _peak(targets="attention") < _peak(targets="all-linear")
    assert _peak(method="rslora") == _peak(method="lora")


def test_a_cpu_run_pays_no_cuda_context():
    on_gpu = estimate(EstimateRequest(config=KNOWN_MODELS["Llama-3.2-1B"]))
    on_cpu = estimate(EstimateRequest(config=KNOWN_MODELS["Llama-3.2-1B"], device="cpu"))
    assert on_gpu.memory["cuda_context"] == CUDA_CONTEXT_BYTES and on_cpu.memory["cuda_context"] == 0
    assert on_gpu.predicted_peak_bytes - on_cpu.predicted_peak_bytes == CUDA_CONTEXT_BYTES


def test_verdict_thresholds():
    est = estimate(EstimateRequest(config=KNOWN_MODELS["Llama-3.2-1B"]))
    at = lambda peak: dataclasses.replace(est, predicted_peak_bytes=peak)  # noqa: E731
    assert verdict(at(80), 100) == "fits"
    assert verdict(at(90), 100) == "fits"
    assert verdict(at(91), 100) == "tight"
    assert verdict(at(100), 100) == "tight"
    assert verdict(at(101), 100) == "won't fit"
    assert verdict(est, 0) == "won't fit"
    assert verdict(est, 80 * GB) == "fits"
    assert verdict(est, 2 * GB) == "won't fit"


def test_scale_and_rslora():
    config = KNOWN_MODELS["Llama-3.2-1B"]
    assert estimate(EstimateRequest(config=config, rank=16, alpha=32)).lora_scale == 2.0
    assert estimate(EstimateRequest(config=config, rank=16, alpha=32, method="rslora")).lora_scale == 8.0


def test_estimate_is_fast_enough_for_a_slider():
    config = KNOWN_MODELS["Qwen2.5-32B"]
    estimate(EstimateRequest(config=config))
    start = time.perf_counter()
    for seq_len in range(256, 256 + 500):
        estimate(EstimateRequest(config=config, seq_len=seq_len))
    per_call = (time.perf_counter() - start) / 500
    assert per_call < 0.002  # typically ~60 µs; generous for a loaded 2-core machine


@pytest.mark.parametrize(("change", "words"), [
    ({"targets": ["q_proj", "lm_head"]}, "lm_head"),
    ({"targets": []}, "none given"),
    ({"quant": "3bit"}, "quantization"),
    ({"method": "ia3"}, "method"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"device": "tpu"}, "device"),
    ({"rank": 0}, "rank"),
    ({"config": {**KNOWN_MODELS["Llama-3.2-1B"], "hidden_size": None}}, "hidden_size"),
    ({"config": {**KNOWN_MODELS["Llama-3.2-1B"], "num_local_experts": 8}}, "mixture-of-experts"),
    ({"config": {**KNOWN_MODELS["Llama-3.2-1B"], "model_type": "gpt_neox"}}, "projections"),
])
def test_bad_requests_raise_studio_errors(change, words):
    request = EstimateRequest(config=KNOWN_MODELS["Llama-3.2-1B"])
    with pytest.raises(StudioError, match=words):
        estimate(dataclasses.replace(request, **change))


def test_unknown_model_type_gets_a_note_and_missing_config_an_error(tmp_path):
    est = estimate(EstimateRequest(config={**KNOWN_MODELS["Llama-3.2-1B"], "model_type": "newthing"}))
    assert est.notes and "newthing" in est.notes[0]
    with pytest.raises(StudioError, match="config.json"):
        estimate_for_base(tmp_path)
