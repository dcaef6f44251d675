"""Save one of a run's kept checkpoints as a library adapter, when the user prefers it to the best one.

A finished run puts its best checkpoint (by eval loss) in the library. The user may prefer another
one (an earlier step that forgot less, a later one that sounds more like their data): any complete
checkpoint the run kept can be added as a new adapter. Its manifest is the run's finished adapter's,
where there is one, with that step's metrics and lineage {"kind": "checkpoint", run, step}; for a
run that never finished, it is built from the run's config. No model is loaded: the checkpoint's
peft files are copied as they are. Used by the CLI (`save-checkpoint`) and the run browser.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from studio.core import atomic, scratch
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import method_of, target_list
from studio.core.library.manifest import AdapterManifest, Lineage
from studio.core.library.store import AdapterEntry, AdapterLibrary
from studio.core.paths import DataDir
from studio.core.train import checkpoints
from studio.core.train.config import TrainConfig
from studio.core.train.events import Eval, Finished, Step
from studio.core.train.run_dir import RunDir

log = logging.getLogger(__name__)


def add_checkpoint_to_library(library: AdapterLibrary, checkpoint: Path, manifest: AdapterManifest, base_ref: str,
                              scratch_dir: Path) -> AdapterEntry:
    """A checkpoint's peft files, naming the base portably (`base_ref`: a studio or hub id, or the base's
    folder), added to the library under `manifest`. The finished run's best adapter goes in this way too."""
    with scratch.work_dir(scratch_dir, "adapter") as stage:
        for file_name in checkpoints.ADAPTER_FILES:
            shutil.copy2(checkpoint / file_name, stage / file_name)
        adapter_config = json.loads((stage / "adapter_config.json").read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base_ref
        atomic.write_json(stage / "adapter_config.json", adapter_config)
        return library.add_new(stage, manifest, move=True)


def _finished_adapter(library: AdapterLibrary, events: list) -> AdapterEntry | None:
    for event in reversed(events):
        if isinstance(event, Finished):
            try:
                return library.get(event.adapter_id)
            except StudioError:
                return None  # deleted since: build the manifest from the config
    return None


def _template(data: DataDir, run_id: str, config: TrainConfig, finished: AdapterEntry | None
              ) -> tuple[AdapterManifest, str]:
    """(a manifest to start from, the base name for adapter_config.json)."""
    if finished is not None:
        base_ref = json.loads((finished.path / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path", finished.manifest.base_model)
        return finished.manifest, base_ref
    from studio.ml.base.default_model import resolve_base

    info, base_ref = resolve_base(data, config.base)
    hyper = {key: value for key, value in config.to_dict().items()
             if key in ("quant", "learning_rate", "lr_schedule", "micro_batch_size", "grad_accum", "seq_len",
                        "seed", "preset", "dropout")}
    manifest = AdapterManifest(id="", name=config.display_name(), base_model=info.id,
                               base_fingerprint=info.fingerprint, hyperparameters={**hyper, "run_id": run_id},
                               dataset={"folder": config.data_folder}, notes=config.notes, source="trained")
    parent = [config.parent_adapter] if config.parent_adapter else []
    manifest.lineage = Lineage(parents=parent, recipe={})
    return manifest, base_ref


def _step_metrics(events: list, step: int, marker: dict[str, Any]) -> dict[str, Any]:
    losses = [e.loss for e in events if isinstance(e, Step) and e.step == step]
    evals = [e.eval_loss for e in events if isinstance(e, Eval) and e.step == step]
    eval_loss = marker.get("eval_loss") if marker.get("eval_loss") is not None else (evals[-1] if evals else None)
    return {"steps": step, "final_train_loss": losses[-1] if losses else None, "final_eval_loss": eval_loss,
            "best_eval_loss": eval_loss, "best_step": step, "chosen_checkpoint": True}


def save_checkpoint_as_adapter(data: DataDir, run_id: str, step: int, name: str = "") -> AdapterEntry:
    """Add the run's checkpoint at `step` to the library as a new adapter; the run is left as it is."""
    run = RunDir.existing(data, run_id)
    folder = checkpoints.complete_at(run, step)
    if folder is None:
        kept = checkpoints.kept_steps(run)
        raise StudioError(f"Run {run_id!r} has no complete checkpoint at step {step}.",
                          hint=f"Its kept checkpoints are at steps {', '.join(map(str, kept))}." if kept
                          else "It kept no complete checkpoint.")
    config = TrainConfig.from_dict(run.read_config() or {})
    events = run.events()
    library = AdapterLibrary(data)
    template, base_ref = _template(data, run_id, config, _finished_adapter(library, events))
    adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    manifest = AdapterManifest.from_dict({
        **template.to_dict(), "id": "", "name": name.strip() or f"{config.display_name()} step {step}",
        "method": method_of(adapter_config), "rank": int(adapter_config.get("r", 0)),
        "alpha": float(adapter_config.get("lora_alpha", 0)), "target_modules": target_list(adapter_config),
        "metrics": _step_metrics(events, step, checkpoints.read_marker(folder) or {}),
        "lineage": {"parents": list(template.lineage.parents),
                    "recipe": {"kind": "checkpoint", "run_id": run_id, "step": step}},
        "tags": list(config.tags), "created": AdapterManifest(id="", name="").created})
    try:
        entry = add_checkpoint_to_library(library, folder, manifest, base_ref, run.path)
    except OSError as err:  # pruned by a trainer resuming the run meanwhile, say
        raise StudioError(f"Could not copy checkpoint {step} of {run_id!r}: {err}.",
                          hint="Pick another kept checkpoint (`lora-studio runs` lists them).") from err
    log.info("Run %s: checkpoint %d saved as adapter %s", run_id, step, entry.id)
    return entry
