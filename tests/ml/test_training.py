"""The training engine on the tiny random model: events and metrics.jsonl, the adapter in the
library (plain-peft loadable, same logits as the studio's loading, the best checkpoint), stop and
resume (same total steps, the loss continues), OOM recovery and failure, no leaked models, the
bitsandbytes CPU repacking guard, and a SIGKILL in the middle of a run."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.library.manifest import MANIFEST_NAME
from studio.core.library.store import AdapterLibrary
from studio.core.progress import StageProgress
from studio.core.train import checkpoints
from studio.core.train import events as ev
from studio.core.train.config import PRESETS, TrainConfig
from studio.core.train.run_dir import RunDir, step_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def math_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 one-turn chats ("What is a plus b?") in a JSONL file."""
    import random

    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("math-data")
    lines = []
    for _ in range(40):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                              {"role": "assistant", "content": f"The answer is {a + b}."}]}))
    (folder / "math.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_config(folder: Path, base: Path, **overrides) -> TrainConfig:
    values = dict(data_folder=str(folder), base=str(base), adapter_name="math", quant="none", rank=4, alpha=8.0,
                  max_steps=8, micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=4, checkpoint_every=4,
                  learning_rate=5e-3, memory_every=2, sample_every=4, sample_max_new_tokens=4, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def train(config: TrainConfig, home, should_stop=None):
    from studio.ml.train.run import run_training

    seen: list[ev.Event] = []
    result = run_training(config, home, on_event=seen.append, should_stop=should_stop)
    return result, seen


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def plain_peft_logits(base: Path, adapter: Path, ids, quant: str = "none"):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32}
    if quant == "4bit":
        kwargs.update(device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), adapter).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- plain data: events, config, checkpoints


def test_events_round_trip_through_json_lines(tmp_path: Path) -> None:
    samples = [
        ev.Step(step=3, max_steps=9, epoch=0.5, loss=1.25, learning_rate=1e-4, grad_norm=None, tokens_per_second=10.0,
                samples_per_second=1.0, mfu=None, eta_seconds=4.0, micro_batch_size=2, tokens_seen=30),
        ev.Eval(step=3, eval_loss=1.5, is_best=True),
        ev.Memory(step=3, allocated=1, reserved=2, peak=3, rss=4, total=5),
        ev.Sample(step=3, prompt="Hi?", completion="Hello."),
        ev.Checkpoint(step=3, path="/x/checkpoint-3", is_best=False),
        ev.Preparing(message="Loading…"),
        ev.Preparing(message="Converting…", fraction=0.25),
        ev.Warning(step=3, message="slow"),
        ev.OOMRecovered(step=4, new_micro_batch=1, new_grad_accum=8, message="m"),
        ev.Stopped(step=4, checkpoint=None),
        ev.Finished(adapter_id="a", path="/p", final_loss=None, eval_loss=1.0, tokens_seen=5,
                    tokens_per_second=2.0, peak_memory=7, duration_s=1.5),
        ev.Failed(step=4, message="m", hint="h", checkpoint="/c"),
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(ev.event_to_json(e) + "\n" for e in samples) + '{"type": "step", "ste', encoding="utf-8")
    assert ev.read_events(path) == samples  # the torn last line (a killed writer) is skipped
    assert {e.to_dict()["type"] for e in samples} == set(ev.EVENT_TYPES) - {"run_started"}
    assert ev.event_to_json(ev.Eval(step=1, eval_loss=float("nan"))).count("null") == 1
    with pytest.raises(ValueError):
        ev.event_from_dict({"type": "nonsense"})


def test_train_config_presets_round_trip_and_checks() -> None:
    knowledge = TrainConfig.from_preset("knowledge", data_folder="d")
    assert (knowledge.rank, knowledge.alpha) == (64, 128.0) and knowledge.preset == "knowledge"
    assert all(p["alpha"] == 2 * p["rank"] for p in PRESETS.values())
    style = TrainConfig.from_preset("style", data_folder="d", targets=["q_proj"])
    assert TrainConfig.from_dict(json.loads(json.dumps(style.to_dict()))) == style
    for bad in (dict(method="ia3"), dict(quant="2bit"), dict(rank=0), dict(learning_rate=3.0),
                dict(targets=[]), dict(seq_len=4), dict(max_steps=0, epochs=0)):
        with pytest.raises(StudioError):
            TrainConfig(data_folder="d", **bad)
    with pytest.raises(StudioError, match="Unknown training setting"):
        TrainConfig.from_dict({"data_folder": "d", "rnak": 8})
    assert TrainConfig(data_folder="d", micro_batch_size=2, grad_accum=4).total_steps(17) == 9  # 3 epochs x 3


def test_pad_token_is_made_distinct_from_eos(tiny_base_dir: Path) -> None:
    from transformers import AutoTokenizer

    from studio.ml.base.loading import fix_pad_token

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    tok.pad_token = tok.eos_token  # as SmolLM2 ships it
    assert "distinct" in fix_pad_token(tok)
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token not in tok.chat_template
    assert len(tok) == len(AutoTokenizer.from_pretrained(tiny_base_dir))  # nothing added, no resize
    assert fix_pad_token(tok) is None


def test_cpu_4bit_layers_keep_their_gradient_after_an_eval_forward(tiny_base_dir: Path) -> None:
    """bitsandbytes would repack the weights for inference and lose the input gradient afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model

    from studio.ml.base.hardware import choose_device
    from studio.ml.base.loading import load_base_for_training

    base = load_base_for_training(tiny_base_dir, "4bit", choose_device("cpu"), gradient_checkpointing=False)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(5, 400, (2, 32))

    def first_layer_grad():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.weight.grad.clone()

    before = first_layer_grad()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert torch.equal(first_layer_grad(), before)


# ---------------------------------------------------------------- a whole run


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_short_run_reports_events_and_adds_a_loadable_adapter(quant, math_folder, tiny_base_dir, studio_home):
    import torch

    from studio.ml.base.loading import load_for_inference

    result, seen = train(tiny_config(math_folder, tiny_base_dir, quant=quant), studio_home)
    assert result.status == "finished", result.message
    steps = of(seen, ev.Step)
    assert [s.step for s in steps] == list(range(1, 9))
    assert all(s.max_steps == 8 and s.tokens_per_second > 0 and s.eta_seconds >= 0 and s.mfu is None
               and math.isfinite(s.loss) and s.micro_batch_size == 2 for s in steps)
    assert steps[-1].loss < steps[0].loss and steps[-1].tokens_seen == result.tokens_seen > 0
    assert [e.step for e in of(seen, ev.Eval)] == [4, 8]
    assert of(seen, ev.Memory) and all(m.rss > 0 and m.total > m.rss for m in of(seen, ev.Memory))
    assert [c.step for c in of(seen, ev.Checkpoint)] == [4, 8]
    assert [s.step for s in of(seen, ev.Sample)] == [4, 4, 8, 8][: len(of(seen, ev.Sample))] and of(seen, ev.Sample)
    preparing = [e for e in seen if isinstance(e, ev.Preparing)]
    assert seen[:len(preparing)] == preparing and preparing[-1].message.startswith("Loading ")  # then the run starts
    started = seen[len(preparing)]
    assert isinstance(started, ev.RunStarted) and started.quant == quant and isinstance(seen[-1], ev.Finished)
    # metrics.jsonl holds the same events, config.json the config
    assert RunDir(result.run_dir).events() == seen
    stored = TrainConfig.from_dict(RunDir(result.run_dir).read_config())
    assert stored == tiny_config(math_folder, tiny_base_dir, quant=quant)
    # the library has it, with the studio's manifest
    entry = AdapterLibrary(studio_home).get(result.adapter_id)
    m = entry.manifest
    assert (m.name, m.method, m.rank, m.alpha, m.source) == ("math", "lora", 4, 8.0, "trained")
    assert m.base_fingerprint and len(m.chat_template_sha256) == 64 and "q_proj" in " ".join(m.target_modules)
    assert m.hyperparameters["quant"] == quant and m.dataset["train_samples"] > 0
    assert m.metrics["tokens_seen"] == result.tokens_seen and m.metrics["forgetting"]["base_perplexity"] > 0
    assert m.metrics["best_eval_loss"] == min(e.eval_loss for e in of(seen, ev.Eval)) == result.eval_loss
    # the saved adapter is the best checkpoint's, and plain peft loads it with the studio's logits
    best = RunDir(result.run_dir).checkpoint(m.metrics["best_step"])
    assert (best / "adapter_model.safetensors").read_bytes() == (entry.path / "adapter_model.safetensors").read_bytes()
    ids = torch.tensor([[1, 20, 33, 47, 5, 60, 71, 2]])
    studio_model, _ = load_for_inference(tiny_base_dir, entry.path, quant=quant, device="cpu")
    with torch.no_grad():
        ours = studio_model(input_ids=ids).logits
        with studio_model.disable_adapter():
            base_logits = studio_model(input_ids=ids).logits
    theirs = plain_peft_logits(tiny_base_dir, entry.path, ids, quant=quant)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours - base_logits).abs().max() > 1e-3  # the adapter learned something


def test_stop_leaves_a_checkpoint_and_resume_ends_at_the_same_step(math_folder, tiny_base_dir, studio_home):
    config = tiny_config(math_folder, tiny_base_dir, checkpoint_every=2, sample_every=0)
    reference, ref_events = train(config, studio_home)
    ref_loss = {s.step: s.loss for s in of(ref_events, ev.Step)}
    ref_lr = {s.step: s.learning_rate for s in of(ref_events, ev.Step)}

    stop_after = 3
    seen_steps: list[int] = []

    def should_stop() -> bool:
        return bool(seen_steps) and seen_steps[-1] >= stop_after

    from studio.ml.train.run import run_training

    events_a: list[ev.Event] = []

    def record(event):
        events_a.append(event)
        if isinstance(event, ev.Step):
            seen_steps.append(event.step)

    stopped = run_training(config, studio_home, on_event=record, should_stop=should_stop)
    # should_stop is polled at each step end; the Step event of step k comes right after it
    assert stopped.status == "stopped" and isinstance(events_a[-1], ev.Stopped)
    stop_step = events_a[-1].step
    assert stop_after <= stop_step < 8 and Path(events_a[-1].checkpoint).name == f"checkpoint-{stop_step}"
    assert checkpoints.is_complete(events_a[-1].checkpoint)
    assert AdapterLibrary(studio_home).list() == [AdapterLibrary(studio_home).get(reference.adapter_id)]

    resumed, events_b = train(TrainConfig(resume=stopped.run_id), studio_home)
    assert resumed.status == "finished" and resumed.run_id == stopped.run_id and resumed.step == 8
    start = of(events_b, ev.RunStarted)[0]
    assert start.start_step == stop_step and start.resumed_from == events_a[-1].checkpoint
    steps_b = of(events_b, ev.Step)
    assert [s.step for s in steps_b] == list(range(stop_step + 1, 9))
    for s in steps_b:  # optimizer, scheduler and data order continue where they were
        assert s.learning_rate == pytest.approx(ref_lr[s.step], rel=1e-6)
        assert s.loss == pytest.approx(ref_loss[s.step], abs=1e-4)
    assert steps_b[0].loss < ref_loss[1] - 0.05  # not reset to the untrained loss
    all_events = RunDir(stopped.run_dir).events()
    assert all_events == events_a + events_b
    with pytest.raises(StudioError, match="already finished"):
        train(TrainConfig(resume=stopped.run_id), studio_home)


def test_oom_with_micro_batch_2_halves_it_and_goes_on_from_the_last_step(math_folder, tiny_base_dir, studio_home,
                                                                         monkeypatch):
    from studio.ml.train.run import OOM_TEST_ENV

    monkeypatch.setenv(OOM_TEST_ENV, "5")
    config = tiny_config(math_folder, tiny_base_dir, checkpoint_every=3, eval_every=3, sample_every=0, grad_accum=2)
    result, seen = train(config, studio_home)
    assert result.status == "finished" and result.step == 8
    (oom,) = of(seen, ev.OOMRecovered)
    assert (oom.step, oom.new_micro_batch, oom.new_grad_accum) == (5, 1, 4) and oom.message.endswith("from step 4.")
    starts = of(seen, ev.RunStarted)
    assert [(s.attempt, s.micro_batch_size, s.grad_accum) for s in starts] == [(1, 2, 2), (2, 1, 4)]
    # Step 4 was saved as the error struck (the schedule's last checkpoint was step 3): no step is done twice.
    assert Path(starts[1].resumed_from).name == "checkpoint-4" and starts[1].start_step == 4
    assert [c.step for c in of(seen, ev.Checkpoint)][:2] == [3, 4]
    assert [s.step for s in of(seen, ev.Step)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert of(seen, ev.Step)[-1].micro_batch_size == 1
    saved = RunDir(result.run_dir).read_config()
    assert saved["micro_batch_size"] == 1  # rewritten for a later resume, and it carries no test hook
    assert not [key for key in saved if "oom" in key.lower()] and saved == TrainConfig.from_dict(saved).to_dict()


def test_oom_at_micro_batch_1_fails_cleanly_and_frees_the_model(math_folder, tiny_base_dir, studio_home,
                                                               monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.ml.base import loading as model_loading

    loaded: list[weakref.ref] = []
    real_loader = model_loading.load_base_for_training

    def tracking_loader(*args, **kwargs):
        model = real_loader(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(model_loading, "load_base_for_training", tracking_loader)
    from studio.ml.train.run import OOM_TEST_ENV

    monkeypatch.setenv(OOM_TEST_ENV, "5")
    config = tiny_config(math_folder, tiny_base_dir, micro_batch_size=1, checkpoint_every=3, eval_every=3,
                         sample_every=0)
    failed, seen = train(config, studio_home)
    assert failed.status == "failed" and isinstance(seen[-1], ev.Failed)
    # the last completed step was checkpointed as the error struck (the schedule's last one was step 3)
    assert "Out of memory" in seen[-1].message and "seq_len" in seen[-1].hint
    assert Path(seen[-1].checkpoint).name == "checkpoint-4" and checkpoints.is_complete(seen[-1].checkpoint)
    assert AdapterLibrary(studio_home).list() == []
    gc.collect()
    assert loaded and all(ref() is None for ref in loaded), "the failed run's model is still alive"
    # the checkpoint it left loads in plain peft
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), seen[-1].checkpoint)

    monkeypatch.delenv(OOM_TEST_ENV)
    ok, seen2 = train(tiny_config(math_folder, tiny_base_dir, sample_every=0), studio_home)
    assert ok.status == "finished" and isinstance(seen2[-1], ev.Finished)
    gc.collect()
    assert len(loaded) == 2 and all(ref() is None for ref in loaded), "the finished run's model is still alive"


@pytest.mark.parametrize("method", ["dora", "rslora"])
def test_dora_and_rslora_train(method, math_folder, tiny_base_dir, studio_home):
    result, _ = train(tiny_config(math_folder, tiny_base_dir, method=method, max_steps=2, eval_every=2,
                                  sample_every=0), studio_home)
    assert result.status == "finished"
    entry = AdapterLibrary(studio_home).get(result.adapter_id)
    config = json.loads((entry.path / "adapter_config.json").read_text())
    assert entry.manifest.method == method and config["use_dora"] == (method == "dora")
    assert config["use_rslora"] == (method == "rslora")


def test_continue_training_starts_from_the_parent_and_records_it(math_folder, tiny_base_dir, studio_home):
    parent, parent_events = train(tiny_config(math_folder, tiny_base_dir, sample_every=0), studio_home)
    child, child_events = train(tiny_config(math_folder, tiny_base_dir, sample_every=0, rank=8, max_steps=2,
                                            adapter_name="math 2", parent_adapter=parent.adapter_id), studio_home)
    assert child.status == "finished"
    manifest = AdapterLibrary(studio_home).get(child.adapter_id).manifest
    assert manifest.lineage.parents == [parent.adapter_id] and manifest.lineage.recipe["kind"] == "continued"
    assert manifest.rank == 4  # the parent's shape is kept
    first_parent, first_child = of(parent_events, ev.Step)[0].loss, of(child_events, ev.Step)[0].loss
    assert first_child < first_parent - 0.1  # it starts from the trained weights, not from scratch


def test_early_stopping_keeps_the_best_checkpoint(math_folder, tiny_base_dir, studio_home):
    result, seen = train(tiny_config(math_folder, tiny_base_dir, learning_rate=1e-9, eval_every=2, checkpoint_every=8,
                                     early_stopping_patience=1, sample_every=0), studio_home)
    assert result.status == "finished" and result.step == 4
    assert any(isinstance(e, ev.Warning) and "Early stopping" in e.message for e in seen)
    manifest = AdapterLibrary(studio_home).get(result.adapter_id).manifest
    assert manifest.metrics["early_stopped"] and manifest.metrics["best_step"] in (2, 4)


def test_slow_steps_are_reported_and_mfu_needs_a_known_gpu(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from studio.ml.train.callbacks import RunTracker, StudioCallback, peak_flops

    assert peak_flops("cuda", "NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu", "AMD EPYC") is None
    assert peak_flops("cuda", "Some Future GPU") is None
    emitted: list[ev.Event] = []
    tracker = RunTracker(step_times=[0.05] * 12)
    callback = StudioCallback(
        emit=emitted.append, tracker=tracker, should_stop=lambda: False, run_dir=RunDir(tmp_path), micro_batch_size=1,
        keep_checkpoints=1, device_kind="cuda", device_name="NVIDIA H100", device_total=1, model_params=1,
        memory_every=0, sample_every=0, probes=[], tokenizer=None, max_new_tokens=1, early_stopping_patience=0,
        slow_step_factor=3.0, counters=lambda: (0, 0))
    state = TrainerState(global_step=13, max_steps=100)
    callback._mark = time.perf_counter() - 0.5  # a 0.5 s step after 0.05 s ones
    callback.on_step_end(TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl())
    (warning,) = emitted
    assert isinstance(warning, ev.Warning) and "spilling into system memory" in warning.message


def test_quantization_this_machine_lacks_falls_back_to_full_precision(math_folder, tiny_base_dir, studio_home,
                                                                     monkeypatch):
    from studio.ml.base import loading as model_loading

    real_loader = model_loading.load_base_for_training

    def no_bitsandbytes(path, quant, *args, **kwargs):  # as on a machine where bitsandbytes cannot run
        if quant != "none":
            raise RuntimeError("bitsandbytes has no kernels for this device")
        return real_loader(path, quant, *args, **kwargs)

    monkeypatch.setattr(model_loading, "load_base_for_training", no_bitsandbytes)
    result, seen = train(tiny_config(math_folder, tiny_base_dir, quant="4bit", max_steps=2, sample_every=0),
                         studio_home)
    assert result.status == "finished"
    (warning,) = of(seen, ev.Warning)
    assert "4bit quantization does not work" in warning.message and of(seen, ev.RunStarted)[0].quant == "none"
    assert AdapterLibrary(studio_home).get(result.adapter_id).manifest.hyperparameters["quant"] == "none"


def test_bad_inputs_fail_with_a_message(tiny_base_dir, studio_home, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result, seen = train(tiny_config(empty, tiny_base_dir), studio_home)
    assert result.status == "failed" and isinstance(seen[-1], ev.Failed) and seen[-1].message
    with pytest.raises(StudioError, match="no training run"):
        train(TrainConfig(resume="nope"), studio_home)


def test_the_default_models_first_conversion_is_reported_as_it_goes(math_folder, tiny_base_dir, studio_home,
                                                                      monkeypatch):
    """Training the default base on a fresh data directory converts it first (~20 s): the run says so."""
    from studio.ml.base import default_model

    def convert(data, progress=None):  # the conversion itself is tested in tests/e2e/test_default_model.py
        progress(StageProgress("convert", 0.5, "Dequantizing the weights…"))
        return tiny_base_dir

    monkeypatch.setattr(default_model, "ensure_default_model", convert)
    config = tiny_config(math_folder, tiny_base_dir, max_steps=2, eval_every=0, checkpoint_every=0, sample_every=0)
    result, seen = train(config.replace(base=""), studio_home)
    assert result.status == "finished", result.message
    first = of(seen, ev.Preparing)[0]
    assert first.fraction == 0.5 and first.message.startswith("First use of the default model")
    assert seen.index(first) < seen.index(of(seen, ev.RunStarted)[0])


def test_cli_entry_point_streams_json_events(math_folder, tiny_base_dir, studio_home, capsys):
    from studio.cli.train_run import main

    code = main(["--home", str(studio_home.root), "--json", str(math_folder), "--base", str(tiny_base_dir),
                 "--quant", "none", "--rank", "4", "--max-steps", "3", "--seq-len", "64", "--micro-batch", "2",
                 "--grad-accum", "1", "--device", "cpu", "--name", "from cli", "--targets", "q_proj,v_proj",
                 "--tags", "support", "tone", "support"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    streamed = [ev.event_from_dict(json.loads(line)) for line in lines[:-1]]  # one event a line,
    assert isinstance(streamed[0], ev.Preparing) and isinstance(streamed[-1], ev.Finished)
    assert len(of(streamed, ev.RunStarted)) == 1
    result = json.loads(lines[-1])  # then the result object
    assert result["status"] == "finished" and result["step"] == 3 and result["adapter_id"] == streamed[-1].adapter_id
    assert result["tokens_per_second"] == streamed[-1].tokens_per_second > 0
    assert result["peak_memory_bytes"] == streamed[-1].peak_memory > 0
    entry = AdapterLibrary(studio_home).get("from cli")
    assert entry.manifest.target_modules == ["q_proj", "v_proj"] and entry.manifest.rank == 4
    # the tags are part of the run's config and came out with the adapter's one manifest write
    assert json.loads((entry.path / MANIFEST_NAME).read_text())["tags"] == ["support", "tone"]
    assert RunDir(Path(result["run_dir"])).read_config()["tags"] == ["support", "tone"]
    assert json.loads((entry.path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tiny_base_dir)


def test_a_kept_checkpoint_the_user_picks_becomes_an_adapter(math_folder, tiny_base_dir, studio_home, capsys):
    """Not only the best: any complete checkpoint the run kept can be saved to the library (CLI verbs)."""
    from safetensors.torch import load_file

    from studio.cli.main import run

    result, _ = train(tiny_config(math_folder, tiny_base_dir, adapter_name="picked", keep_checkpoints=5,
                                  checkpoint_every=2, eval_every=2, max_steps=6), studio_home)
    assert result.status == "finished"
    assert run(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["run_id"], r["status"], r["checkpoints"]) for r in listed] == [(result.run_id, "finished", [2, 4, 6])]

    library = AdapterLibrary(studio_home)
    before = [entry.id for entry in library.list()]
    assert run(["save-checkpoint", result.run_id, "3"]) == 1  # not a kept step: refused, library untouched
    assert "steps 2, 4, 6" in capsys.readouterr().err and [e.id for e in library.list()] == before

    assert run(["save-checkpoint", result.run_id, "2", "--name", "early", "--json"]) == 0
    saved = library.get(json.loads(capsys.readouterr().out)["id"])
    checkpoint = RunDir(result.run_dir).checkpoint(2)
    want, got = load_file(checkpoint / "adapter_model.safetensors"), load_file(saved.path / "adapter_model.safetensors")
    assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
    finished = library.get(result.adapter_id).manifest
    manifest = saved.manifest
    assert manifest.name == "early" and manifest.metrics["steps"] == 2 and manifest.metrics["chosen_checkpoint"]
    assert manifest.lineage.recipe == {"kind": "checkpoint", "run_id": result.run_id, "step": 2}
    assert (manifest.base_model, manifest.base_fingerprint, manifest.rank, manifest.hyperparameters) == (
        finished.base_model, finished.base_fingerprint, finished.rank, finished.hyperparameters)
    config = json.loads((saved.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base_dir)

    # The finished adapter deleted: the manifest comes from the run's config instead.
    library.delete(result.adapter_id)
    assert run(["save-checkpoint", result.run_id, "4", "--json"]) == 0
    later = library.get(json.loads(capsys.readouterr().out)["id"]).manifest
    assert later.name == "picked step 4" and later.base_fingerprint == finished.base_fingerprint
    assert later.hyperparameters["run_id"] == result.run_id and later.metrics["steps"] == 4


# ---------------------------------------------------------------- a hard kill in the middle


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from studio.core.paths import data_dir
    from studio.core.train.config import TrainConfig
    from studio.ml.train.run import run_training
    config = TrainConfig.from_dict(__import__("json").loads(sys.argv[2]))
    def slow(event):
        if event.to_dict()["type"] == "step":
            time.sleep(0.3)  # keep the run going long enough to be killed in the middle
    run_training(config, data_dir(sys.argv[1]), on_event=slow)
""")


@pytest.mark.slow
def test_sigkill_mid_run_leaves_a_resumable_run(math_folder, tiny_base_dir, studio_home):
    config = tiny_config(math_folder, tiny_base_dir, max_steps=16, checkpoint_every=2, eval_every=8, sample_every=0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(studio_home.root), json.dumps(config.to_dict())],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list(studio_home.runs.iterdir())
            if runs and checkpoints.complete_checkpoints(RunDir(runs[0])):
                run_dir = runs[0]
                break
            time.sleep(0.05)
        assert run_dir is not None, proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
        time.sleep(0.4)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    library = AdapterLibrary(studio_home)
    assert library.list() == [] and library.problems() == []
    events = RunDir(run_dir).events()
    killed_at = max(e.step for e in events if isinstance(e, ev.Step))
    assert killed_at < 16 and not any(isinstance(e, ev.TERMINAL_TYPES) for e in events)
    last = checkpoints.last_complete(RunDir(run_dir))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), last)
    resumed, seen = train(TrainConfig(resume=run_dir.name), studio_home)
    assert resumed.status == "finished" and resumed.step == 16
    assert of(seen, ev.RunStarted)[0].start_step == step_of(last)
    assert [s.step for s in of(seen, ev.Step)] == list(range(step_of(last) + 1, 17))
    assert library.get(resumed.adapter_id).manifest.metrics["steps"] == 16
