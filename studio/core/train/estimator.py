"""Pre-flight estimate of a QLoRA run: trainable parameters, adapter file size, peak GPU memory.

Works from a config.json dict alone, in microseconds (a GUI slider calls it on every move); it
imports neither torch nor Qt and loads no weights. The parameter count and the adapter file size are
exact (see `studio.core.train.estimator_params`); the memory figure is a model of where the bytes go, made
of named terms so that the user (and a calibration run) can see each one. It does not probe the
device: `verdict` compares a prediction with a capacity the caller measured.

Memory terms, in bytes (b = batch, s = sequence length, h = hidden, i = intermediate, V = vocab,
L = layers, c = compute dtype bytes (2 for bf16/fp16), P_lin = decoder projection weights,
P_other = embeddings + untied lm head + norms + biases, T = trainable parameters):

- base_linear_weights   P_lin × bytes/param: NF4 with double quantization 0.516 (0.5 for the 4-bit
                        codes + 1/64 for the 8-bit absmax of each 64-block + 4/(64·256) for the fp32
                        second-level scales; 0.5625 without double quantization); 8-bit ≈ 1.0;
                        unquantized ("none") c.
- base_other_weights    P_other × c, or × 4 where `prepare_model_for_kbit_training` upcasts them to
                        fp32 (`upcast_non_quantized=True`). Never quantized.
- lora_weights          T × 4 (peft keeps adapter weights in fp32).
- lora_gradients        T × 4.
- optimizer_states      T × 8 for AdamW (two fp32 moments), T × 2 for paged 8-bit AdamW.
  (together the classic "16 bytes per trainable parameter")
- activations           with gradient checkpointing: each layer keeps only its input,
                        L × b·s·h·c ("2·s·b·h per layer"); without: L × the live-layer term below.
- live_layer            (checkpointing only) one layer's activations, recomputed during its backward.
                        Per token: attention c·(h + 5·q_dim) — the normed input shared by q/k/v,
                        q and the (GQA-expanded) k, v that SDPA keeps, its output and the contiguous
                        copy o_proj reads — + 4·heads (SDPA's fp32 log-sum-exp); MLP c·(h + 4i) — normed
                        input, gate and up outputs, SiLU output, their product; two RMSNorms keep an
                        fp32 copy of their input, 2 × 4h; each LoRA module adds its A output c·r, with
                        dropout a dropped copy of its input c·in + a 1-byte mask, and DoRA 2·c·out
                        (the base and LoRA outputs it rescales). Memory-efficient attention is assumed
                        (no s×s score matrix), as SDPA gives on CUDA.
- backward_workspace    gradients in flight: c·b·s·(2h + 2i), plus one projection weight
                        dequantized to c during a quantized layer's backward (the largest one).
- logits_and_loss       b·s·V·(c + 4 + 4): the logits, their fp32 upcast for the loss and the fp32
                        gradient, + b·s·h·(4 + c) for the final norm and lm-head input. With a fused
                        (chunked) cross-entropy only one chunk of logits exists: chunk =
                        next_pow2(⌈b·s / ⌈V/h⌉⌉) tokens (Liger's rule), and the gradient wrt the
                        hidden states b·s·h·c.
- cuda_context          CUDA_CONTEXT_BYTES = 500 MiB: the CUDA context, cuBLAS workspace and kernels.
                        Measured on an H100 in similar setups; TO BE CALIBRATED against
                        torch.cuda.max_memory_reserved plus nvidia-smi on a GPU session.
- fragmentation         FRAGMENTATION_FRACTION = 10 % of the transient terms (activations, live
                        layer, workspace, loss): the caching allocator's slack. TO BE CALIBRATED.

predicted_peak_bytes is the sum. `verdict` says "fits" below 90 % of the device's memory, "tight"
from 90 % to 100 %, and "won't fit" above. docs/estimator.md has the same formula in prose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.core.checks import check_number, check_positive, check_seq_len
from studio.core.errors import StudioError
from studio.core.train.estimator_params import (
    ALL_LINEAR_MODULES,
    ATTENTION_MODULES,
    KNOWN_MODELS,
    ModelShape,
    adapter_file_bytes,
    model_shape,
    resolve_targets,
    trainable_params,
)

__all__ = [
    "ALL_LINEAR_MODULES", "ATTENTION_MODULES", "KNOWN_MODELS", "Estimate", "EstimateRequest",
    "estimate", "estimate_for_base", "verdict", "format_bytes", "CUDA_CONTEXT_BYTES", "TIGHT_FRACTION",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # ≈ 0.516 bytes per quantized parameter
NF4_BYTES = 0.5 + 4 / 64
INT8_BYTES = 1.0
CUDA_CONTEXT_BYTES = 500 * MIB  # measured on an H100; to be calibrated
FRAGMENTATION_FRACTION = 0.10  # of the transient terms; to be calibrated
TIGHT_FRACTION = 0.90  # above this share of the device's memory the verdict is "tight"
OPTIMIZER_STATE_BYTES = {"adamw": 8, "paged_adamw_8bit": 2}
QUANTS = ("4bit", "8bit", "none")
METHODS = ("lora", "dora", "rslora")


@dataclass
class EstimateRequest:
    """What the user is about to train. `config` is the base model's config.json as a dict."""

    config: dict
    quant: str = "4bit"  # "4bit" (NF4) | "8bit" | "none"
    compute_dtype_bytes: int = 2
    rank: int = 16
    alpha: float = 32.0
    targets: str | Sequence[str] = "all-linear"  # "attention" | "all-linear" | module names
    method: str = "lora"  # "lora" | "dora" | "rslora"
    seq_len: int = 2048
    batch_size: int = 1
    gradient_checkpointing: bool = True
    fused_cross_entropy: bool = False
    optimizer: str = "adamw"  # "adamw" | "paged_adamw_8bit"
    lora_dropout: float = 0.05
    double_quant: bool = True
    upcast_non_quantized: bool = False  # prepare_model_for_kbit_training casts these to fp32
    save_dtype: str = "F32"  # dtype of the tensors in adapter_model.safetensors
    device: str = "cuda"  # "cuda" | "cpu": a CPU run has no CUDA context to pay for

    @classmethod
    def on_device(cls, device_kind: str, **fields: Any) -> EstimateRequest:
        """A request for training on `device_kind` as the studio trains there: 16-bit compute on a CUDA
        GPU; fp32 and no CUDA context anywhere else."""
        on_gpu = device_kind == "cuda"
        return cls(device="cuda" if on_gpu else "cpu", compute_dtype_bytes=2 if on_gpu else 4, **fields)


@dataclass(frozen=True)
class Estimate:
    trainable_params: int
    total_params: int  # of the base model
    trainable_percent: float  # as peft prints it: trainable / (base + trainable)
    adapter_file_bytes: int
    memory: dict[str, int]  # named terms, bytes; they sum to predicted_peak_bytes
    predicted_peak_bytes: int
    target_modules: tuple[str, ...]
    lora_scale: float  # alpha / r, or alpha / sqrt(r) for rsLoRA
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["notes"] = list(self.notes)
        return data


def _check(req: EstimateRequest) -> None:
    if req.quant not in QUANTS:
        raise StudioError(f"Unknown quantization {req.quant!r}.", hint="Use 4bit, 8bit or none.")
    if req.method not in METHODS:
        raise StudioError(f"Unknown adapter method {req.method!r}.", hint="Use lora, dora or rslora.")
    if req.device not in ("cuda", "cpu"):
        raise StudioError(f"Unknown device {req.device!r}.", hint="Use cuda or cpu.")
    if req.optimizer not in OPTIMIZER_STATE_BYTES:
        raise StudioError(f"Unknown optimizer {req.optimizer!r}.", hint="Use adamw or paged_adamw_8bit.")
    for name in ("rank", "batch_size", "compute_dtype_bytes"):
        check_positive(name, getattr(req, name))
    check_seq_len("seq_len", req.seq_len)
    check_number("alpha", req.alpha)
    check_number("lora_dropout", req.lora_dropout)
    if req.alpha <= 0:
        raise StudioError(f"alpha must be positive, not {req.alpha}.", hint="A common choice is 2 x rank.")


def _live_layer_per_token(shape: ModelShape, targets: tuple[str, ...], req: EstimateRequest) -> int:
    """Bytes per token one decoder layer keeps for its backward pass (see the module docstring)."""
    c, h, i = req.compute_dtype_bytes, shape.hidden, shape.intermediate
    attention = c * (h + 5 * shape.q_dim) + 4 * shape.heads
    mlp = c * (h + 4 * i)
    norms = 2 * 4 * h
    lora = 0
    for name in targets:
        _, fan_in, fan_out = shape.linear(name)
        lora += c * req.rank
        if req.lora_dropout > 0:
            lora += (c + 1) * fan_in
        if req.method == "dora":
            lora += 2 * c * fan_out
    return attention + mlp + norms + lora


def _loss_bytes(shape: ModelShape, req: EstimateRequest) -> int:
    tokens = req.batch_size * req.seq_len
    c, h, vocab = req.compute_dtype_bytes, shape.hidden, shape.vocab
    head_input = tokens * h * (4 + c)
    if not req.fused_cross_entropy:
        return tokens * vocab * (c + 4 + 4) + head_input
    chunk = math.ceil(tokens / math.ceil(vocab / h))
    chunk = min(tokens, 1 << max(0, chunk - 1).bit_length())  # next power of two, at most all tokens
    return chunk * vocab * (c + 4 + 4) + tokens * h * c + head_input


def estimate(req: EstimateRequest) -> Estimate:
    """Parameters, adapter size and a peak-memory breakdown for one training configuration."""
    _check(req)
    shape = model_shape(req.config)
    targets = resolve_targets(req.targets if isinstance(req.targets, str) else tuple(req.targets))
    dora = req.method == "dora"
    trainable = trainable_params(shape, targets, req.rank, dora)
    total = shape.total_params
    c = req.compute_dtype_bytes
    tokens = req.batch_size * req.seq_len

    if req.quant == "4bit":
        per_param = NF4_DOUBLE_QUANT_BYTES if req.double_quant else NF4_BYTES
        other_bytes = 4 if req.upcast_non_quantized else c
    elif req.quant == "8bit":
        per_param = INT8_BYTES
        other_bytes = 4 if req.upcast_non_quantized else c
    else:
        per_param, other_bytes = c, c

    live = _live_layer_per_token(shape, targets, req) * tokens
    if req.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * c
        live_layer = live
    else:
        activations = shape.layers * live
        live_layer = 0
    workspace = c * tokens * (2 * shape.hidden + 2 * shape.intermediate)
    if req.quant != "none":
        workspace += max(fan_in * fan_out for _, fan_in, fan_out in
                         (shape.linear(n) for n in ALL_LINEAR_MODULES)) * c
    loss = _loss_bytes(shape, req)
    memory = {
        "base_linear_weights": int(shape.decoder_linear_params * per_param),
        "base_other_weights": shape.other_params * other_bytes,
        "lora_weights": trainable * 4,
        "lora_gradients": trainable * 4,
        "optimizer_states": trainable * OPTIMIZER_STATE_BYTES[req.optimizer],
        "activations": activations,
        "live_layer": live_layer,
        "backward_workspace": workspace,
        "logits_and_loss": loss,
        "cuda_context": CUDA_CONTEXT_BYTES if req.device == "cuda" else 0,
    }
    memory["fragmentation"] = int(FRAGMENTATION_FRACTION * (activations + live_layer + workspace + loss))

    notes = []
    if not shape.known_layout:
        notes.append(f"Model type {shape.model_type!r} is assumed to be laid out like Llama "
                     "(q/k/v/o + gate/up/down under model.layers); the counts may differ.")
    if req.quant == "none" and req.upcast_non_quantized:
        notes.append("upcast_non_quantized only applies to quantized bases; ignored.")
    scale = req.alpha / (math.sqrt(req.rank) if req.method == "rslora" else req.rank)
    return Estimate(
        trainable_params=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / (total + trainable),
        adapter_file_bytes=adapter_file_bytes(shape, targets, req.rank, dora, req.save_dtype),
        memory=memory,
        predicted_peak_bytes=sum(memory.values()),
        target_modules=targets,
        lora_scale=scale,
        notes=tuple(notes),
    )


def verdict(est: Estimate, device_total_bytes: int) -> str:
    """'fits' below 90 % of the device's memory, 'tight' up to 100 %, "won't fit" beyond."""
    if device_total_bytes <= 0:
        return "won't fit"
    peak = est.predicted_peak_bytes
    if peak > device_total_bytes:
        return "won't fit"
    if peak > TIGHT_FRACTION * device_total_bytes:
        return "tight"
    return "fits"


def estimate_for_base(folder: Path | str, **kwargs) -> Estimate:
    """`estimate` for the model folder's config.json; kwargs are EstimateRequest fields."""
    from studio.core.basemodels import read_config

    return estimate(EstimateRequest(config=read_config(Path(folder)), **kwargs))


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; for summaries and the CLI."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
