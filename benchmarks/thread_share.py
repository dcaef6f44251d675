"""Training steps while a chat generation runs in another process: torch's own threads vs the studio's share.

Two processes on the same cores, as in the app: a chat process that generates without pause (the
chat engine on the base, greedy) and a training process that times LoRA training steps (the studio's
loading, rank 16 on every linear layer, gradient checkpointing, one fixed row of `--seq-len` tokens).
Scenarios, one after the other, each with fresh processes:

- alone:   training only, torch's own thread count (every core);
- default: training beside the chat process, both with torch's own thread count;
- share:   training beside the chat process, both with `apply_thread_share()` (half the cores each,
           or $LORA_STUDIO_TORCH_THREADS).

Prints the median training step and the chat process's tokens per second in each scenario. The
first step of each run is a warm-up and not counted.

    python benchmarks/thread_share.py [--model default|tiny|FOLDER] [--steps 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import WORDS_TEXT, resolve_model  # noqa: E402 - after the path setup

ENV_NAMES = ("LORA_STUDIO_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def share_threads(share: bool) -> int:
    """The thread rule of this scenario; returns torch's thread count."""
    if share:
        from studio.ml.base.threads import apply_thread_share

        apply_thread_share()
    import torch

    return torch.get_num_threads()


def chat_role(args) -> None:
    """Generate until stdin closes; then print tokens and seconds."""
    import threading

    threads = share_threads(args.share)
    from studio.ml.chat.engine import ChatEngine
    from studio.ml.chat.generation import GenerationSettings

    engine = ChatEngine(args.base, quant="none", device="cpu")
    settings = GenerationSettings(temperature=0, max_new_tokens=32)
    ask = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    engine.answers([ask], ["base"], settings)  # warm-up
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    print(json.dumps({"ready": True, "threads": threads}), flush=True)
    tokens, started = 0, time.perf_counter()
    while not closed.is_set():
        tokens += engine.answers([ask], ["base"], settings)[0].tokens
    print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - started}), flush=True)


def train_role(args) -> None:
    """Time `args.steps` training steps after one warm-up step; print them."""
    threads = share_threads(args.share)
    import torch

    from studio.core.train.config import TrainConfig
    from studio.ml.base.hardware import choose_device
    from studio.ml.base.loading import attach_new_adapter, load_base_for_training, load_tokenizer

    tokenizer = load_tokenizer(args.base)
    base = load_base_for_training(args.base, "none", choose_device("cpu"), pad_token_id=tokenizer.pad_token_id)
    model = attach_new_adapter(base, TrainConfig(rank=16, alpha=32, targets="all-linear"), str(args.base))
    ids = tokenizer((WORDS_TEXT + " ") * 40, add_special_tokens=False)["input_ids"][:args.seq_len]
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    seconds = []
    for _ in range(args.steps + 1):
        started = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"threads": threads, "steps": seconds[1:], "tokens": len(ids)}), flush=True)


def spawn(role: str, base: str, share: bool, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}  # torch's own choice unless shared
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    command = [sys.executable, __file__, "--role", role, "--base", base, "--steps", str(args.steps),
               "--seq-len", str(args.seq_len)] + (["--share"] if share else [])
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def scenario(name: str, base: str, args, *, chat: bool, share: bool) -> dict:
    chatter = None
    if chat:
        chatter = spawn("chat", base, share, args)
        ready = json.loads(chatter.stdout.readline())
        assert ready.get("ready"), ready
    trainer = spawn("train", base, share, args)
    out, _ = trainer.communicate()
    result = {"scenario": name, **last_json(out)}
    if chatter is not None:
        out, _ = chatter.communicate("")  # closing stdin ends the chat loop after its current answer
        spoke = last_json(out)
        result["chat_threads"] = ready["threads"]
        result["chat_tokens_per_second"] = spoke["tokens"] / max(spoke["seconds"], 1e-9)
    result["median_step_s"] = statistics.median(result["steps"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default | tiny | a model folder")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--only", choices=["alone", "default", "share"], action="append",
                        help="run only these scenarios")
    parser.add_argument("--role", choices=["chat", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        (chat_role if args.role == "chat" else train_role)(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("LORA_STUDIO_HOME", str(Path(tmp) / "home"))
        base = resolve_model(args.model, Path(tmp))
        print(f"model {Path(base).name}, {args.steps} timed steps of {args.seq_len} tokens, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        plans = {"alone": dict(chat=False, share=False), "default": dict(chat=True, share=False),
                 "share": dict(chat=True, share=True)}
        for name in args.only or list(plans):
            r = scenario(name, base, args, **plans[name])
            chat = (f", chat {r['chat_threads']} threads at {r['chat_tokens_per_second']:.1f} tokens/s"
                    if "chat_threads" in r else "")
            steps = ", ".join(f"{s:.2f}" for s in r["steps"])
            print(f"{name:<8} training {r['threads']} threads: median step {r['median_step_s']:.2f} s "
                  f"(steps {steps}){chat}", flush=True)


if __name__ == "__main__":
    main()
