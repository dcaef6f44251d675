"""`lora-studio train`: the command-line front door onto `run_training`.

`add_train_arguments(parser)` declares the options, `config_from_args(args)` turns them into a
TrainConfig (which checks every value, naming the field), `run_from_args(args, data)` runs it while streaming every event to stdout (one JSON
object a line with --json, a short human line otherwise), and `train_cli_main(args)` does it all and
returns an exit code (0 finished, 1 failed, 130 stopped). The first Ctrl-C stops cooperatively
(a checkpoint is written; resume with --resume RUN_ID), a second one aborts. The `train` verb in
studio.cli.train registers it with studio.cli.main.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from studio.core.errors import StudioError
from studio.core.leftovers import remove_leftovers
from studio.core.paths import DataDir, data_dir
from studio.core.train.config import METHODS, PRESETS, QUANTS, SCHEDULES, TrainConfig
from studio.core.train.events import (
    Event,
    describe_event,
    event_to_json,
)

STOPPED_EXIT_CODE = 130  # the shell's code for Ctrl-C: a stopped run is not a success a script can build on

# option name -> TrainConfig field, for the options that map one to one
_FIELDS = {
    "name": "adapter_name", "base": "base", "method": "method", "quant": "quant", "rank": "rank", "alpha": "alpha",
    "dropout": "dropout", "lr": "learning_rate", "schedule": "lr_schedule", "warmup_ratio": "warmup_ratio",
    "warmup_steps": "warmup_steps", "epochs": "epochs", "max_steps": "max_steps",
    "micro_batch": "micro_batch_size", "grad_accum": "grad_accum", "seq_len": "seq_len",
    "val_fraction": "val_fraction", "eval_every": "eval_every", "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints", "sample_every": "sample_every", "early_stopping": "early_stopping_patience",
    "seed": "seed", "long_samples": "long_samples", "max_file_mb": "max_file_mb", "parent": "parent_adapter",
    "device": "device", "notes": "notes",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_folder", nargs="?", help="folder with the training files (not needed with --resume)")
    p.add_argument("--name", help="adapter name in the library (default: the folder's name)")
    p.add_argument("--base", help="base model: studio id, Hugging Face cache id or folder (default SmolLM2-135M)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="style / task / knowledge defaults")
    p.add_argument("--config", help="a JSON file of TrainConfig fields (options given here override it)")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--quant", choices=QUANTS, help="base weights: 4bit (QLoRA, default), 8bit or none")
    p.add_argument("--targets", help="attention, all-linear, or comma-separated module names")
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="train this many optimizer steps (overrides --epochs)")
    p.add_argument("--micro-batch", type=int, help="packed rows per forward pass")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--keep-checkpoints", type=int)
    p.add_argument("--sample-every", type=int, help="generate answers to the probe prompts every N steps")
    p.add_argument("--probe", action="append", help="a probe prompt (repeatable)")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="evaluations without improvement")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--long-samples", choices=["truncate", "drop"])
    p.add_argument("--max-file-mb", type=float, help="data files larger than this are reported, not read")
    p.add_argument("--continue", dest="parent", metavar="ADAPTER", help="continue training this library adapter")
    p.add_argument("--resume", metavar="RUN_ID", help="resume a stopped or interrupted run")
    p.add_argument("--device", choices=["auto", "cuda", "cpu", "mps"])
    p.add_argument("--notes")
    p.add_argument("--tags", nargs="+", metavar="TAG", help="the adapter's tags in the library")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if getattr(args, "config", None):
        try:
            stored = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise StudioError(f"Could not read the training config {args.config}: {err}.") from err
        if not isinstance(stored, dict):
            raise StudioError(f"The training config {args.config} should hold a JSON object of TrainConfig "
                              f"fields, not a {type(stored).__name__}.",
                              hint='For example {"rank": 8, "epochs": 2}.')
        values.update(stored)
    if getattr(args, "resume", None):
        return TrainConfig(resume=args.resume)
    preset = getattr(args, "preset", None)
    if preset:
        values = {**PRESETS[preset], "preset": preset, **values}
    for option, name in _FIELDS.items():
        value = getattr(args, option, None)
        if value is not None:
            values[name] = value
    if getattr(args, "data_folder", None):
        values["data_folder"] = str(Path(args.data_folder).expanduser().resolve())
    targets = getattr(args, "targets", None)
    if targets:
        values["targets"] = targets if targets in ("attention", "all-linear") else \
            [t.strip() for t in targets.split(",") if t.strip()]
    if getattr(args, "probe", None):
        values["probe_prompts"] = list(args.probe)
    if getattr(args, "tags", None):
        values["tags"] = list(args.tags)
    if getattr(args, "no_gradient_checkpointing", False):
        values["gradient_checkpointing"] = False
    return TrainConfig.from_dict(values)


def run_from_args(args: argparse.Namespace, data: DataDir, out: TextIO | None = None):
    """Run training from parsed arguments, streaming events to `out`; returns the RunResult."""
    from studio.ml.train.run import run_training

    out = out or sys.stdout
    as_json = bool(getattr(args, "json", False))
    config = config_from_args(args)
    stop = threading.Event()

    def on_event(event: Event) -> None:
        line = event_to_json(event) if as_json else describe_event(event)
        if line is not None:
            print(line, file=out, flush=True)

    def on_sigint(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("Stopping after this step (Ctrl-C again to abort)...", file=sys.stderr, flush=True)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return run_training(config, data, on_event=on_event, should_stop=stop.is_set)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def train_cli_main(args: argparse.Namespace, data: DataDir | None = None) -> int:
    """The whole `train` verb: 0 finished, 1 failed (or bad arguments), 130 stopped."""
    try:
        if data is None:
            data = data_dir(args.home) if getattr(args, "home", None) else data_dir()
            remove_leftovers(data)  # a start of the CLI, like studio.cli.main's
        result = run_from_args(args, data)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)  # the last line: the result
    return {"finished": 0, "stopped": STOPPED_EXIT_CODE}.get(result.status, 1)


def main(argv: list[str] | None = None) -> int:
    """`python -m studio.cli.train_run FOLDER [options]` (the same as `lora-studio train`)."""
    parser = argparse.ArgumentParser(prog="lora-studio train", description="Train a LoRA adapter on a folder.")
    parser.add_argument("--home", help="data directory (default: $LORA_STUDIO_HOME)")
    parser.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    add_train_arguments(parser)
    return train_cli_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
