"""What a training run is asked to do: the frozen `TrainConfig` value, its presets and its checks.

A config is plain data (to_dict/from_dict, stored as the run folder's config). It is checked once,
when it is made: a value that cannot work raises StudioError naming the field and what to use
instead, so every TrainConfig that exists is valid; change one with `replace(...)`. Presets
("style", "task", "knowledge") fill rank/alpha/targets/learning rate/epochs for the three usual
goals. Plain Python; the engine that runs a config is studio.ml.train.run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.checks import check_choice, check_number, check_positive, check_seq_len, check_whole
from studio.core.dataset.files import DEFAULT_MAX_FILE_MB
from studio.core.errors import StudioError

METHODS = ("lora", "dora", "rslora")
QUANTS = ("4bit", "8bit", "none")
TARGET_PRESETS = ("attention", "all-linear")
SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
DEVICES = ("auto", "cuda", "cpu", "mps")
LONG_SAMPLES = ("truncate", "drop")
SCHEMA_VERSION = 1
# Keys older config.json files may hold that are no longer settings: dropped when read.
LEGACY_KEYS = frozenset({"_inject_oom_at_step"})

PRESETS: dict[str, dict[str, Any]] = {
    # Tone and format: few parameters, attention only, short.
    "style": {"rank": 8, "alpha": 16.0, "targets": "attention", "learning_rate": 2e-4, "epochs": 2.0,
              "dropout": 0.05},
    # A task (extraction, classification, a fixed answer shape): every linear layer.
    "task": {"rank": 16, "alpha": 32.0, "targets": "all-linear", "learning_rate": 2e-4, "epochs": 3.0,
             "dropout": 0.05},
    # New facts: a large rank, more epochs, a gentler rate.
    "knowledge": {"rank": 64, "alpha": 128.0, "targets": "all-linear", "learning_rate": 1e-4, "epochs": 5.0,
                  "dropout": 0.05},
}
PRESET_HELP = {
    "style": "tone and format (rank 8, attention layers, 2 epochs)",
    "task": "a task or answer shape (rank 16, all linear layers, 3 epochs)",
    "knowledge": "new facts (rank 64, all linear layers, 5 epochs)",
}


@dataclass(frozen=True)
class TrainConfig:
    data_folder: str = ""
    adapter_name: str = ""  # default: the data folder's name
    base: str = DEFAULT_BASE_ID  # a studio model id, a Hugging Face cache repo id, or a model folder
    preset: str = ""  # informational once applied: "style" | "task" | "knowledge" | ""
    method: str = "lora"  # lora | dora | rslora
    quant: str = "4bit"  # 4bit (NF4, double quantization) | 8bit | none
    targets: str | tuple[str, ...] = "all-linear"  # "attention" | "all-linear" | explicit module names
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    epochs: float = 3.0
    max_steps: int = 0  # > 0 overrides epochs
    micro_batch_size: int = 2  # packed rows per forward pass
    grad_accum: int = 4
    seq_len: int = 1024
    val_fraction: float = 0.1
    eval_every: int = 0  # steps; 0 = about ten evaluations per run
    checkpoint_every: int = 0  # steps; 0 = about five checkpoints per run
    keep_checkpoints: int = 2  # the last K complete checkpoints are kept (plus the best)
    sample_every: int = 0  # steps; 0 = never
    probe_prompts: tuple[str, ...] = ()  # default: the first validation questions
    sample_max_new_tokens: int = 32
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    seed: int = 42
    gradient_checkpointing: bool = True
    long_samples: str = "truncate"  # truncate | drop
    max_file_mb: float = DEFAULT_MAX_FILE_MB  # data files larger than this are reported, not read
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"  # auto | cuda | cpu | mps
    memory_every: int = 5  # steps between Memory events
    slow_step_factor: float = 3.0  # a step this many times the median is reported
    parent_adapter: str = ""  # continue training this library adapter (its rank/targets are kept)
    resume: str = ""  # run id to resume from its last complete checkpoint
    notes: str = ""
    tags: tuple[str, ...] = ()  # the adapter's tags in the library, written with it
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Sequences are kept as tuples, so the value cannot change behind the frozen fields.
        for name in ("targets", "probe_prompts", "tags"):
            value = getattr(self, name)
            if name == "targets" and isinstance(value, str):
                continue
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise StudioError(f"{name} must be a list of text, not {value!r}.")
            object.__setattr__(self, name, tuple(value))
        if not all(isinstance(t, str) for t in self.tags):
            raise StudioError(f"tags must be a list of text, not {list(self.tags)!r}.")
        object.__setattr__(self, "tags", tuple(dict.fromkeys(t.strip() for t in self.tags if t.strip())))
        self._check()

    # ------------------------------------------------------------ construction

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """A config from one of PRESETS, with any field overridden."""
        if preset not in PRESETS:
            raise StudioError(f"Unknown preset {preset!r}.", hint=f"Use one of: {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("targets", "probe_prompts", "tags"):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StudioError(f"Unknown training setting(s): {', '.join(unknown)}.",
                              hint="Check the spelling against `lora-studio train --help`.")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ checks

    def _check(self) -> None:
        """Raise StudioError on the first value that cannot work, naming its field."""
        if not self.data_folder and not self.resume:
            raise StudioError("data_folder: no data folder was given.",
                              hint="Choose the folder that holds your training files.")
        for name in ("data_folder", "adapter_name", "base", "preset", "parent_adapter", "resume", "notes"):
            if not isinstance(getattr(self, name), str):
                raise StudioError(f"{name} must be text, not {getattr(self, name)!r}.")
        check_choice("method", self.method, METHODS)
        check_choice("quant", self.quant, QUANTS)
        check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("long_samples", self.long_samples, LONG_SAMPLES)
        if self.preset:
            check_choice("preset", self.preset, tuple(PRESETS))
        if isinstance(self.targets, str):
            check_choice("targets", self.targets, TARGET_PRESETS)
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise StudioError(f"targets must be 'attention', 'all-linear' or a list of module names, "
                              f"not {list(self.targets)!r}.")
        if not all(isinstance(p, str) for p in self.probe_prompts):
            raise StudioError(f"probe_prompts must be a list of prompts (text), not {list(self.probe_prompts)!r}.")
        check_positive("rank", self.rank)
        check_positive("micro_batch_size", self.micro_batch_size)
        check_positive("grad_accum", self.grad_accum)
        check_positive("keep_checkpoints", self.keep_checkpoints)
        check_positive("sample_max_new_tokens", self.sample_max_new_tokens)
        check_seq_len("seq_len", self.seq_len)
        for name in ("warmup_steps", "max_steps", "eval_every", "checkpoint_every", "sample_every",
                     "early_stopping_patience", "memory_every", "seed"):
            check_whole(name, getattr(self, name))
        for name in ("alpha", "dropout", "learning_rate", "warmup_ratio", "epochs", "val_fraction", "weight_decay",
                     "max_grad_norm", "slow_step_factor", "max_file_mb"):
            check_number(name, getattr(self, name))
        if self.max_file_mb <= 0:
            raise StudioError(f"max_file_mb must be positive, not {self.max_file_mb}.")
        if not isinstance(self.gradient_checkpointing, bool):
            raise StudioError(f"gradient_checkpointing must be true or false, not {self.gradient_checkpointing!r}.")
        if self.alpha <= 0:
            raise StudioError(f"alpha must be positive, not {self.alpha}.", hint="A common choice is 2 x rank.")
        if not 0 <= self.dropout < 1:
            raise StudioError(f"dropout must be in [0, 1), not {self.dropout}.")
        if not 0 < self.learning_rate < 1:
            raise StudioError(f"learning_rate {self.learning_rate} is out of range.",
                              hint="LoRA usually trains well between 1e-5 and 5e-4.")
        if not 0 <= self.warmup_ratio < 1:
            raise StudioError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}.")
        if self.max_steps == 0 and not self.epochs > 0:
            raise StudioError(f"epochs must be positive when max_steps is 0, not {self.epochs}.",
                              hint="Give a positive number of epochs or max_steps.")
        if not 0 <= self.val_fraction < 0.9:
            raise StudioError(f"val_fraction must be in [0, 0.9), not {self.val_fraction}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            name = "weight_decay" if self.weight_decay < 0 else "max_grad_norm"
            raise StudioError(f"{name} cannot be negative, not {getattr(self, name)}.")
        if self.slow_step_factor <= 1:
            raise StudioError(f"slow_step_factor must be above 1, not {self.slow_step_factor}.")

    # ------------------------------------------------------------ derived values

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum

    def total_steps(self, train_rows: int) -> int:
        """Optimizer steps for `train_rows` packed rows (max_steps, else epochs over the rows)."""
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = max(1, math.ceil(train_rows / self.effective_batch))
        return max(1, math.ceil(per_epoch * self.epochs))

    def eval_interval(self, total: int) -> int:
        return self.eval_every or max(1, total // 10)

    def checkpoint_interval(self, total: int) -> int:
        return self.checkpoint_every or max(1, total // 5)

    def display_name(self) -> str:
        from pathlib import Path

        return self.adapter_name or (Path(self.data_folder).name if self.data_folder else "") or "adapter"

