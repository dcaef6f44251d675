"""Merge or export a library adapter by id or name, smoke-tested: the functions the GUI and CLI call.

Finds the adapter's base model from what it records (the one base resolver), then hands over to studio.ml.export.merge
(merged model, Ollama bundle) or to the library's own export (plain peft folder or .zip), whose
result is loaded back with plain peft and must answer the probe prompt and stop at end of turn;
an export that fails is removed again and reported as failed. What an export carries names no
path of the user's (studio.core.library.exported). GGUF LoRAs go to
studio.ml.export.gguf, which reads its file back and checks it instead (llama.cpp is not run).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.basemodels import BaseModelInfo
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import adapter_base
from studio.core.library.exported import export_naming
from studio.core.library.store import slugify
from studio.core.progress import OnProgress, ShouldStop, StageProgress, Steps
from studio.ml.chat.smoke import Check, SmokeResult
from studio.ml.export.merge import (
    MergeResult,
    OllamaExport,
    export_ollama,
    merge_and_export,
    smoke_test_adapter,
)

log = logging.getLogger(__name__)

FORMATS = ("peft", "zip", "ollama", "gguf")


@dataclass
class ExportResult:
    path: Path
    format: str
    smoke: SmokeResult | None  # None for GGUF, which is checked by reading it back (details)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format,
                "smoke": self.smoke.to_dict() if self.smoke else None, "warnings": list(self.warnings),
                **({"details": self.details} if self.details else {})}


def base_model_for(library, entry) -> BaseModelInfo:
    """The base model an adapter entry was trained on (studio.core.library.adapter_folder.adapter_base)."""
    return adapter_base(library.data, entry.path, entry.manifest).inspect()


def merge_adapter(library, adapter: str, dest: Path | str, dtype: str = "bf16", **kwargs: Any) -> MergeResult:
    """Merge a library adapter into its base and export the standalone model to `dest`."""
    entry = library.get(adapter)
    return merge_and_export(base_model_for(library, entry).path, entry.path, dest, dtype, **kwargs)


def export_adapter(library, adapter: str, dest: Path | str, fmt: str = "peft", *,
                   from_ref: str | None = None, system: str | None = None, device: str | None = None,
                   progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                   smoke_check: Check | None = None, probe: str | None = None,
                   gguf_dtype: str = "f32") -> ExportResult:
    """Export a library adapter as a peft folder, a .zip of one, or an Ollama bundle (smoke-tested),
    or as a GGUF LoRA for llama.cpp (read back and checked; `gguf_dtype` f32/f16/bf16)."""
    if fmt not in FORMATS:
        raise StudioError(f"Unknown export format {fmt!r}.", hint=f"Use one of: {', '.join(FORMATS)}.")
    entry = library.get(adapter)
    base_info = base_model_for(library, entry)
    base = base_info.path
    if fmt == "gguf":
        from studio.ml.export.gguf import write_lora_gguf

        target = Path(dest) / f"{slugify(entry.manifest.name)}.gguf" if Path(dest).is_dir() else Path(dest)
        done = write_lora_gguf(entry.path, base, target, gguf_dtype, name=entry.manifest.name,
                               progress=progress, should_stop=should_stop)
        return ExportResult(path=done.path, format=fmt, smoke=None, warnings=done.warnings, details=done.to_dict())
    smoke_kwargs: dict[str, Any] = {"check": smoke_check, "device": device}
    if probe:
        smoke_kwargs["probe"] = probe
    if fmt == "ollama":
        naming = export_naming(library.data, entry.path, entry.manifest)  # a bundle names no folder of the user's
        result: OllamaExport = export_ollama(
            base, entry.path, dest, from_ref=from_ref, system=system, adapter_name=entry.manifest.name,
            device=device, progress=progress, should_stop=should_stop, smoke_check=smoke_check,
            base_name=naming.base_name, adapter_config=naming.adapter_config(entry.path),
            **({"probe": probe} if probe else {}))
        return ExportResult(path=result.bundle.path, format=fmt, smoke=result.smoke, warnings=result.warnings)
    step = Steps(progress, should_stop)
    step("write", 0.0, f"Exporting {entry.manifest.name} as a {'zip' if fmt == 'zip' else 'peft folder'}…")
    path = library.export(entry.id, dest, as_zip=fmt == "zip")
    try:
        step("smoke", 0.3, "Loading the base and the exported adapter for a smoke test…")
        with _adapter_folder(path) as folder:
            smoke = smoke_test_adapter(base, folder, what="exported adapter", **smoke_kwargs)
    except BaseException:
        _remove(path)
        raise
    if progress:
        progress(StageProgress("done", 1.0, f"Exported to {path}"))
    return ExportResult(path=path, format=fmt, smoke=smoke)


@contextlib.contextmanager
def _adapter_folder(path: Path):
    """The exported folder itself, or a zip unpacked into a temporary folder."""
    if path.is_dir():
        yield path
        return
    from studio.core.library.adapter_folder import find_adapter_root
    from studio.core.library.archive import extract_zip_safely

    with tempfile.TemporaryDirectory(prefix="lora-studio-zip-") as tmp:
        extract_zip_safely(path, Path(tmp))
        yield find_adapter_root(Path(tmp), path.name)


def _remove(path: Path) -> None:
    log.warning("Removing the failed export %s", path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
