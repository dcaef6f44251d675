"""The end of a successful run: the best checkpoint becomes an adapter in the library.

`publish_adapter(model, tokenizer, run)` takes a `TrainedRun`, a frozen record of what the run
learned and was asked (its folder, config, base, device, dataset summary, losses), never the
training loop itself. It picks the checkpoint with the lowest eval loss (the last one when there is
no validation split), loads its weights into the trained model when that was not the final step,
runs the forgetting check, and adds peft's two files with a full studio.json (base fingerprint,
method, hyperparameters, dataset summary, metrics, forgetting check, lineage, tags, chat template
hash) to the library in one write; its lineage names the run, so a run killed before its Finished
event is written is recognised as published (studio.core.train.published). Returns the library
entry and the Finished event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.basemodels import BaseModelInfo
from studio.core.library.manifest import AdapterManifest, Lineage
from studio.core.library.store import AdapterEntry, AdapterLibrary
from studio.core.paths import DataDir
from studio.core.train import checkpoints, published
from studio.core.train.config import TrainConfig
from studio.core.train.events import Finished
from studio.core.train.run_dir import RunDir, step_of
from studio.ml.base import loading as model_loading
from studio.ml.base.loading import DeviceChoice
from studio.ml.train.checkpoint_adapter import add_checkpoint_to_library
from studio.ml.train.trainer import optimizer_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedRun:
    """What publishing needs from a run that trained to its end."""

    data: DataDir
    run: RunDir
    config: TrainConfig
    base: BaseModelInfo
    base_ref: str  # the base's name for adapter_config.json (a studio or hub id, or its folder)
    device: DeviceChoice
    quant: str  # what the base was actually loaded with
    parent_id: str | None  # the adapter this run continued, if any
    max_steps: int
    dataset: dict[str, Any]  # dataset_summary()
    step: int
    best_step: int | None
    best_eval: float | None
    last_eval: float | None
    last_loss: float | None
    early_stopped: bool
    peak_memory: int
    tokens_per_second: float
    tokens_seen: int
    duration_s: float


def best_checkpoint(run: RunDir, best_step: int | None) -> Path:
    """The checkpoint of the best eval loss, else the last complete one."""
    best = checkpoints.complete_at(run, best_step) or checkpoints.last_complete(run)
    if best is None:
        raise RuntimeError(f"run {run.run_id} finished without a complete checkpoint")
    return best


def load_adapter_weights(model, folder: Path) -> None:
    """Put the adapter weights saved in `folder` into the (peft) model in place."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(p for p in model.parameters() if p.requires_grad).device
    state = load_file(str(folder / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint {folder.name} has weights the model does not: {unexpected[:3]}")


def dataset_summary(config: TrainConfig, report, train_rows: int, validation_rows: int) -> dict[str, Any]:
    """The manifest's dataset section, from the prepared dataset's report."""
    return {"folder": str(Path(config.data_folder).resolve()), **report.totals(),
            "train_rows": train_rows, "validation_rows": validation_rows, "seq_len": report.seq_len,
            "long_samples": report.long_samples, "warnings": list(report.warnings)}


def hyperparameters(run: TrainedRun) -> dict[str, Any]:
    cfg = run.config
    return {
        "quant": run.quant, "dtype": run.device.dtype, "device": run.device.kind, "lora_dropout": cfg.dropout,
        "learning_rate": cfg.learning_rate, "lr_schedule": cfg.lr_schedule, "warmup_ratio": cfg.warmup_ratio,
        "warmup_steps": cfg.warmup_steps, "epochs": cfg.epochs, "max_steps": run.max_steps,
        "micro_batch_size": cfg.micro_batch_size, "grad_accum": cfg.grad_accum,
        "effective_batch": cfg.effective_batch, "seq_len": cfg.seq_len, "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm, "optimizer": optimizer_name(cfg, run.device), "seed": cfg.seed,
        "gradient_checkpointing": cfg.gradient_checkpointing, "preset": cfg.preset, "packing": True,
        "run_id": run.run.run_id,
    }


def publish_adapter(*, model, tokenizer, run: TrainedRun) -> tuple[AdapterEntry, Finished]:
    """Add the run's best adapter to the library; returns the entry and the Finished event."""
    from studio.ml.base.hardware import memory_snapshot
    from studio.ml.eval.forgetting import forgetting_check

    best = best_checkpoint(run.run, run.best_step)
    if step_of(best) != run.step:
        load_adapter_weights(model, best)
    forgetting = forgetting_check(model, tokenizer).to_dict()
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets)]
    method = "dora" if peft_config.use_dora else "rslora" if peft_config.use_rslora else "lora"
    snapshot = memory_snapshot(run.device.kind if run.device.kind in ("cuda", "mps") else "cpu")
    peak = max(run.peak_memory, snapshot.peak_bytes)
    tps = run.tokens_per_second
    best_marker = checkpoints.read_marker(best) or {}
    eval_loss = best_marker.get("eval_loss") if best_marker.get("eval_loss") is not None else run.best_eval
    metrics = {
        "final_train_loss": run.last_loss, "final_eval_loss": run.last_eval, "best_eval_loss": eval_loss,
        "best_step": step_of(best), "steps": run.step, "tokens_seen": run.tokens_seen,
        "duration_s": round(run.duration_s, 2), "tokens_per_second": round(tps, 2), "peak_memory_bytes": int(peak),
        "early_stopped": run.early_stopped, "forgetting": forgetting,
    }
    run_id = run.run.run_id
    parents = [run.parent_id] if run.parent_id is not None else []
    recipe = published.publish_recipe(run_id, run.parent_id)  # names the run: a resume after a kill finds it
    manifest = AdapterManifest(
        id="", name=run.config.display_name(), base_model=run.base.id,
        base_fingerprint=run.base.fingerprint, method=method, rank=int(peft_config.r),
        alpha=float(peft_config.lora_alpha), target_modules=targets, hyperparameters=hyperparameters(run),
        dataset=run.dataset, metrics=metrics, lineage=Lineage(parents=parents, recipe=recipe),
        tags=list(run.config.tags), notes=run.config.notes, source="trained",
        chat_template_sha256=model_loading.chat_template_sha256(model_loading.chat_template_text(tokenizer)))
    entry = add_checkpoint_to_library(AdapterLibrary(run.data), best, manifest, run.base_ref, run.run.path)
    log.info("Run %s: adapter %s from %s", run_id, entry.id, best.name)
    finished = Finished(adapter_id=entry.id, path=str(entry.path), final_loss=run.last_loss, eval_loss=eval_loss,
                        tokens_seen=run.tokens_seen, tokens_per_second=round(tps, 2), peak_memory=int(peak),
                        duration_s=round(run.duration_s, 2))
    return entry, finished
