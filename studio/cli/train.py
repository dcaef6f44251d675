"""CLI verbs for training data and runs: `scan`, `estimate`, `train`, `runs`, `save-checkpoint`. Thin wrappers."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.verb import AddParser, Output, VerbGroup, verb
from studio.core.checks import check_fits_positions, check_number, check_seq_len
from studio.core.dataset.files import DEFAULT_MAX_FILE_MB
from studio.core.errors import StudioError
from studio.core.paths import DataDir


@verb("scan", "show what the studio makes of a folder of training files")
def cmd_scan(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.dataset import prepare_dataset, scan_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise StudioError(f"{folder} is not a folder.", hint="Give the folder that holds your training files.")
    check_seq_len("--seq-len", args.seq_len)
    check_number("--max-file-mb", args.max_file_mb)
    if args.no_tokenizer:
        report = scan_folder(folder, max_file_mb=args.max_file_mb).report
    else:
        from studio.ml.base.default_model import resolve_base
        from studio.ml.base.loading import load_tokenizer

        tokenizer = load_tokenizer(resolve_base(data, args.base)[0].path)  # the tokenizer training will use
        report = prepare_dataset(folder, tokenizer, seq_len=args.seq_len, max_file_mb=args.max_file_mb).report
    return Output(report.to_dict(), report.to_text())


@verb("estimate", "predict trainable parameters, adapter size and peak GPU memory")
def cmd_estimate(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.basemodels import base_config
    from studio.core.train.estimator import EstimateRequest, estimate, format_bytes, verdict
    from studio.ml.base.hardware import detect_device

    config = base_config(data, args.base)  # the config alone: nothing is loaded or converted
    check_fits_positions("--seq-len", args.seq_len, config, repr(args.base or "the default model"))
    targets = args.targets if args.targets in ("attention", "all-linear") else args.targets.split(",")
    device = detect_device(probe_bnb=False)
    result = estimate(EstimateRequest.on_device(
        device.kind, config=config, quant=args.quant, rank=args.rank, alpha=args.alpha or 2.0 * args.rank,
        targets=targets, method=args.method, seq_len=args.seq_len, batch_size=args.batch_size,
        gradient_checkpointing=not args.no_gradient_checkpointing))
    total = device.total_memory_bytes if device.kind == "cuda" else None
    body = result.to_dict()
    body["device"] = device.name
    body["verdict"] = verdict(result, total) if total else "no GPU: runs on the CPU"
    text = (f"trainable parameters: {result.trainable_params:,} ({result.trainable_percent:.3f}%)\n"
            f"adapter file: {format_bytes(result.adapter_file_bytes)}\n"
            f"predicted peak memory: {format_bytes(result.predicted_peak_bytes)}\n"
            + "".join(f"  {k}: {format_bytes(v)}\n" for k, v in result.memory.items())
            + f"device: {device.name} -> {body['verdict']}")
    return Output(body, text)


@verb("train", "train an adapter from a folder (QLoRA by default)")
def cmd_train(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.cli.train_run import STOPPED_EXIT_CODE, run_from_args

    result = run_from_args(args, data)
    if result.status == "failed":
        raise StudioError(result.message, hint=result.hint or "")
    return Output(result.to_dict(), result.message, exit_code=STOPPED_EXIT_CODE if result.status == "stopped" else 0)


@verb("runs", "list the training runs: status, steps, losses and the checkpoints each one kept")
def cmd_runs(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.train.checkpoints import kept_steps
    from studio.core.train.runs import list_runs

    rows = []
    for run in list_runs(data):
        rows.append({"run_id": run.run_id, "name": run.name, "status": run.status, "step": run.step,
                     "max_steps": run.max_steps, "final_loss": run.final_loss, "best_eval_loss": run.best_eval,
                     "adapter_id": run.adapter_id, "checkpoints": kept_steps(run.run_dir), "message": run.message})
    lines = [f"{r['run_id']}  {r['status']:<11} step {r['step']}/{r['max_steps']}  "
             f"checkpoints at {', '.join(map(str, r['checkpoints'])) or 'none'}" for r in rows]
    return Output({"runs": rows}, "\n".join(lines) or "No training runs yet.")


@verb("save-checkpoint", "add one of a run's kept checkpoints to the library as a new adapter")
def cmd_save_checkpoint(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.ml.train.checkpoint_adapter import save_checkpoint_as_adapter

    entry = save_checkpoint_as_adapter(data, args.run_id, args.step, name=args.name or "")
    return Output({"id": entry.id, "name": entry.name, "path": str(entry.path)},
                  f"Checkpoint {args.step} of {args.run_id} is in the library as {entry.name!r} ({entry.id}).")


def _parsers(add: AddParser) -> None:
    p = add("scan")
    p.add_argument("folder")
    p.add_argument("--base", help="base model whose tokenizer counts the tokens (default: the default model)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--no-tokenizer", action="store_true", help="report files and samples only (fast)")
    p.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                   help="files larger than this are reported, not read (default %(default)g MB)")
    p = add("estimate")
    p.add_argument("--base")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--method", choices=["lora", "dora", "rslora"], default="lora")
    p.add_argument("--targets", default="all-linear", help="attention | all-linear | q_proj,v_proj,...")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=1, help="micro batch")
    p.add_argument("--quant", choices=["4bit", "8bit", "none"], default="4bit")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="estimate without gradient checkpointing (more memory, faster)")
    add("runs")
    p = add("save-checkpoint")
    p.add_argument("run_id")
    p.add_argument("step", type=int, help="the checkpoint's step (`runs` lists the kept ones)")
    p.add_argument("--name", help="the new adapter's name (default: the run's name and the step)")
    from studio.cli.train_run import add_train_arguments

    add_train_arguments(add("train"))


GROUP = VerbGroup((cmd_scan, cmd_estimate, cmd_train, cmd_runs, cmd_save_checkpoint), _parsers)
