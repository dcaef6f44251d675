"""GGUF export for llama.cpp, LM Studio and Ollama: an adapter as a GGUF LoRA, a merged model as a GGUF model.

Llama-family bases only (llama.cpp's "llama" architecture), f32 / f16 / bf16 (no quantization).
Tensor names come from the gguf package's name map (`model.layers.0.self_attn.q_proj.weight` ->
`blk.0.attn_q.weight`). llama.cpp's RoPE pairs the rows of q_proj and k_proj differently from
Hugging Face, so its converter permutes those rows; this module does the same to the model's q/k
weights and to the LoRA B of q/k (the permutation acts on output rows, which live in B; A stays).

- `write_lora_gguf`: what llama.cpp's convert_lora_to_gguf.py writes: general.type = "adapter",
  adapter.type = "lora", adapter.lora.alpha, tensors `<name>.lora_a` (r x in) and `.lora_b`
  (out x r). llama.cpp scales by alpha / r, so rsLoRA (alpha / sqrt r) is written as an
  equivalent alpha and per-module differences are folded into B.
- `write_model_gguf`: a Hugging Face folder as a GGUF model with tokenizer metadata (gguf_llama).
- `merge_to_gguf`: merge with studio.ml.export.merge (smoke-tested there), then `write_model_gguf`.

Tensors are streamed one at a time (tensor infos first, then data; studio.ml.export.gguf_file), so a big
model never sits in memory whole; files are written beside the destination and renamed into place.
Every file is read back with gguf's reader (every tensor's name and shape, the key metadata) before
it is reported done.
Cannot run llama.cpp itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.progress import OnProgress, ShouldStop, Steps
from studio.ml.export.gguf_file import (
    PlannedTensor,
    file_type,
    ggml_type,
    verify_planned,
    write_planned,
)
from studio.ml.export.gguf_llama import (
    add_bpe_vocab,
    add_llama_hparams,
    llama3_rope_factors,
    permute_rows,
    qk_heads,
    read_llama_config,
)
from studio.ml.export.merge import (
    check_free_space,
    estimate_export_bytes,
    merge_and_export,
)

log = logging.getLogger(__name__)

_ADAPTER_PREFIX = "base_model.model."


@dataclass
class GGUFExport:
    path: Path
    kind: str  # "adapter" | "model"
    dtype: str
    tensors: int
    size_bytes: int
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "dtype": self.dtype, "tensors": self.tensors,
                "size_bytes": self.size_bytes, "seconds": round(self.seconds, 2), "metadata": self.metadata,
                "warnings": list(self.warnings)}


# ---------------------------------------------------------------- tensors


def _name_map(config: dict[str, Any]):
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))


def gguf_name(name_map, hf_name: str) -> str:
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise StudioError(f"No GGUF name for the tensor {hf_name!r}.",
                          hint="This model has tensors llama.cpp's llama architecture does not know.")
    return mapped


# ---------------------------------------------------------------- adapter


def _lora_pairs(adapter_folder: Path) -> dict[str, dict[str, Any]]:
    """HF module weight name -> {"A": tensor, "B": tensor} from an adapter's safetensors."""
    from safetensors.torch import load_file

    path = adapter_folder / "adapter_model.safetensors"
    if not path.exists():
        raise StudioError(f"{adapter_folder.name} has no adapter_model.safetensors.")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(path)).items():
        name = key.removeprefix(_ADAPTER_PREFIX)
        for part, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if name.endswith(part):
                pairs.setdefault(name[: -len(part)] + ".weight", {})[slot] = tensor.float()
                break
        else:
            raise StudioError(f"The adapter holds {key!r}, which is not a LoRA A/B matrix (DoRA magnitudes, "
                              "trained embeddings or modules_to_save); a GGUF LoRA cannot carry it.",
                              hint="Merge the adapter and export the model as GGUF instead.")
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise StudioError(f"The adapter's {name} has only lora_{next(iter(pair))}.")
        if "embed_tokens" in name or "lm_head" in name:
            raise StudioError("The adapter trains the embeddings or lm_head, which this GGUF export does not carry.",
                              hint="Merge the adapter and export the model as GGUF instead.")
    return pairs


def _lora_config(adapter_folder: Path) -> dict[str, Any]:
    config = json.loads((adapter_folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise StudioError("DoRA adapters cannot be written as a GGUF LoRA (llama.cpp has no magnitude vectors).",
                          hint="Merge the adapter and export the model as GGUF instead.")
    if config.get("alpha_pattern"):
        raise StudioError("Adapters with a per-module alpha_pattern are not supported by the GGUF export yet.")
    if config.get("lora_bias"):
        raise StudioError("Adapters with LoRA biases cannot be written as a GGUF LoRA.")
    return config


def write_lora_gguf(adapter_folder: Path | str, base_folder: Path | str, dest: Path | str, dtype: str = "f32", *,
                    name: str = "", progress: OnProgress | None = None,
                    should_stop: ShouldStop | None = None) -> GGUFExport:
    """Write a peft LoRA adapter over a Llama-family base as a llama.cpp GGUF LoRA file at `dest`."""
    import gguf

    started = time.monotonic()
    adapter_folder, base_folder, dest = Path(adapter_folder), Path(base_folder), Path(dest)
    step = Steps(progress, should_stop)
    step("check", 0.0, "Reading the adapter and its base's config…")
    ggml_type(dtype)
    if dest.exists():
        raise StudioError(f"{dest} already exists.", hint="Choose a new file name for the GGUF adapter.")
    config = read_llama_config(base_folder)
    lora = _lora_config(adapter_folder)
    pairs = _lora_pairs(adapter_folder)
    rank, alpha = int(lora["r"]), float(lora["lora_alpha"])
    rslora = bool(lora.get("use_rslora"))
    # llama.cpp scales every module by alpha_out / (its rank); pick alpha_out exact for the common rank.
    alpha_out = alpha * rank ** 0.5 if rslora else alpha
    names = _name_map(config)
    planned: list[PlannedTensor] = []
    for hf_name in sorted(pairs, key=_layer_order):
        a, b = pairs[hf_name]["A"], pairs[hf_name]["B"]
        r = a.shape[0]
        wanted = alpha / (r ** 0.5 if rslora else r)
        factor = wanted / (alpha_out / r)  # 1 unless rank_pattern gives this module another rank
        heads = qk_heads(hf_name, config)
        target = gguf_name(names, hf_name)

        def make_b(b=b, heads=heads, factor=factor):
            out = b.numpy() * factor
            return permute_rows(out, heads) if heads else out

        planned.append(PlannedTensor(target + ".lora_a", tuple(a.shape), dtype, lambda a=a: a.numpy()))
        planned.append(PlannedTensor(target + ".lora_b", tuple(b.shape), dtype, make_b))
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha_out)
    writer.add_name(name or adapter_folder.name)
    writer.add_file_type(file_type(dtype))
    step("write", 0.1, f"Writing {len(pairs)} LoRA pairs as {dtype}…")
    write_planned(writer, planned, dest, step, 0.1, 0.85)
    step("verify", 0.9, "Reading the GGUF file back…")
    expected = {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora"}
    verify_planned(dest, planned, expected)
    step("done", 1.0, f"GGUF LoRA written to {dest}")
    return GGUFExport(path=dest, kind="adapter", dtype=dtype, tensors=len(planned), size_bytes=dest.stat().st_size,
                      seconds=time.monotonic() - started,
                      metadata={"architecture": "llama", "lora_alpha": alpha_out, "rank": rank, "rslora": rslora})


def _layer_order(hf_name: str) -> tuple[int, str]:
    parts = hf_name.split(".")
    index = next((int(p) for p in parts if p.isdigit()), -1)
    return index, hf_name


# ---------------------------------------------------------------- model


@contextlib.contextmanager
def _safetensors(folder: Path) -> Iterator[dict[str, Any]]:
    """name -> open safetensors handle, over every shard of a Hugging Face folder."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for path in sorted(folder.glob("*.safetensors")):
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                handles[key] = handle
        if not handles:
            raise StudioError(f"{folder} has no safetensors weights.")
        yield handles


def write_model_gguf(model_folder: Path | str, dest: Path | str, dtype: str = "f16", *, name: str = "",
                     pre_tokenizer: str | None = None, progress: OnProgress | None = None,
                     should_stop: ShouldStop | None = None) -> GGUFExport:
    """Write a Llama-family Hugging Face model folder (safetensors + tokenizer) as one GGUF file."""
    import gguf

    started = time.monotonic()
    folder, dest = Path(model_folder), Path(dest)
    step = Steps(progress, should_stop)
    step("check", 0.0, "Reading the model's config and tokenizer…")
    ggml_type(dtype)
    if dest.exists():
        raise StudioError(f"{dest} already exists.", hint="Choose a new file name for the GGUF model.")
    config = read_llama_config(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(dest.parent, estimate_export_bytes(folder, "fp16" if dtype != "f32" else "fp32"))
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or folder.name)
    add_llama_hparams(writer, config, file_type(dtype))
    warnings = add_bpe_vocab(writer, folder, int(config["vocab_size"]), pre_tokenizer)
    names = _name_map(config)
    with _safetensors(folder) as handles:
        planned: list[PlannedTensor] = []
        for hf_name in sorted(handles, key=_layer_order):
            if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight"
                                                         and config.get("tie_word_embeddings")):
                continue  # recomputed by llama.cpp / the same tensor as token_embd
            heads = qk_heads(hf_name, config)

            def make(hf_name=hf_name, heads=heads):
                data = handles[hf_name].get_tensor(hf_name).float().numpy()
                return permute_rows(data, heads) if heads else data

            shape = tuple(handles[hf_name].get_slice(hf_name).get_shape())
            planned.append(PlannedTensor(gguf_name(names, hf_name), shape, dtype, make))
        factors = llama3_rope_factors(config)
        if factors is not None:
            planned.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], tuple(factors.shape), "f32",
                                    lambda: factors))
        step("write", 0.05, f"Writing {len(planned)} tensors as {dtype}…")
        write_planned(writer, planned, dest, step, 0.05, 0.85)
    step("verify", 0.9, "Reading the GGUF file back…")
    verify_planned(dest, planned, {"general.architecture": "llama", "general.type": "model",
                            "llama.block_count": int(config["num_hidden_layers"])})
    step("done", 1.0, f"GGUF model written to {dest}")
    return GGUFExport(path=dest, kind="model", dtype=dtype, tensors=len(planned), size_bytes=dest.stat().st_size,
                      seconds=time.monotonic() - started, metadata={"architecture": "llama"}, warnings=warnings)


def merge_to_gguf(base_folder: Path | str, adapter_folder: Path | str, dest: Path | str, dtype: str = "f16", *,
                  name: str = "", pre_tokenizer: str | None = None, device: str | None = None,
                  progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                  **merge_kwargs: Any) -> GGUFExport:
    """Merge the adapter into its base (smoke-tested Hugging Face model), then write that as GGUF."""
    base_folder, dest = Path(base_folder), Path(dest)
    ggml_type(dtype)
    read_llama_config(base_folder)  # refuse other architectures before the slow merge
    if dest.exists():
        raise StudioError(f"{dest} already exists.", hint="Choose a new file name for the GGUF model.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    merge_dtype = "bf16" if dtype == "bf16" else "fp32"  # f16 from fp32: no double rounding
    check_free_space(dest.parent, estimate_export_bytes(base_folder, merge_dtype)
                     + estimate_export_bytes(base_folder, "fp16" if dtype != "f32" else "fp32"))

    def merge_progress(event) -> None:
        if progress:
            progress(type(event)(event.stage, event.fraction * 0.6, event.message))

    with tempfile.TemporaryDirectory(prefix=".gguf-merge-", dir=dest.parent) as tmp:
        merged = merge_and_export(base_folder, adapter_folder, Path(tmp) / "merged", merge_dtype, device=device,
                                  progress=merge_progress, should_stop=should_stop, **merge_kwargs)

        def write_progress(event) -> None:
            if progress:
                progress(type(event)(event.stage, 0.6 + event.fraction * 0.4, event.message))

        result = write_model_gguf(merged.path, dest, dtype, name=name, pre_tokenizer=pre_tokenizer,
                                  progress=write_progress, should_stop=should_stop)
    result.metadata["smoke"] = merged.smoke.to_dict()
    return result
