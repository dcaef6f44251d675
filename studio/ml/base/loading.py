"""Load a base model, its tokenizer and adapters: the one place that calls from_pretrained.

Training, chat, blend, merge/export and the forgetting check all load through these functions:
- Device and dtype: `studio.ml.base.hardware.choose_device` (CUDA in bf16 where supported, fp16
  before Ampere, else the CPU in fp32); `torch_dtype` maps the names onto torch's.
- Quantization: bitsandbytes NF4 with double quantization (4bit) or LLM.int8 (8bit), on CUDA and on
  the CPU (bitsandbytes >= 0.48 quantizes there too); `resolve_quant` turns "auto" into 4-bit on a
  GPU and full precision elsewhere. Training then runs peft's prepare_model_for_kbit_training.
  Merging and blending load full-precision weights only (`load_full_precision`).
- Tokenizer: for training the pad token is made distinct from EOS by reusing an unused special
  token (the embeddings are never resized), so padding can never hide the end-of-turn the model
  must learn. `chat_template_text` / `chat_template_sha256` are the one rule for which template
  renders chats and how a manifest records it.
- Adapters: a new LoRA/DoRA/rsLoRA (peft LoraConfig), or one from disk (`attach_adapter`), always
  with an initialisation that leaves the base weights alone: adapters whose PiSSA/OLoRA/CorDA/LoftQ
  init would rewrite the shared base are refused (studio.core.library.adapter_folder), and the
  others load with peft's plain init, since the saved weights replace A and B anyway.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from studio.core.basemodels import read_config
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import neutral_init, read_adapter_config
from studio.core.train.config import TrainConfig
from studio.ml.base.hardware import DeviceChoice, choose_device

log = logging.getLogger(__name__)

ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv",
                   "out_proj", "query", "key", "value")
QUANT_CHOICES = ("auto", "4bit", "8bit", "none")
DTYPES = ("bf16", "fp16", "fp32")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def torch_dtype(name: str):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise StudioError(f"Unknown dtype {name!r}.", hint="Use bf16, fp16 or fp32.")
    return table[name]


def resolve_quant(quant: str, device: DeviceChoice) -> str:
    """The quantization to load with: "auto" is 4-bit NF4 on a CUDA GPU, full precision elsewhere."""
    if quant not in QUANT_CHOICES:
        raise StudioError(f"Unknown quantization {quant!r}.", hint="Use auto, 4bit, 8bit or none.")
    if quant == "auto":
        return "4bit" if device.kind == "cuda" else "none"
    return quant


# ---------------------------------------------------------------- tokenizer


def load_tokenizer(base_path: Path | str, *, adapter_path: Path | str | None = None, distinct_pad: bool = True):
    """The base's tokenizer, or the adapter's own when its folder carries one (its chat template wins).

    `distinct_pad` makes the pad token distinct from EOS (see `fix_pad_token`), as training needs;
    a tokenizer that is saved again (a merged model) keeps the base's own.
    """
    from transformers import AutoTokenizer

    folder = Path(base_path)
    if adapter_path is not None and any((Path(adapter_path) / name).exists() for name in TOKENIZER_FILES):
        folder = Path(adapter_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if distinct_pad:
        note = fix_pad_token(tokenizer)
        if note:
            log.info(note)
    return tokenizer


def fix_pad_token(tokenizer) -> str | None:
    """Make pad != EOS by reusing an unused special token; returns a note when it changed anything."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return None
    templates = getattr(tokenizer, "chat_template", None) or ""
    # Every template counts here (named ones too): a token any of them writes must never pad.
    template = json.dumps(templates, sort_keys=True) if isinstance(templates, dict) else str(templates)
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
    """The template chats are rendered with: the tokenizer's, or its "default" one when it has named
    templates (as `apply_chat_template` picks); "" when it has none."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), "")
    return template if isinstance(template, str) else ""


def chat_template_sha256(template: str | None) -> str:
    """The hash a manifest's `chat_template_sha256` holds: sha256 of the template text (UTF-8); "" for none.
    Written by training (of `chat_template_text(tokenizer)`) and compared by chat, so both use this."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if template else ""


# ---------------------------------------------------------------- base model


def quantization_config(quant: str, compute_dtype: str):
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch_dtype(compute_dtype))
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(base_path: Path | str, quant: str, device: DeviceChoice, *, dtype: str | None = None,
                    pad_token_id: int | None = None, training: bool = False):
    """The base model on `device`, quantized as asked (4bit, 8bit or none), in `dtype` (default: the
    device's compute dtype). For training it is frozen with the KV cache off (packing needs it off);
    otherwise it is in eval mode."""
    from transformers import AutoModelForCausalLM

    dtype = dtype or device.dtype
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    qconfig = quantization_config(quant, device.dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": 0} if device.kind == "cuda" else {"": device.kind}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_path), **kwargs)
    except Exception as err:
        if qconfig is None or is_oom(err):
            raise
        raise StudioError(f"Could not load {Path(base_path).name} in {quant} on {device.kind}: {err}.",
                          hint="Load it unquantized (quant none).") from err
    if qconfig is None:
        model.to(device.kind)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_token_id
    if training:
        model.config.use_cache = False
        for param in model.parameters():
            param.requires_grad_(False)
    else:
        model.eval()
    return model


def load_full_precision(folder: Path | str, dtype: str = "fp32", device: DeviceChoice | None = None):
    """An unquantized model in `dtype` (merging and blending need 16- or 32-bit weights), in eval mode."""
    folder = Path(folder)
    if read_config(folder).get("quantization_config"):
        raise StudioError(f"{folder.name} is saved quantized; merging needs 16- or 32-bit weights.",
                          hint="Use the original (unquantized) base model folder.")
    return load_base_model(folder, "none", device or choose_device("auto"), dtype=dtype)


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
    model = load_base_model(base_path, quant, device, pad_token_id=pad_token_id, training=True)
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


def adapter_load_config(adapter_path: Path | str, *, trainable: bool = False):
    """peft's LoraConfig of an adapter folder, with an initialisation that never touches the base.

    peft runs the config's init when it attaches an adapter, and PiSSA/OLoRA/CorDA/LoftQ/LoRA-GA
    rewrite the base layer's weight there. The saved A/B replace whatever the init made, so loading
    with peft's plain init gives the same adapter and leaves the shared base alone.
    """
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(adapter_path))
    config.init_lora_weights = neutral_init(config.init_lora_weights)
    config.inference_mode = not trainable
    return config


def attach_adapter(model, adapter_path: Path | str, *, adapter_name: str = "default", trainable: bool = False,
                   label: str | None = None):
    """`model` with the adapter at `adapter_path` attached as `adapter_name`: a new PeftModel over a
    plain model, or one more adapter on a PeftModel. Adapters whose init rewrites the base are refused."""
    from peft import PeftModel

    read_adapter_config(Path(adapter_path), label or repr(Path(adapter_path).name))  # refuses base-mutating inits
    config = adapter_load_config(adapter_path, trainable=trainable)
    if not isinstance(model, PeftModel):
        return PeftModel.from_pretrained(model, str(adapter_path), adapter_name=adapter_name,
                                         is_trainable=trainable, config=config)
    # load_adapter reads the config from disk unless the adapter already exists: add it first.
    model.add_adapter(adapter_name, config)
    try:
        model.load_adapter(str(adapter_path), adapter_name=adapter_name, is_trainable=trainable)
    except Exception:
        model.delete_adapter(adapter_name)
        raise
    if trainable:
        model.set_requires_grad(adapter_name)  # add_adapter leaves a new adapter frozen
    return model


def attach_existing_adapter(model, adapter_path: Path | str, base_ref: str, *, trainable: bool):
    """An adapter from disk on the base: trainable to continue training it, else for inference."""
    peft_model = attach_adapter(model, adapter_path, trainable=trainable)
    peft_model.peft_config["default"].base_model_name_or_path = base_ref
    return peft_model


def load_for_inference(base_path: Path | str, adapter_path: Path | str, *, quant: str = "none",
                       device: str = "auto"):
    """(peft model in eval mode, tokenizer): the studio's own way to load base + adapter."""
    choice = choose_device(device)
    tokenizer = load_tokenizer(base_path)
    base = load_base_model(base_path, resolve_quant(quant, choice), choice, pad_token_id=tokenizer.pad_token_id)
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
