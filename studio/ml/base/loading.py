"""Load a base model for LoRA training (4-bit NF4, 8-bit or 16/32-bit) and put an adapter on it.

- Device and dtype: CUDA in bf16 where supported (fp16 before Ampere), else the CPU in fp32.
- Quantization: bitsandbytes NF4 with double quantization (4bit) or LLM.int8 (8bit), on CUDA and on
  the CPU (bitsandbytes >= 0.48 quantizes there too); then peft's prepare_model_for_kbit_training.
- Tokenizer: the pad token is made distinct from EOS by reusing an unused special token (the
  embeddings are never resized), so padding can never hide the end-of-turn the model must learn.
- Adapters: a new LoRA/DoRA/rsLoRA (peft LoraConfig), or an existing adapter loaded trainable
  (continue training), or loaded for inference.
Knows nothing about datasets, the Trainer or the library.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.train.config import TrainConfig

log = logging.getLogger(__name__)

ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv",
                   "out_proj", "query", "key", "value")


@dataclass(frozen=True)
class DeviceChoice:
    kind: str  # "cuda" | "cpu" | "mps"
    name: str
    dtype: str  # compute dtype: "bf16" | "fp16" | "fp32"
    total_memory: int  # the accelerator's memory, or system RAM


def choose_device(requested: str = "auto") -> DeviceChoice:
    """CUDA when present (bf16 if the GPU supports it, else fp16), else the CPU in fp32."""
    import psutil
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return DeviceChoice("cuda", props.name, dtype, int(props.total_memory))
    if requested == "cuda":
        raise StudioError("Training on the GPU was asked for, but PyTorch sees no CUDA GPU.",
                          hint="Check the NVIDIA driver and that a CUDA build of PyTorch is installed, "
                               "or train on the CPU.")
    if requested == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise StudioError("Training on the Apple GPU was asked for, but MPS is not available.")
        return DeviceChoice("mps", "Apple GPU", "fp32", int(psutil.virtual_memory().total))
    from studio.ml.base.hardware import _cpu_name

    return DeviceChoice("cpu", _cpu_name(), "fp32", int(psutil.virtual_memory().total))


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---------------------------------------------------------------- tokenizer


def load_tokenizer(base_path: Path | str):
    """The base's tokenizer with a pad token distinct from EOS (see `fix_pad_token`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    note = fix_pad_token(tokenizer)
    if note:
        log.info(note)
    return tokenizer


def fix_pad_token(tokenizer) -> str | None:
    """Make pad != EOS by reusing an unused special token; returns a note when it changed anything."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return None
    template = chat_template_text(tokenizer)
    candidates: list[str] = []
    if tokenizer.unk_token:
        candidates.append(tokenizer.unk_token)
    for _token_id, added in sorted((getattr(tokenizer, "added_tokens_decoder", None) or {}).items()):
        if getattr(added, "special", False):
            candidates.append(str(added))
    for token in candidates:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id in (eos, bos) or token in template:
            continue
        old = tokenizer.pad_token
        tokenizer.pad_token = token
        return f"Pad token set to {token!r} (id {token_id}), distinct from EOS (was {old!r})."
    # No spare special token: the last vocabulary entry pads (padding never takes loss or attention).
    token_id = len(tokenizer) - 1
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in (eos, bos):
        raise StudioError("This tokenizer has no token that could serve as padding apart from EOS.",
                          hint="Use a base model whose tokenizer defines a pad or unk token.")
    tokenizer.pad_token = token
    return f"Pad token set to the unused vocabulary entry {token!r} (id {token_id})."


def chat_template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    return json.dumps(template, sort_keys=True) if isinstance(template, dict) else str(template)


def chat_template_sha256(tokenizer) -> str:
    text = chat_template_text(tokenizer)
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text else ""


# ---------------------------------------------------------------- base model


def quantization_config(quant: str, compute_dtype: str):
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch_dtype(compute_dtype))
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(base_path: Path | str, quant: str, device: DeviceChoice, *, pad_token_id: int | None = None):
    """The base model on `device`, quantized as asked, frozen, with the KV cache off (packing needs it off)."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(device.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    qconfig = quantization_config(quant, device.dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": 0} if device.kind == "cuda" else {"": device.kind}
    model = AutoModelForCausalLM.from_pretrained(str(base_path), **kwargs)
    if qconfig is None:
        model.to(device.kind)
    model.config.use_cache = False
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_token_id
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def keep_cpu_4bit_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns the layers changed.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a Linear4bit's weight the first time the
    layer runs in eval mode without gradients (an evaluation, a sample generation), and from then
    on computes it with `gemv_4bit`, which has no autograd: the gradient through the frozen layer
    is lost and the LoRA weights below it get wrong gradients, silently. Training models never
    take that path.
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu") and module.support_avx512bf16_for_cpu:
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_base_for_training(base_path: Path | str, quant: str, device: DeviceChoice, *,
                           gradient_checkpointing: bool = True, pad_token_id: int | None = None):
    """A frozen base ready for adapters: k-bit prepared when quantized, activation checkpointing on."""
    model = load_base_model(base_path, quant, device, pad_token_id=pad_token_id)
    if quant == "4bit" and device.kind == "cpu":
        keep_cpu_4bit_trainable(model)
    if quant != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model


# ---------------------------------------------------------------- adapters


def resolve_targets(model, targets: str | list[str]) -> str | list[str]:
    """peft target_modules for 'attention', 'all-linear' (peft's own) or an explicit list (checked)."""
    import torch

    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and "lm_head" not in name}
    if targets == "all-linear":
        return "all-linear"
    if targets == "attention":
        found = sorted(n for n in linear_names if n in ATTENTION_NAMES)
        if not found:
            raise StudioError("No attention projections were found in this model.",
                              hint="Use targets 'all-linear' or name the layers explicitly.")
        return found
    missing = sorted(set(targets) - linear_names)
    if missing:
        raise StudioError(f"The model has no linear layers called {', '.join(missing)}.",
                          hint=f"Pick from: {', '.join(sorted(linear_names))}.")
    return list(targets)


def new_lora_config(config: TrainConfig, model):
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=resolve_targets(model, config.targets), bias="none", task_type="CAUSAL_LM",
                      use_dora=config.method == "dora", use_rslora=config.method == "rslora")


def attach_new_adapter(model, config: TrainConfig, base_ref: str):
    """A fresh trainable adapter (LoRA, DoRA or rsLoRA) over the frozen base."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, new_lora_config(config, model))
    peft_model.peft_config["default"].base_model_name_or_path = base_ref
    return peft_model


def attach_existing_adapter(model, adapter_path: Path | str, base_ref: str, *, trainable: bool):
    """An adapter from disk on the base: trainable to continue training it, else for inference."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable)
    peft_model.peft_config["default"].base_model_name_or_path = base_ref
    return peft_model


def load_for_inference(base_path: Path | str, adapter_path: Path | str, *, quant: str = "none",
                       device: str = "auto"):
    """(peft model in eval mode, tokenizer): the studio's own way to load base + adapter."""
    choice = choose_device(device)
    tokenizer = load_tokenizer(base_path)
    base = load_base_model(base_path, quant, choice, pad_token_id=tokenizer.pad_token_id)
    model = attach_existing_adapter(base, adapter_path, str(base_path), trainable=False)
    model.eval()
    return model, tokenizer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def is_oom(err: BaseException) -> bool:
    """Out of memory on the GPU (torch.OutOfMemoryError) or in RAM (a CPU allocator's RuntimeError)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory() -> None:
    """Collect garbage and hand cached GPU memory back (callers `del` their references first)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
