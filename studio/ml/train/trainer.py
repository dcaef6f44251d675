"""The Trainer the studio runs: transformers' own, plus token counting and a per-step hook.

`training_arguments` maps a TrainConfig and the device onto TrainingArguments: paged 8-bit AdamW on
CUDA with a quantized base (plain AdamW on a CPU), bf16 where the GPU supports it else fp16, step
logging every step, evaluation / checkpoints every N steps (rotation is the studio's, see
studio.core.train.checkpoints), no reporting integrations. `StudioTrainer` counts the real (non-padding) tokens
and samples of each micro batch, calls a hook before each training step (the test-only OOM
injection), and computes the loss through the LM head only where there are labels
(studio.ml.train.label_only_loss) for the model families that allow it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import Trainer, TrainingArguments

from studio.core.train.config import TrainConfig
from studio.ml.base.hardware import DeviceChoice
from studio.ml.train.label_only_loss import label_only_loss


def optimizer_name(config: TrainConfig, device: DeviceChoice) -> str:
    if device.kind == "cuda":
        return "paged_adamw_8bit" if config.quant != "none" else "adamw_torch_fused"
    return "adamw_torch"


def training_arguments(config: TrainConfig, device: DeviceChoice, *, micro: int, accum: int, max_steps: int,
                       output_dir: Path, has_eval: bool) -> TrainingArguments:
    eval_every = config.eval_interval(max_steps)
    warmup: int | float = config.warmup_steps if config.warmup_steps > 0 else config.warmup_ratio
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum,
        max_steps=max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_schedule,
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=optimizer_name(config, device),
        bf16=device.kind == "cuda" and device.dtype == "bf16",
        fp16=device.kind == "cuda" and device.dtype == "fp16",
        use_cpu=device.kind == "cpu",
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every if has_eval else None,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=config.checkpoint_interval(max_steps),
        save_total_limit=None,  # the studio prunes, only after a checkpoint is marked complete
        save_only_model=False,  # optimizer, scheduler and RNG state, so a resume continues exactly
        load_best_model_at_end=False,  # the studio tracks the best checkpoint itself
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=device.kind == "cuda",
        include_num_input_tokens_seen="no",  # counted by StudioTrainer, without padding
    )


class StudioTrainer(Trainer):
    """transformers' Trainer with token/sample counting and a hook called before every training step."""

    def __init__(self, *args, pad_token_id: int, step_hook: Callable[[int], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad_token_id = pad_token_id
        self.step_hook = step_hook
        self.session_tokens = 0
        self.session_samples = 0

    def counters(self) -> tuple[int, int]:
        """(real tokens, samples) trained by this Trainer so far."""
        return self.session_tokens, self.session_samples

    def save_checkpoint_now(self) -> None:
        """Checkpoint the last completed step outside the save schedule (after an out-of-memory error).

        Trainer has no public call for this: it is what the training loop does at a save step (the
        private _save_checkpoint, then the callbacks' on_save, where the studio marks it complete)."""
        self._save_checkpoint(self.model, trial=None)
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The shortcut reduces the loss the way the model's own loss does when it is handed
        # num_items_in_batch (model_accepts_loss_kwargs), so the Trainer's scaling stays right.
        loss = None
        if self.model_accepts_loss_kwargs and self.label_smoother is None and self.compute_loss_func is None:
            loss = label_only_loss(self.accelerator.unwrap_model(model), inputs, num_items_in_batch)
        if loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.step_hook is not None:
            self.step_hook(self.state.global_step + 1)
        ids = inputs["input_ids"]
        real = ids != self.pad_token_id
        tokens = int(real.sum())
        positions = inputs.get("position_ids")
        samples = int(((positions == 0) & real).sum()) if positions is not None else int(ids.shape[0])
        self.session_tokens += tokens
        self.session_samples += samples
        self.state.num_input_tokens_seen += tokens
        return super().training_step(model, inputs, num_items_in_batch)
