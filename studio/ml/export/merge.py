"""Merge an adapter into its base and export a standalone model; export Ollama bundles. Smoke-tested.

`merge_and_export` reloads the base from its folder in 16- or 32-bit (never merges into 4-bit
weights, whose rounding would ruin the merge), applies the adapter with plain peft, merges, and
writes a Hugging Face folder (safetensors shards, config, tokenizer, chat template, a generation
config whose EOS includes the end-of-turn token) into a staging folder. The staged model is
loaded back and must answer a probe prompt and stop at end of turn before the folder is renamed
into place. Every step reports a `StageProgress` and checks `should_stop`.

Works on folders; library ids are studio.ml.export.library_export's.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from studio.core import atomic
from studio.core.basemodels import inspect_base_model, tensor_infos
from studio.core.errors import StudioError
from studio.core.library.manifest import read_manifest
from studio.core.library.ollama import BUNDLED_BASE, OllamaBundle, write_bundle
from studio.core.progress import OnProgress, ShouldStop, Steps
from studio.ml.base.hardware import choose_device
from studio.ml.base.loading import (
    attach_adapter,
    free_memory,
    load_full_precision,
    load_tokenizer,
    torch_dtype,
)
from studio.ml.chat.generation import stop_ids
from studio.ml.chat.smoke import (
    DEFAULT_MAX_NEW_TOKENS,
    PROBE_PROMPT,
    Check,
    SmokeResult,
    require_pass,
    smoke_test,
)

log = logging.getLogger(__name__)

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DISK_MARGIN = 1.1


@dataclass
class MergeResult:
    path: Path
    dtype: str
    size_bytes: int
    files: list[str]
    smoke: SmokeResult
    seconds: float

    def to_dict(self) -> dict:
        return {"path": str(self.path), "dtype": self.dtype, "size_bytes": self.size_bytes,
                "files": self.files, "smoke": self.smoke.to_dict(), "seconds": round(self.seconds, 2)}


@dataclass
class OllamaExport:
    bundle: OllamaBundle
    smoke: SmokeResult
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.bundle.to_dict(), "smoke": self.smoke.to_dict()}




def check_adapter_fits(base_folder: Path, adapter_folder: Path) -> None:
    """Refuse an adapter whose manifest names a different base fingerprint."""
    manifest = read_manifest(adapter_folder)
    if manifest and manifest.base_fingerprint:
        info = inspect_base_model(base_folder)
        if info.fingerprint != manifest.base_fingerprint:
            raise StudioError(f"Adapter {manifest.name!r} was trained on {manifest.base_model or '?'} "
                              f"(fingerprint {manifest.base_fingerprint}), not on {info.id} "
                              f"(fingerprint {info.fingerprint}).",
                              hint="Merge it into the base it was trained on.")


def estimate_export_bytes(base_folder: Path | str, dtype: str) -> int:
    """Bytes the merged model will take: every weight at `dtype`, plus tokenizer and config files."""
    if dtype not in DTYPE_BYTES:
        raise StudioError(f"Unknown dtype {dtype!r}.", hint="Use bf16, fp16 or fp32.")
    per = DTYPE_BYTES[dtype]
    weights = 0
    for info in tensor_infos(Path(base_folder)).values():
        n = 1
        for d in info.shape:
            n *= d
        weights += n * per
    extras = sum(p.stat().st_size for p in Path(base_folder).iterdir()
                 if p.is_file() and p.suffix != ".safetensors")
    return weights + extras


def check_free_space(dest: Path | str, needed: int) -> None:
    """Refuse clearly when the disk that will hold `dest` has less than needed x 1.1 free."""
    probe = Path(dest).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * DISK_MARGIN:
        raise StudioError(f"Not enough disk space: the export needs about {_gb(needed * DISK_MARGIN)} "
                          f"but only {_gb(free)} is free on the disk holding {probe}.",
                          hint="Free some space, choose another destination, or export in bf16/fp16.")


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e7 else f"{num_bytes / 1e6:.2f} MB"


def merge_and_export(base_folder: Path | str, adapter_folder: Path | str, dest: Path | str,
                     dtype: str = "bf16", *, max_shard_size: str = "2GB", device: str | None = None,
                     progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                     probe: str = PROBE_PROMPT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     smoke_check: Check | None = None) -> MergeResult:
    """Merge `adapter_folder` into `base_folder` and write a standalone model to `dest`, smoke-tested."""
    started = time.monotonic()
    base_folder, adapter_folder, dest = Path(base_folder), Path(adapter_folder), Path(dest)
    step = Steps(progress, should_stop)
    step("check", 0.0, "Checking the adapter, the base and the free disk space…")
    torch_dtype(dtype)  # an unknown dtype is refused before anything is loaded
    if dest.exists():
        raise StudioError(f"{dest} already exists.", hint="Choose a new folder for the merged model.")
    check_adapter_fits(base_folder, adapter_folder)
    needed = estimate_export_bytes(base_folder, dtype)
    check_free_space(dest, needed)
    choice = choose_device(device, needed_bytes=needed)
    step("load", 0.05, f"Loading the base model in {dtype}…")
    model = load_full_precision(base_folder, dtype, choice)
    tokenizer = load_tokenizer(base_folder, adapter_path=adapter_folder, distinct_pad=False)
    step("load", 0.3, "Applying the adapter…")
    try:
        peft_model = attach_adapter(model, adapter_folder)
    except (RuntimeError, ValueError, KeyError) as err:
        raise StudioError(f"The adapter does not fit this base model: {err}",
                          hint="Merge it into the base it was trained on.") from err
    step("merge", 0.4, "Merging the adapter into the weights…")
    merged = peft_model.merge_and_unload()
    stops = stop_ids(tokenizer, generation_config=merged.generation_config)
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    if merged.generation_config.pad_token_id is None:
        merged.generation_config.pad_token_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                                 else stops[0])
    with atomic.staging_dir(dest) as staging:
        step("save", 0.5, f"Writing safetensors shards (up to {max_shard_size} each)…")
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)
        _copy_missing_chat_template(base_folder, adapter_folder, staging)
        del merged, peft_model, model
        free_memory()
        step("smoke", 0.75, "Loading the exported model back for a smoke test…")
        reloaded = load_full_precision(staging, dtype, choice)
        reloaded_tok = load_tokenizer(staging, distinct_pad=False)
        step("smoke", 0.85, f"Asking it {probe!r}…")
        result = smoke_test(reloaded, reloaded_tok, prompt=probe, max_new_tokens=max_new_tokens,
                            check=smoke_check)
        del reloaded
        free_memory()
        require_pass(result, "merged model")
        files = sorted(p.name for p in staging.iterdir())
        size = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
    step("done", 1.0, f"Merged model written to {dest}")
    return MergeResult(path=dest, dtype=dtype, size_bytes=size, files=files, smoke=result,
                       seconds=time.monotonic() - started)


def _copy_missing_chat_template(base_folder: Path, adapter_folder: Path, staging: Path) -> None:
    from studio.core.basemodels import has_chat_template

    if has_chat_template(staging):
        return
    for source in (adapter_folder, base_folder):
        for name in ("chat_template.jinja", "chat_template.json"):
            if (source / name).exists():
                shutil.copyfile(source / name, staging / name)
                return


def smoke_test_adapter(base_folder: Path | str, adapter_folder: Path | str, *, dtype: str | None = None,
                       device: str | None = None, probe: str = PROBE_PROMPT,
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, check: Check | None = None,
                       what: str = "exported adapter") -> SmokeResult:
    """Load base + adapter with plain peft, ask the probe, require it to stop at end of turn."""
    choice = choose_device(device, needed_bytes=estimate_export_bytes(base_folder, "bf16"))
    dtype = dtype or ("fp32" if choice.kind == "cpu" else "bf16")
    model = load_full_precision(base_folder, dtype, choice)
    tokenizer = load_tokenizer(base_folder, adapter_path=adapter_folder, distinct_pad=False)
    try:
        peft_model = attach_adapter(model, adapter_folder, label=f"The {what}")
    except (RuntimeError, ValueError, KeyError) as err:
        raise StudioError(f"The {what} does not load in peft on this base: {err}") from err
    result = smoke_test(peft_model, tokenizer, prompt=probe, max_new_tokens=max_new_tokens,
                        stop_ids=stop_ids(tokenizer, generation_config=model.generation_config), check=check)
    del peft_model, model
    free_memory()
    return require_pass(result, what)


def export_ollama(base_folder: Path | str, adapter_folder: Path | str, dest: Path | str, *,
                  from_ref: str | None = None, system: str | None = None, adapter_name: str = "",
                  device: str | None = None, progress: OnProgress | None = None,
                  should_stop: ShouldStop | None = None, probe: str = PROBE_PROMPT,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, smoke_check: Check | None = None,
                  base_name: str = "", adapter_config: str = "") -> OllamaExport:
    """Write an Ollama bundle (Modelfile + adapter/) to `dest`, smoke-tested from the bundle's files.

    FROM is `from_ref`, else ./base beside the Modelfile (a bundle names no folder of the user's; the
    result's warnings say where to put the base); `base_name` and `adapter_config` as in write_bundle."""
    base_folder, adapter_folder, dest = Path(base_folder), Path(adapter_folder), Path(dest)
    step = Steps(progress, should_stop)
    step("check", 0.0, "Checking the adapter and the base…")
    if dest.exists():
        raise StudioError(f"{dest} already exists.", hint="Choose a new folder for the Ollama bundle.")
    check_adapter_fits(base_folder, adapter_folder)
    tokenizer = load_tokenizer(base_folder, adapter_path=adapter_folder, distinct_pad=False)
    chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    with atomic.staging_dir(dest) as staging:
        step("write", 0.1, "Writing the Modelfile and the adapter files…")
        bundle = write_bundle(adapter_folder, staging, from_ref=from_ref or BUNDLED_BASE,
                              chat_template=chat_template, system=system, adapter_name=adapter_name,
                              base_name=base_name, adapter_config=adapter_config)
        step("smoke", 0.3, "Loading the base and the bundled adapter for a smoke test…")
        smoke = smoke_test_adapter(base_folder, staging / "adapter", device=device, probe=probe,
                                   max_new_tokens=max_new_tokens, check=smoke_check,
                                   what="Ollama bundle's adapter")
    bundle.path, bundle.modelfile = dest, dest / bundle.modelfile.name
    if bundle.from_ref == BUNDLED_BASE:
        bundle.warnings.insert(0, f"FROM is {BUNDLED_BASE}: before `ollama create`, link or copy the base's "
                                  f"folder {base_folder.resolve()} to {dest.resolve() / 'base'} (or give an "
                                  "Ollama tag of the same model as FROM).")
    step("done", 1.0, f"Ollama bundle written to {dest}")
    return OllamaExport(bundle=bundle, smoke=smoke, warnings=list(bundle.warnings))
