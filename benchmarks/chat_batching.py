"""Two adapters answering one prompt: one mixed-adapter batch against one after the other.

On the default model (SmolLM2-135M-Instruct, converted into a temporary data directory unless
$LORA_STUDIO_HOME already has it), two LoRA adapters with small random weights answer the same
prompt greedily, so both ways produce the same tokens. Prints the wall time and tokens/s of each
way and their ratio, and the time to switch adapters (set_adapter) against loading the base with
the adapter from scratch.

    python benchmarks/chat_batching.py [--max-new-tokens 96] [--rounds 3] [--quant auto|4bit|none] [--threads N]

On a CPU shared with other work, pass `--threads 1`: torch's intra-op threads then stop fighting
the other processes (on a busy 2-core machine that alone is a 10x difference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint."


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A rank-16 LoRA on the attention projections with small random weights (answers stay sane)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, init_lora_weights=False,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    peft_model.save_pretrained(out)
    return out


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quant", choices=["auto", "4bit", "none"], default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from studio.core.paths import data_dir
    from studio.ml.base.default_model import ensure_default_model
    from studio.ml.chat.engine import ChatEngine
    from studio.ml.chat.generation import GenerationSettings

    with tempfile.TemporaryDirectory() as tmp:
        home = data_dir(os.environ.get("LORA_STUDIO_HOME") or Path(tmp) / "home")
        base = ensure_default_model(home)
        adapters = [make_adapter(base, Path(tmp) / name, seed) for seed, name in enumerate(("alpha", "beta"), 1)]
        settings = GenerationSettings(temperature=0, max_new_tokens=args.max_new_tokens)
        messages = [{"role": "user", "content": PROMPT}]

        load_s, engine = timed(lambda: ChatEngine(base, quant=args.quant))
        ids = [engine.load_adapter(a) for a in adapters]
        engine.answers([messages], ids, settings)  # warm-up (kernels, caches)
        batch_runs, turn_runs = [], []
        for _ in range(args.rounds):
            batch_runs.append(timed(lambda: engine.answers([messages], ids, settings, batch=True)))
            turn_runs.append(timed(lambda: engine.answers([messages], ids, settings, batch=False)))
        batch_s = statistics.median(r[0] for r in batch_runs)
        turn_s = statistics.median(r[0] for r in turn_runs)
        batched, in_turn = batch_runs[-1][1], turn_runs[-1][1]
        same = [f.text for f in batched] == [f.text for f in in_turn]
        tokens = sum(f.tokens for f in batched)

        print(f"device: {engine.device}, quant: {engine.quant}, base loaded in {load_s:.2f} s")
        print(f"answers identical both ways: {same}; tokens per answer: {[f.tokens for f in batched]}")
        for label, runs, seconds in (("one batch", batch_runs, batch_s), ("one after the other", turn_runs, turn_s)):
            per_pane = ", ".join(f"{f.adapter} {f.tokens_per_second:.1f} tok/s" for f in runs[-1][1])
            print(f"{label:>20}: {seconds:.3f} s for {tokens} tokens = {tokens / seconds:.1f} tok/s ({per_pane})")
        print(f"batch speed-up (one after the other / one batch): {turn_s / batch_s:.2f}x")

        # Switching adapters on the loaded base against loading the base with the adapter anew.
        switch = []
        for i in range(20):
            adapter = ids[i % 2]
            switch.append(timed(lambda a=adapter: engine.model.set_adapter(engine.peft_name(engine.load_adapter(a))))[0])
        engine.close()

        def reload() -> None:
            fresh = ChatEngine(base, quant=args.quant)
            fresh.load_adapter(adapters[0])
            fresh.close()

        reload_s = statistics.median(timed(reload)[0] for _ in range(max(1, args.rounds)))
        switch_s = statistics.median(switch)
        print(f"switch adapter: {switch_s * 1e3:.3f} ms; reload base + adapter: {reload_s:.2f} s; "
              f"ratio {reload_s / switch_s:,.0f}x")


if __name__ == "__main__":
    main()
