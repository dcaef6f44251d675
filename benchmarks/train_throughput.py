"""Training throughput: the studio's run_training vs a plain transformers Trainer + peft script.

Both train the same LoRA (same base, rank, targets, learning rate, micro batch, gradient
accumulation, steps, precision) on the same generated chat data of mixed lengths. The plain script
does what most scripts do: tokenize each conversation, pad each batch to its longest sample. The
studio packs samples into rows of seq_len tokens without padding. Each side runs in its own
subprocess, one after the other, so peak memory is measured per process. Printed: tokens/s (real,
non-padding tokens), samples/s, train time, peak memory (RSS on a CPU, CUDA peak on a GPU), ratios.

    python benchmarks/train_throughput.py [--model tiny|default|FOLDER] [--steps 20] [--quant none|4bit] [--short]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS_TEXT = ("the of and to in is that it was for on are as with his they at be this have from or one had by word but "
         "not what all were we when your can said there use an each which she do how their if will up other about "
         "out many then them these so some her would make like him into time has look two more write go see number "
         "no way could people my than first water been call who oil its now find long down day did get come made may "
         "part river market library train recipe garden weather letter bread music city island")
WORDS = WORDS_TEXT.split()  # noqa: SIM905


def make_data(folder: Path, n: int, seed: int = 0, longest_answer: int = 150) -> Path:
    """n one-turn chats; answers from 5 to `longest_answer` words (most of them short), so the padding
    cost of batching is realistic."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "chats.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(n):
            question = f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "?"
            answer = " ".join(rng.choices(WORDS, k=int(5 + rng.random() ** 2 * (longest_answer - 5)))).capitalize() + "."
            handle.write(json.dumps({"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    return folder


def peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---------------------------------------------------------------- the two workers


def worker_studio(args) -> dict:
    from studio.core.paths import data_dir
    from studio.core.train import events as ev
    from studio.core.train.config import TrainConfig
    from studio.ml.train.run import run_training

    home = data_dir(args.home)
    config = TrainConfig(data_folder=args.data, base=args.base, quant=args.quant, rank=args.rank, alpha=2.0 * args.rank,
                         targets="all-linear", learning_rate=2e-4, max_steps=args.steps,
                         micro_batch_size=args.micro_batch, grad_accum=args.grad_accum, seq_len=args.seq_len,
                         val_fraction=0.0, checkpoint_every=args.steps, sample_every=0, memory_every=0,
                         gradient_checkpointing=args.gradient_checkpointing, device=args.device, dropout=0.0)
    seen: list = []
    result = run_training(config, home, on_event=seen.append)
    if result.status != "finished":
        raise SystemExit(f"studio run {result.status}: {result.message}")
    steps = [e for e in seen if isinstance(e, ev.Step)][args.warmup:]
    seconds = sum(s.step_seconds for s in steps)
    tokens = sum(s.tokens_per_second * s.step_seconds for s in steps)
    samples = sum(s.samples_per_second * s.step_seconds for s in steps)
    return {"train_seconds": seconds, "tokens": tokens, "samples": samples, "steps": len(steps),
            "final_loss": steps[-1].loss, "peak_memory": peak_memory()}


def worker_plain(args) -> dict:
    """What a typical hand-written LoRA script does (HF Trainer + peft, pad to the longest in the batch)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    for line in (Path(args.data) / "chats.jsonl").read_text(encoding="utf-8").splitlines():
        text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=args.seq_len)["input_ids"]
        rows.append({"input_ids": ids})

    counted = {"tokens": 0, "samples": 0}

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = [r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in batch]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
        labels = [[t if m else -100 for t, m in zip(row, row_mask, strict=True)] for row, row_mask in zip(ids, mask, strict=True)]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    class Count(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted["tokens"] += int(inputs["attention_mask"].sum())
            counted["samples"] += int(inputs["input_ids"].shape[0])
            return super().training_step(model, inputs, num_items_in_batch)

    times: list[tuple[float, int, int]] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.mark = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            times.append((now - self.mark, counted["tokens"], counted["samples"]))
            self.mark = now

    cuda = torch.cuda.is_available() and args.device != "cpu"
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    kwargs = {"dtype": dtype}
    if args.quant == "4bit":
        kwargs.update(device_map={"": 0} if cuda else "cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    model = AutoModelForCausalLM.from_pretrained(args.base, **kwargs)
    if args.quant == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
        for module in model.modules():  # the same bitsandbytes CPU guard the studio applies
            if getattr(module, "support_avx512bf16_for_cpu", False):
                module.support_avx512bf16_for_cpu = False
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    torch.manual_seed(42)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    training_args = TrainingArguments(
        output_dir=str(Path(args.home) / "plain-out"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.steps, learning_rate=2e-4, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not cuda, remove_unused_columns=False,
        bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16, seed=42,
        optim=("paged_adamw_8bit" if args.quant != "none" else "adamw_torch_fused") if cuda else "adamw_torch")
    trainer = Count(model=model, args=training_args, train_dataset=rows, data_collator=collate,
                    callbacks=[StepClock()])
    trainer.train()
    before = times[args.warmup - 1] if args.warmup else (0.0, 0, 0)
    measured = times[args.warmup:]
    return {"train_seconds": sum(t[0] for t in measured), "tokens": measured[-1][1] - before[1],
            "samples": measured[-1][2] - before[2], "steps": len(measured),
            "final_loss": float(trainer.state.log_history[-2].get("loss", float("nan"))),
            "peak_memory": peak_memory()}


# ---------------------------------------------------------------- orchestration


def run_worker(kind: str, args, home: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--home", home, "--data", args.data, "--base", args.base,
           "--steps", str(args.steps), "--quant", args.quant, "--rank", str(args.rank), "--seq-len", str(args.seq_len),
           "--micro-batch", str(args.micro_batch), "--grad-accum", str(args.grad_accum), "--warmup", str(args.warmup),
           "--device", args.device] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"the {kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_wall_seconds"] = wall
    return result


def resolve_model(name: str, scratch: Path) -> str:
    if name == "tiny":
        from tests.tiny_model import make_tiny_base

        return str(make_tiny_base(scratch / "tiny-llama"))
    if name == "default":
        from studio.core.paths import data_dir
        from studio.ml.base.default_model import ensure_default_model

        return str(ensure_default_model(data_dir(scratch / "model-home")))
    return str(Path(name).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | default | a model folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the rates")
    parser.add_argument("--quant", choices=["none", "4bit"], default="none")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--short", action="store_true",
                        help="short chat samples (answers of 5 to 30 words): the case packing is for")
    parser.add_argument("--worker", choices=["studio", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        result = (worker_studio if args.worker == "studio" else worker_plain)(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        args.base = resolve_model(args.model, scratch)
        args.data = str(make_data(scratch / "data", args.samples, longest_answer=30 if args.short else 150))
        results = {kind: run_worker(kind, args, str(scratch / f"home-{kind}")) for kind in ("studio", "plain")}
    print(f"model {args.model}, {args.quant}, rank {args.rank}, {args.steps} steps (first {args.warmup} not "
          f"timed), micro batch {args.micro_batch} x {args.grad_accum}, seq_len {args.seq_len}, device {args.device}")
    header = f"{'':10}{'tokens/s':>12}{'samples/s':>12}{'train s':>10}{'tokens':>10}{'samples':>9}{'peak MB':>10}" \
             f"{'process s':>11}{'loss':>8}"
    print(header)
    for kind, r in results.items():
        print(f"{kind:10}{r['tokens'] / r['train_seconds']:12.1f}{r['samples'] / r['train_seconds']:12.2f}"
              f"{r['train_seconds']:10.1f}{r['tokens']:10.0f}{r['samples']:9.0f}{r['peak_memory'] / 2**20:10.0f}"
              f"{r['process_wall_seconds']:11.1f}{r['final_loss']:8.3f}")
    s, p = results["studio"], results["plain"]
    print(f"ratio     {(s['tokens'] / s['train_seconds']) / (p['tokens'] / p['train_seconds']):12.2f}"
          f"{(s['samples'] / s['train_seconds']) / (p['samples'] / p['train_seconds']):12.2f}"
          f"{'':29}{s['peak_memory'] / p['peak_memory']:10.2f}   (studio / plain)")
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ('worker', 'home', 'data', 'base')},
                      "results": results}))


if __name__ == "__main__":
    main()
