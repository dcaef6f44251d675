"""The export formats the Export dialog offers, and the worker that runs one export.

FORMATS (+ GGUF and resize when those back ends are installed, see available_formats) says what each
format is called, what it writes, which precisions it takes and how much disk it needs. `run_export`
runs in a worker and calls studio.ml.export.library_export (or studio.ml.export.gguf / studio.ml.blend.resize),
imported inside it only, so the window opens without torch; it hands back an ExportOutcome whose
summary says in words how the back end's smoke test (or GGUF read-back) went.
Plain Python, no Qt.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.library.store import AdapterLibrary


@dataclass(frozen=True)
class ExportFormat:
    """One way to export: its key for run_export, the words the dialog shows, its default name."""

    key: str
    label: str
    help: str
    suffix: str  # appended to the adapter's slug for the default name ({dtype}, {rank} filled in)
    dtypes: tuple[str, ...] = ()  # the precisions offered (none: no precision choice)
    per_parameter: int = 0  # extra bytes per base parameter the export needs on disk (0: adapter-sized)

    def needed_bytes(self, dtype: str, base_parameters: int | None, adapter_bytes: int) -> int:
        """Disk the export needs: merges are sized by the base (0 when it is unknown), the rest by the adapter."""
        if self.key in ("merge", "gguf_model"):
            return base_parameters * (DTYPE_BYTES[dtype] + self.per_parameter) if base_parameters else 0
        return adapter_bytes


MERGE_DTYPES = ("bf16", "fp16", "fp32")
FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("merge", "Merge into the base: standalone model (Hugging Face folder)",
                 "Loads the base in 16/32-bit (never 4-bit), merges the adapter and writes safetensors "
                 "shards, config, tokenizer and chat template. Runs anywhere transformers runs.", "-merged-{dtype}",
                 MERGE_DTYPES),
    ExportFormat("peft", "Adapter as a plain peft folder",
                 "adapter_config.json + adapter_model.safetensors (+ studio.json): loads in peft, vLLM "
                 "and similar servers without the studio.", ""),
    ExportFormat("zip", "Adapter as a .zip", "The same peft folder, zipped for sharing.", ".zip"),
    ExportFormat("ollama", "Ollama bundle (Modelfile + adapter)",
                 "A Modelfile with FROM and ADAPTER lines and the adapter files; then run "
                 "`ollama create NAME -f Modelfile` in that folder.", "-ollama"),
)
GGUF_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("gguf", "Adapter as a GGUF LoRA (llama.cpp, LM Studio, Ollama)",
                 "Llama-family bases only. Written with the gguf package and read back to check every "
                 "tensor (llama.cpp itself is not run).", "-{dtype}.gguf", ("f32", "f16", "bf16")),
    ExportFormat("gguf_model", "Merge into the base as one GGUF model file",
                 "Merges (smoke-tested as a Hugging Face model), then writes a GGUF model with its "
                 "tokenizer. Llama-family bases only; no quantization.", "-merged-{dtype}.gguf", ("f16", "bf16", "f32"),
                 per_parameter=4),
)
RESIZE_FORMAT = ExportFormat("resize", "Smaller adapter: reduce the rank by SVD (new library adapter)",
                             "Keeps the strongest directions of each update; reports how much of the "
                             "update's energy is kept. The original adapter stays as it is.", " r{rank}")


def available_formats() -> tuple[ExportFormat, ...]:
    """The built-in formats and resize, plus GGUF when the `gguf` package is installed."""
    # find_spec looks the package up without importing it (importing it here would slow the dialog).
    extra = GGUF_FORMATS if importlib.util.find_spec("gguf") is not None else ()
    return FORMATS + extra + (RESIZE_FORMAT,)


DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "f16": 2, "f32": 4}


@dataclass(frozen=True)
class ExportOutcome:
    """What the worker hands back: where the export is and how its check went, in words."""

    path: Path
    format: str
    summary: str
    smoke: Any = None  # studio.ml.chat.smoke.SmokeResult when there was a smoke test
    adapter_id: str | None = None  # a new library adapter (resize)
    warnings: tuple[str, ...] = ()


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def format_size(num_bytes: float) -> str:
    """Bytes in MB or GB, as the dialog shows them."""
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


def smoke_summary(smoke: Any) -> str:
    """The smoke test in words (a SmokeResult or its dict)."""
    get = smoke.get if isinstance(smoke, dict) else lambda key: getattr(smoke, key)
    return (f"Smoke test passed ({get('message')}).\nAsked: {get('prompt')}\n"
            f"Answered: {get('answer') or '(empty)'}")


def run_export(emit, library: AdapterLibrary, adapter_id: str, fmt: str, dest: Path, *, dtype: str,
               should_stop, smoke_check=None, from_ref: str | None = None, system: str | None = None,
               rank: int = 0, new_name: str = "") -> ExportOutcome:
    """Runs in a worker: merge, export or resize with progress events through `emit`."""
    from studio.ml.export.library_export import base_model_for, export_adapter, merge_adapter

    steps = {"progress": emit, "should_stop": should_stop}
    if fmt == "merge":
        merged = merge_adapter(library, adapter_id, dest, dtype, smoke_check=smoke_check, **steps)
        return ExportOutcome(merged.path, fmt, smoke_summary(merged.smoke), smoke=merged.smoke)
    if fmt == "gguf_model":
        from studio.ml.export.gguf import merge_to_gguf

        entry = library.get(adapter_id)
        done = merge_to_gguf(base_model_for(library, entry).path, entry.path, dest, dtype, name=entry.manifest.name,
                             smoke_check=smoke_check, **steps)
        return ExportOutcome(done.path, fmt, f"GGUF model read back: {done.tensors} tensors, "
                             f"{format_size(done.size_bytes)}.\n" + smoke_summary(done.metadata["smoke"]),
                             warnings=tuple(done.warnings))
    if fmt == "resize":
        from studio.ml.blend.resize import resize_adapter

        made = resize_adapter(library, adapter_id, rank, new_name, **steps)
        return ExportOutcome(made.entry.path, fmt, f"Saved {made.entry.name!r}: rank {made.previous_rank} → "
                             f"{made.rank}, {made.retained_energy:.1%} of the update's energy kept (weakest "
                             f"module {made.min_layer}: {made.min_layer_energy:.1%}).", adapter_id=made.entry.id)
    extra = {"gguf_dtype": dtype} if fmt == "gguf" else {"smoke_check": smoke_check}
    result = export_adapter(library, adapter_id, dest, fmt, from_ref=from_ref, system=system, **extra, **steps)
    summary = (smoke_summary(result.smoke) if result.smoke is not None else
               f"GGUF LoRA read back: {result.details.get('tensors', '?')} tensors checked "
               "(llama.cpp itself was not run).")
    return ExportOutcome(result.path, fmt, summary, smoke=result.smoke, warnings=tuple(result.warnings))
