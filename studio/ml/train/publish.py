"""The end of a successful run: the best checkpoint becomes an adapter in the library.

Picks the checkpoint with the lowest eval loss (the last one when there is no validation split),
loads its weights into the trained model when that was not the final step, runs the forgetting
check, and adds peft's two files with a full studio.json (base fingerprint, method, hyperparameters,
dataset summary, metrics, forgetting check, lineage, chat template hash) to the library.
Knows nothing about the training loop or events beyond the Finished it returns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.core.library.manifest import AdapterManifest, Lineage
from studio.core.library.store import AdapterEntry, AdapterLibrary
from studio.core.train.events import Finished
from studio.ml.base import loading as model_loading
from studio.ml.train import checkpoints
from studio.ml.train.checkpoint_adapter import add_checkpoint_to_library
from studio.ml.train.trainer import optimizer_name

if TYPE_CHECKING:
    from studio.ml.train.run import _Run

log = logging.getLogger(__name__)


def best_checkpoint(run_dir: Path, best_step: int | None) -> Path:
    """The checkpoint of the best eval loss, else the last complete one."""
    if best_step:
        folder = checkpoints.checkpoint_path(run_dir, best_step)
        if checkpoints.is_complete(folder):
            return folder
    last = checkpoints.last_complete(run_dir)
    if last is None:
        raise RuntimeError(f"run {run_dir.name} finished without a complete checkpoint")
    return last


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


def dataset_summary(run: _Run) -> dict[str, Any]:
    report = run.prepared.report
    return {"folder": str(Path(run.config.data_folder).resolve()), **report.totals(),
            "train_rows": len(run.rows), "validation_rows": len(run.eval_rows), "seq_len": report.seq_len,
            "long_samples": report.long_samples, "warnings": list(report.warnings)}


def hyperparameters(run: _Run) -> dict[str, Any]:
    cfg = run.config
    return {
        "quant": run.quant, "dtype": run.device.dtype, "device": run.device.kind, "lora_dropout": cfg.dropout,
        "learning_rate": cfg.learning_rate, "lr_schedule": cfg.lr_schedule, "warmup_ratio": cfg.warmup_ratio,
        "warmup_steps": cfg.warmup_steps, "epochs": cfg.epochs, "max_steps": run.max_steps,
        "micro_batch_size": cfg.micro_batch_size, "grad_accum": cfg.grad_accum,
        "effective_batch": cfg.effective_batch, "seq_len": cfg.seq_len, "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm, "optimizer": optimizer_name(cfg, run.device), "seed": cfg.seed,
        "gradient_checkpointing": cfg.gradient_checkpointing, "preset": cfg.preset, "packing": True,
        "run_id": run.run_id,
    }


def publish_adapter(*, model, tokenizer, run: _Run, tokens_seen: int, duration_s: float
                    ) -> tuple[AdapterEntry, Finished]:
    """Add the run's best adapter to the library; returns the entry and the Finished event."""
    from studio.ml.base.hardware import memory_snapshot
    from studio.ml.eval.forgetting import forgetting_check

    tracker = run.tracker
    best = best_checkpoint(run.run_dir, tracker.best_step)
    if checkpoints.step_of(best) != tracker.step:
        load_adapter_weights(model, best)
    forgetting = forgetting_check(model, tokenizer).to_dict()
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets)]
    method = "dora" if peft_config.use_dora else "rslora" if peft_config.use_rslora else "lora"
    snapshot = memory_snapshot(run.device.kind if run.device.kind in ("cuda", "mps") else "cpu")
    peak = max(tracker.peak_memory, snapshot.peak_bytes)
    tps = tracker.tokens_per_second()
    best_marker = checkpoints.read_marker(best) or {}
    eval_loss = best_marker.get("eval_loss") if best_marker.get("eval_loss") is not None else tracker.best_eval
    metrics = {
        "final_train_loss": tracker.last_loss, "final_eval_loss": tracker.last_eval, "best_eval_loss": eval_loss,
        "best_step": checkpoints.step_of(best), "steps": tracker.step, "tokens_seen": tokens_seen,
        "duration_s": round(duration_s, 2), "tokens_per_second": round(tps, 2), "peak_memory_bytes": int(peak),
        "early_stopped": tracker.early_stopped, "forgetting": forgetting,
    }
    parents = [run.parent.id] if run.parent is not None else []
    recipe = {"kind": "continued", "parent": run.parent.id, "run_id": run.run_id} if run.parent is not None else {}
    manifest = AdapterManifest(
        id="", name=run.config.display_name(), base_model=run.base_info.id,
        base_fingerprint=run.base_info.fingerprint, method=method, rank=int(peft_config.r),
        alpha=float(peft_config.lora_alpha), target_modules=targets, hyperparameters=hyperparameters(run),
        dataset=dataset_summary(run), metrics=metrics, lineage=Lineage(parents=parents, recipe=recipe),
        notes=run.config.notes, source="trained",
        chat_template_sha256=model_loading.chat_template_sha256(tokenizer))
    entry = add_checkpoint_to_library(AdapterLibrary(run.data), best, manifest, run.base_ref, run.run_dir)
    log.info("Run %s: adapter %s from %s", run.run_id, entry.id, best.name)
    finished = Finished(adapter_id=entry.id, path=str(entry.path), final_loss=tracker.last_loss, eval_loss=eval_loss,
                        tokens_seen=tokens_seen, tokens_per_second=round(tps, 2), peak_memory=int(peak),
                        duration_s=round(duration_s, 2))
    return entry, finished
