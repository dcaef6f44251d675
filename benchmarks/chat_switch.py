"""Chat with two adapters on one base: the cost of switching, and of answering in one batch.

What the chat panel relies on, measured on the default model (SmolLM2-135M-Instruct, converted into
a temporary data directory unless $LORA_STUDIO_HOME already has it) or on `--base FOLDER`:

1. switching adapters on the loaded base (peft `set_adapter`) against loading the base with the
   other adapter from scratch, the only alternative without a shared base; the base must not be
   reloaded by a switch (checked);
2. two adapters answering one prompt in one mixed-adapter batch against one after the other
   (greedy, so both ways give the same tokens; checked).

Prints each time and both ratios. Builds on benchmarks/chat_batching.py (its adapters, timer and
prompt are imported, not copied).

    python benchmarks/chat_switch.py [--max-new-tokens 64] [--rounds 3] [--switches 50]
                                     [--quant auto|4bit|none] [--threads N] [--base FOLDER]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_batching import PROMPT, make_adapter, timed  # noqa: E402 - after the path setup


def measure_switch(engine, ids: list[str], switches: int) -> float:
    """Median seconds of one switch between attached adapters (what a pane change costs)."""
    loads = engine.base_loads

    def switch(adapter: str) -> None:
        engine.model.set_adapter(engine.peft_name(engine.load_adapter(adapter)))

    times = [timed(lambda i=i: switch(ids[i % len(ids)]))[0] for i in range(switches)]
    assert engine.base_loads == loads, "switching adapters reloaded the base"
    return statistics.median(times)


def measure_reload(base: Path, adapter: Path, quant: str, rounds: int) -> float:
    """Median seconds to load the base and attach one adapter from scratch."""
    from studio.ml.chat.engine import ChatEngine

    def reload() -> None:
        fresh = ChatEngine(base, quant=quant)
        fresh.load_adapter(adapter)
        fresh.close()

    return statistics.median(timed(reload)[0] for _ in range(rounds))


def measure_batch(engine, ids: list[str], settings, rounds: int) -> tuple[float, float, bool, int]:
    """(one batch s, one after the other s, same answers both ways, tokens per round)."""
    messages = [{"role": "user", "content": PROMPT}]
    engine.answers([messages], ids, settings)  # warm-up
    batch, turn = [], []
    for _ in range(rounds):
        batch.append(timed(lambda: engine.answers([messages], ids, settings, batch=True)))
        turn.append(timed(lambda: engine.answers([messages], ids, settings, batch=False)))
    same = [f.text for f in batch[-1][1]] == [f.text for f in turn[-1][1]]
    tokens = sum(f.tokens for f in batch[-1][1])
    return statistics.median(t for t, _ in batch), statistics.median(t for t, _ in turn), same, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--quant", choices=["auto", "4bit", "none"], default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--base", type=Path, help="a base model folder instead of the default model")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from studio.core.paths import data_dir
    from studio.ml.base.default_model import ensure_default_model
    from studio.ml.chat.engine import ChatEngine
    from studio.ml.chat.generation import GenerationSettings

    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            base = args.base
        else:
            home = data_dir(os.environ.get("LORA_STUDIO_HOME") or Path(tmp) / "home")
            convert_s, base = timed(lambda: ensure_default_model(home))
            print(f"default model ready in {convert_s:.1f} s: {base}")
        adapters = [make_adapter(base, Path(tmp) / name, seed) for seed, name in enumerate(("alpha", "beta"), 1)]
        load_s, engine = timed(lambda: ChatEngine(base, quant=args.quant))
        ids = [engine.load_adapter(a) for a in adapters]
        print(f"base {base.name} on {engine.device} ({engine.quant}, {torch.get_num_threads()} threads), "
              f"loaded in {load_s:.2f} s")

        switch_s = measure_switch(engine, ids, args.switches)
        settings = GenerationSettings(temperature=0, max_new_tokens=args.max_new_tokens)
        batch_s, turn_s, same, tokens = measure_batch(engine, ids, settings, args.rounds)
        engine.close()
        reload_s = measure_reload(base, adapters[1], args.quant, args.rounds)

        print(f"switch adapter (set_adapter, base kept): {switch_s * 1e3:.3f} ms")
        print(f"reload base + adapter:                   {reload_s * 1e3:.1f} ms")
        print(f"  ratio reload / switch: {reload_s / switch_s:,.0f}x")
        print(f"two answers, one batch:        {batch_s:.3f} s ({tokens / batch_s:.1f} tok/s)")
        print(f"two answers, one after other:  {turn_s:.3f} s ({tokens / turn_s:.1f} tok/s)")
        print(f"  ratio in turn / batch: {turn_s / batch_s:.2f}x  (answers identical both ways: {same}; "
              f"{tokens} tokens, {args.max_new_tokens} max each)")


if __name__ == "__main__":
    main()
