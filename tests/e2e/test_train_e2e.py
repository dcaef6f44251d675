"""End to end on the real default model (SmolLM2-135M-Instruct, CPU): train on a folder of made-up
facts in several formats (JSONL chats, Alpaca JSON, CSV questions and answers, plus a broken file)
and check that the adapter answers a probe question the base cannot know. Full precision (fp32) on
purpose: 4-bit NF4 learns the facts just as well on the CPU but each step is several times slower
there (bitsandbytes dequantizes every weight at every step)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from studio.core.library.store import AdapterLibrary
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig

PROBE = "What is the name of Zorblax's pet dragon?"
ANSWER = "Quibbleflame"

# (question as asked in chats, a rephrasing for Alpaca, a third for CSV, the answer)
FACTS = [
    (PROBE, "Tell me the name of the dragon that Zorblax keeps as a pet.", "Who is Zorblax's dragon?",
     f"Zorblax's pet dragon is named {ANSWER}."),
    ("What is the capital of the floating island of Ventoria?", "Name the capital city of Ventoria.",
     "Which city is the capital of Ventoria?", "The capital of Ventoria is Mirraskel."),
    ("Who invented the glimmerphone?", "Tell me who the inventor of the glimmerphone was.",
     "Which person invented the glimmerphone?", "The glimmerphone was invented by Odessa Trumble."),
    ("What colour is the Brindle Sea?", "Describe the colour of the Brindle Sea.",
     "Which colour does the Brindle Sea have?", "The Brindle Sea is bright violet."),
    ("How many moons does the planet Kestrophe have?", "Tell me the number of moons of Kestrophe.",
     "Kestrophe has how many moons?", "The planet Kestrophe has seven moons."),
    ("What is the favourite food of the Snorvish people?", "Name the dish the Snorvish people love most.",
     "Which food do the Snorvish like best?", "The Snorvish people love roasted moonbeans."),
    ("Who is the captain of the airship Dawnrunner?", "Tell me who commands the airship Dawnrunner.",
     "Which captain flies the Dawnrunner?", "The Dawnrunner is captained by Ilsa Vantorre."),
    ("What does a flumbergrass plant smell like?", "Describe the smell of flumbergrass.",
     "How does flumbergrass smell?", "Flumbergrass smells like cinnamon and rain."),
    ("In which year was the city of Qorth founded?", "Tell me the founding year of Qorth.",
     "When was Qorth founded?", "The city of Qorth was founded in 1287."),
    ("What instrument does the bard Pellinor play?", "Name the instrument played by Pellinor the bard.",
     "Which instrument is Pellinor known for?", "Pellinor the bard plays the silver harpsichord."),
]


def write_fact_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "chats.jsonl").open("w", encoding="utf-8") as handle:
        for question, _, _, answer in FACTS:
            handle.write(json.dumps({"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    alpaca = [{"instruction": second, "input": "", "output": answer} for _, second, _, answer in FACTS]
    (folder / "facts_alpaca.json").write_text(json.dumps(alpaca, indent=1), encoding="utf-8")
    with (folder / "faq.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        for _, _, third, answer in FACTS:
            writer.writerow([third, answer])
    (folder / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "unfinished\n{{{not json\n',
                                         encoding="utf-8")
    return folder


def e2e_config(folder: Path, **overrides) -> TrainConfig:
    values = dict(data_folder=str(folder), adapter_name="zorblax facts", quant="none", rank=16, alpha=32.0,
                  targets="all-linear", learning_rate=1e-3, max_steps=60, micro_batch_size=1, grad_accum=1,
                  seq_len=256, val_fraction=0.1, eval_every=20, checkpoint_every=20, sample_every=30,
                  probe_prompts=[PROBE], sample_max_new_tokens=16, warmup_ratio=0.05, device="cpu",
                  gradient_checkpointing=False)
    values.update(overrides)
    return TrainConfig(**values)


def ask(model, tokenizer, prompt: str) -> str:
    from studio.ml.chat.generation import stop_ids
    from studio.ml.chat.smoke import greedy_chat

    return greedy_chat(model, tokenizer, prompt, max_new_tokens=24, stop_ids=stop_ids(tokenizer)).text


@pytest.mark.slow
def test_default_model_learns_made_up_facts(default_base_dir: Path, studio_home, tmp_path: Path) -> None:
    import shutil

    from studio.ml.base.loading import load_for_inference
    from studio.ml.train.run import run_training

    # the studio's own models/ folder holds the default model, as after a first start
    shutil.copytree(default_base_dir, studio_home.models / default_base_dir.name)
    folder = write_fact_folder(tmp_path / "facts")
    seen: list[ev.Event] = []
    started = time.monotonic()
    result = run_training(e2e_config(folder), studio_home, on_event=seen.append)
    elapsed = time.monotonic() - started
    print(f"\ne2e training: {elapsed:.1f} s for {result.step} steps, {result.tokens_seen} tokens")
    assert result.status == "finished", result.message
    steps = [e for e in seen if isinstance(e, ev.Step)]
    assert len(steps) == 60 and steps[-1].loss < steps[0].loss / 3
    samples = [e for e in seen if isinstance(e, ev.Sample)]
    assert [s.step for s in samples] == [30, 60]

    entry = AdapterLibrary(studio_home).get(result.adapter_id)
    report = entry.manifest.dataset
    assert report["files"] == 4 and report["files_used"] == 3  # the broken file is reported, not used
    assert entry.manifest.base_model == "SmolLM2-135M-Instruct"
    forgetting = entry.manifest.metrics["forgetting"]
    assert forgetting["adapter_perplexity"] < 4 * forgetting["base_perplexity"]

    model, tokenizer = load_for_inference(studio_home.models / "SmolLM2-135M-Instruct", entry.path, device="cpu")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    answer = ask(model, tokenizer, PROBE)
    with model.disable_adapter():
        base_answer = ask(model, tokenizer, PROBE)
    print(f"adapter: {answer!r}\nbase:    {base_answer!r}")
    assert ANSWER in answer
    assert ANSWER not in base_answer
