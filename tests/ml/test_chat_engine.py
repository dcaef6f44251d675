"""The chat engine on the tiny model: mixed-adapter batches equal one-by-one answers, streaming,
cancelling, stopping at end of turn, LRU unloading, no base reload on switch, fingerprint refusal,
trimming, chat-template warnings, live weights, DoRA fallback, 4-bit; and the real default model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.library.manifest import AdapterManifest, write_manifest
from studio.ml.base.loading import chat_template_sha256
from studio.ml.chat.generation import (
    Finished,
    GenerationSettings,
    Started,
    TemplateWarning,
    Token,
    Trimmed,
    normalize_messages,
    render_prompt,
    safe_pad_id,
    stop_ids,
)
from tests.tiny_model import make_tiny_adapter

PROBE = "What is the capital of France?"
TRAINED_ANSWER = "The capital of France is Paris."
GREEDY = GenerationSettings(temperature=0, max_new_tokens=12)


def ask(text: str = PROBE) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_probe_adapter(base_dir: Path, out_dir: Path, steps: int = 80) -> Path:
    """A LoRA really trained (a few dozen steps) to answer PROBE with TRAINED_ANSWER and stop.
    lm_head is targeted because the tiny random model's final norm caps its logits otherwise."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj", "lm_head"])
    peft_model = get_peft_model(model, config)
    prompt = tokenizer.apply_chat_template(ask(), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(TRAINED_ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(steps):
        peft_model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    return out_dir


def make_dora_adapter(base_dir: Path, out_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  use_dora=True, init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapters(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-adapters")
    return {
        "A": make_tiny_adapter(tiny_base_dir, root / "A", seed=1),
        "B": make_tiny_adapter(tiny_base_dir, root / "B", seed=2),
        "C": make_tiny_adapter(tiny_base_dir, root / "C", seed=3),
        "T": train_probe_adapter(tiny_base_dir, root / "T"),
    }


@pytest.fixture(scope="module")
def engine(tiny_base_dir: Path, adapters: dict[str, Path]):
    from studio.ml.chat.engine import ChatEngine

    eng = ChatEngine(tiny_base_dir, max_loaded_adapters=4)
    for name in ("A", "B", "T"):
        eng.load_adapter(adapters[name])
    return eng


def events_of(engine, adapter: str, settings: GenerationSettings = GREEDY, messages=None, **kw) -> list:
    return list(engine.stream(messages or ask(), adapter, settings, **kw))


def finished(events: list) -> Finished:
    done = [e for e in events if isinstance(e, Finished)]
    assert len(done) == 1
    return done[0]


# ---------------------------------------------------------------- batches


def test_batch_equals_one_by_one(engine):
    panes = ["base", "A", "B", "T"]
    alone = [finished(events_of(engine, p)).text for p in panes]
    assert len(set(alone)) == 4, alone  # the adapters really answer differently
    assert alone[3] == TRAINED_ANSWER
    events = list(engine.stream_many([ask()], panes, GREEDY))
    started = [e for _, e in events if isinstance(e, Started)]
    assert [s.batched for s in started] == [True] * 4
    batched = {pane: e.text for pane, e in events if isinstance(e, Finished)}
    assert [batched[i] for i in range(4)] == alone
    assert engine.generate_batch(ask(), ["T", "base"], GREEDY) == [alone[3], alone[0]]
    # Stopping a batch stops every pane.
    stopped = [e for _, e in engine.stream_many([ask()], panes, GenerationSettings(temperature=0, max_new_tokens=50),
                                                should_stop=lambda: True) if isinstance(e, Finished)]
    assert [f.stop_reason for f in stopped] == ["stopped"] * 4 and all(f.tokens <= 1 for f in stopped)


def test_batch_with_different_conversations(engine):
    """Each pane keeps its own conversation: prompts of different lengths are left-padded."""
    follow_up = [*ask("Hello"), {"role": "assistant", "content": "Hi there, how are you today?"}, *ask()]
    convs, panes = [ask(), follow_up, follow_up], ["T", "A", "base"]
    alone = [engine.answers([c], [p], GREEDY)[0].text for c, p in zip(convs, panes, strict=True)]
    together = engine.answers(convs, panes, GREEDY)
    assert [f.text for f in together] == alone


def test_trained_adapter_differs_from_base_and_switching_keeps_the_base(engine):
    model_before, loads_before = engine.base_model, engine.base_loads
    weight = engine.base_model.get_input_embeddings().weight
    base_answer = finished(events_of(engine, "base")).text
    assert finished(events_of(engine, "T")).text == TRAINED_ANSWER != base_answer
    for adapter in ("A", "base", "T", "B", "base"):
        events_of(engine, adapter, GenerationSettings(temperature=0, max_new_tokens=2))
    assert engine.base_loads == loads_before == 1
    assert engine.base_model is model_before
    assert engine.base_model.get_input_embeddings().weight is weight


def test_dora_adapter_falls_back_to_one_after_the_other(tiny_base_dir, adapters, tmp_path):
    from studio.ml.chat.engine import ChatEngine

    dora = make_dora_adapter(tiny_base_dir, tmp_path / "D")
    eng = ChatEngine(tiny_base_dir)
    eng.load_adapter(adapters["A"])
    eng.load_adapter(dora)
    assert "DoRA" in eng.batch_blocker(["A", "D"])
    alone = [finished(events_of(eng, p)).text for p in ("A", "D")]
    events = list(eng.stream_many([ask()], ["A", "D"], GREEDY))
    assert [e.batched for _, e in events if isinstance(e, Started)] == [False, False]
    assert [e.text for _, e in events if isinstance(e, Finished)] == alone
    stopped = [e for _, e in eng.stream_many([ask()], ["A", "D"], GREEDY, should_stop=lambda: True)
               if isinstance(e, Finished)]
    assert [f.stop_reason for f in stopped] == ["stopped", "stopped"]


# ---------------------------------------------------------------- streaming and stopping


def test_stream_tokens_concatenate_to_final_text(engine):
    import torch

    settings = GenerationSettings(temperature=0, max_new_tokens=20)
    events = events_of(engine, "A", settings)
    assert isinstance(events[0], Started) and events[0].adapter == "A" and not events[0].batched
    done = finished(events)
    assert events[-1] is done
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.text
    assert done.stop_reason == "max_tokens" and done.tokens == 20 and done.tokens_per_second > 0
    # The same text as a plain greedy generate with the adapter set, decoded at once.
    prompt = engine.tokenizer.apply_chat_template(ask(), tokenize=False, add_generation_prompt=True)
    ids = engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    engine.model.set_adapter(engine.peft_name("A"))
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, max_new_tokens=20, do_sample=False,
                                    eos_token_id=engine.stop_ids, pad_token_id=engine.pad_id)
    assert engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == done.text


def test_sampling_is_reproducible_with_a_seed(engine):
    settings = GenerationSettings(temperature=1.0, top_p=0.9, top_k=40, max_new_tokens=16, seed=7)
    first = finished(events_of(engine, "B", settings)).text
    assert finished(events_of(engine, "B", settings)).text == first
    others = {finished(events_of(engine, "B", GenerationSettings(temperature=1.5, max_new_tokens=16, seed=s))).text
              for s in range(4)}
    assert len(others) > 1


def test_should_stop_cancels_mid_way(engine):
    seen = []
    settings = GenerationSettings(temperature=0, max_new_tokens=200)
    events = []
    for event in engine.stream(ask(), "A", settings, should_stop=lambda: len(seen) >= 3):
        events.append(event)
        if isinstance(event, Token):
            seen.append(event)
    done = finished(events)
    assert done.stop_reason == "stopped"
    assert 3 <= done.tokens < 200
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.text


def test_leaving_the_iterator_stops_generation(engine):
    stream = engine.stream(ask(), "base", GenerationSettings(temperature=0, max_new_tokens=400))
    for event in stream:
        if isinstance(event, Token):
            break
    stream.close()  # the worker is told to stop and joined; the engine is free again at once
    assert finished(events_of(engine, "T")).text == TRAINED_ANSWER


def test_answer_stops_at_end_of_turn(engine):
    done = finished(events_of(engine, "T", GenerationSettings(temperature=0, max_new_tokens=200)))
    assert done.stop_reason == "eos" and done.text == TRAINED_ANSWER
    assert done.tokens == len(engine.tokenizer(TRAINED_ANSWER, add_special_tokens=False)["input_ids"])


def test_end_of_turn_found_when_eos_and_pad_are_other_tokens(tiny_base_dir, adapters, tmp_path):
    """A base whose tokenizer EOS is <|endoftext|> and whose pad token *is* <|im_end|>: answers still
    stop at the template's <|im_end|>, and padding uses a token that is not a stop id."""
    from transformers import AutoTokenizer

    from studio.ml.chat.engine import ChatEngine

    odd = tmp_path / "odd-base"
    shutil.copytree(tiny_base_dir, odd)
    tokenizer = AutoTokenizer.from_pretrained(odd)
    tokenizer.eos_token, tokenizer.pad_token = "<|endoftext|>", "<|im_end|>"
    tokenizer.save_pretrained(odd)
    for name in ("config.json", "generation_config.json"):
        data = json.loads((odd / name).read_text())
        data.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        (odd / name).write_text(json.dumps(data))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(tokenizer) == [tokenizer.eos_token_id, im_end]
    assert safe_pad_id(tokenizer, [tokenizer.eos_token_id, im_end]) not in (tokenizer.eos_token_id, im_end)

    eng = ChatEngine(odd)
    assert im_end in eng.stop_ids and eng.pad_id not in eng.stop_ids
    eng.load_adapter(adapters["T"])
    done = finished(events_of(eng, "T", GenerationSettings(temperature=0, max_new_tokens=100)))
    assert (done.stop_reason, done.text) == ("eos", TRAINED_ANSWER)
    # Batched with a longer conversation, so the trained pane is left-padded with the pad id.
    longer = [*ask("Hello"), {"role": "assistant", "content": "Hi!"}, *ask()]
    both = eng.answers([ask(), longer], ["T", "base"], GenerationSettings(temperature=0, max_new_tokens=100))
    assert (both[0].stop_reason, both[0].text) == ("eos", TRAINED_ANSWER)


# ---------------------------------------------------------------- adapters: LRU, refusal, templates


def test_lru_unloads_least_recently_used(tiny_base_dir, adapters):
    from studio.ml.chat.engine import ChatEngine

    eng = ChatEngine(tiny_base_dir, max_loaded_adapters=2)
    eng.load_adapter(adapters["A"])
    eng.load_adapter(adapters["B"])
    events_of(eng, "A", GenerationSettings(temperature=0, max_new_tokens=1))  # A is now the most recent
    b_peft = eng.peft_name("B")
    eng.load_adapter(adapters["C"])
    assert eng.loaded_adapters == ["A", "C"]
    assert b_peft not in eng.model.peft_config
    # Asking for B again (by folder) reattaches it and unloads A, now the least recently used.
    eng.load_adapter(adapters["B"])
    assert eng.loaded_adapters == ["C", "B"]
    assert len(eng.model.peft_config) == 2
    # A request for three adapters keeps all three attached while it runs.
    answers = eng.generate_batch(ask(), [str(adapters["A"]), "B", "C"], GREEDY)
    assert len(answers) == 3 and eng.base_loads == 1


def test_adapter_of_another_base_refused(tiny_base_dir, adapters, tmp_path):
    from studio.core.basemodels import inspect_base_model
    from studio.ml.chat.engine import ChatEngine

    folder = tmp_path / "foreign"
    shutil.copytree(adapters["A"], folder)
    write_manifest(folder, AdapterManifest(id="foreign", name="Foreign", base_model="big-model",
                                           base_fingerprint="0123456789abcdef"))
    eng = ChatEngine(tiny_base_dir)
    with pytest.raises(StudioError) as err:
        eng.load_adapter(folder)
    message = str(err.value)
    assert "0123456789abcdef" in message and inspect_base_model(tiny_base_dir).fingerprint in message
    assert "Foreign" in message and eng.loaded_adapters == []


def test_template_warning_and_adapter_template(tiny_base_dir, adapters, tmp_path):
    from studio.ml.chat.engine import ChatEngine

    eng = ChatEngine(tiny_base_dir)
    other = tmp_path / "other-template"
    shutil.copytree(adapters["A"], other)
    write_manifest(other, AdapterManifest(id="other", name="Other", chat_template_sha256="f" * 64))
    same = tmp_path / "same-template"
    shutil.copytree(adapters["A"], same)
    write_manifest(same, AdapterManifest(id="same", name="Same", chat_template_sha256=eng.base_template_sha256))
    warned = [e for e in events_of(eng, str(other)) if isinstance(e, TemplateWarning)]
    assert len(warned) == 1 and "another chat template" in warned[0].message
    assert not [e for e in events_of(eng, str(same)) if isinstance(e, TemplateWarning)]
    # An adapter folder that carries its own template is chatted with it (and its hash matches).
    own = tmp_path / "own-template"
    shutil.copytree(adapters["A"], own)
    template = "### instructions follow\n" + eng.base_template
    (own / "chat_template.jinja").write_text(template)
    write_manifest(own, AdapterManifest(id="own", name="Own", chat_template_sha256=chat_template_sha256(template)))
    events = events_of(eng, str(own))
    base_start = next(e for e in events_of(eng, "base") if isinstance(e, Started))
    own_start = next(e for e in events if isinstance(e, Started))
    assert own_start.prompt_tokens > base_start.prompt_tokens
    assert not [e for e in events if isinstance(e, TemplateWarning)]


# ---------------------------------------------------------------- trimming


def conversation(turns: int) -> list[dict[str, str]]:
    messages = []
    for i in range(turns):
        messages += [{"role": "user", "content": f"Question {i}: the quick brown fox jumps over the lazy dog."},
                     {"role": "assistant", "content": f"Answer {i}: hello, how are you today? I am fine."}]
    return messages + [{"role": "user", "content": "Last question: what is the capital of France?"}]


def test_trimming_keeps_system_prompt_and_newest_turns(engine):
    tok = engine.tokenizer
    messages = normalize_messages(conversation(6), system_prompt="You are terse.")
    full = render_prompt(tok, messages, None, 10_000, 10)
    assert full.dropped == 0
    budget = len(full.input_ids) // 2
    trimmed = render_prompt(tok, messages, None, budget + 10, 10)
    assert trimmed.dropped > 0 and len(trimmed.input_ids) <= budget
    assert trimmed.text.startswith("<|im_start|>system\nYou are terse.")
    assert "Last question" in trimmed.text and "Question 0:" not in trimmed.text
    assert f"Question {6 - 1}:" in trimmed.text  # the newest exchange survives
    assert trimmed.dropped % 2 == 0  # a question and its answer go together
    assert trimmed.text.split("<|im_start|>")[2].startswith("user")  # a user turn leads after the system
    with pytest.raises(StudioError, match="too long"):
        render_prompt(tok, messages, None, 30, 10)


def test_engine_reports_trimming(engine):
    saved = engine.context_tokens
    engine.context_tokens = 160
    try:
        events = events_of(engine, "base", GenerationSettings(temperature=0, max_new_tokens=8),
                           messages=conversation(8))
    finally:
        engine.context_tokens = saved
    trimmed = [e for e in events if isinstance(e, Trimmed)]
    assert len(trimmed) == 1 and trimmed[0].n_dropped_turns > 0 and trimmed[0].prompt_tokens <= 152
    assert finished(events).tokens == 8


# ---------------------------------------------------------------- live weights


def delta(engine, name: str):
    layer = engine.model.base_model.model.model.layers[0].self_attn.q_proj
    return layer.get_delta_weight(name)


def test_live_weights(engine):
    import torch

    single = engine.set_adapter_weights({"A": 1.0})
    assert finished(events_of(engine, single)).text == finished(events_of(engine, "A")).text
    live = engine.set_adapter_weights({"A": 0.5, "B": -0.25})
    assert live == "__live__"
    expected = 0.5 * delta(engine, engine.peft_name("A")) - 0.25 * delta(engine, engine.peft_name("B"))
    assert torch.allclose(delta(engine, engine.peft_name(live)), expected, atol=1e-6)
    texts = engine.generate_batch(ask(), [live, "A", "base"], GREEDY)
    assert texts[0] not in texts[1:]
    assert texts[0] == finished(events_of(engine, live)).text  # batched equals alone for the blend too
    # One live blend per pane: a second name coexists; unloading it leaves the first.
    other = engine.set_adapter_weights({"B": 1.0, "T": 0.5}, name="pane-2")
    assert engine.generate_batch(ask(), [live, other], GREEDY)[0] == texts[0]
    engine.unload_adapter(other)
    assert engine.peft_name(live) in engine.model.peft_config
    with pytest.raises(StudioError):
        engine.peft_name(other)


def test_bad_settings_and_messages_refused(engine):
    with pytest.raises(StudioError):
        list(engine.stream(ask(), "base", GenerationSettings(temperature=-1)))
    with pytest.raises(StudioError, match="no user message"):
        list(engine.stream([{"role": "system", "content": "x"}], "base", GREEDY))
    with pytest.raises(StudioError):
        list(engine.stream(ask(), "no-such-adapter", GREEDY))


def test_settings_round_trip():
    s = GenerationSettings(system_prompt="Be brief.", temperature=0, seed=3)
    assert GenerationSettings.from_dict({**s.to_dict(), "unknown": 1}) == s
    assert s.generate_kwargs()["do_sample"] is False
    assert GenerationSettings(temperature=0.5).generate_kwargs()["do_sample"] is True


def test_four_bit_on_cpu_batches_too(tiny_base_dir, adapters):
    from studio.ml.chat.engine import ChatEngine

    eng = ChatEngine(tiny_base_dir, quant="4bit")
    assert eng.quant == "4bit"
    assert type(eng.base_model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    eng.load_adapter(adapters["A"])
    alone = [finished(events_of(eng, p)).text for p in ("base", "A")]
    assert eng.generate_batch(ask(), ["base", "A"], GREEDY) == alone


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_answers_paris_and_stops(default_base_dir):
    from studio.ml.chat.engine import ChatEngine

    eng = ChatEngine(default_base_dir)
    events = list(eng.stream(ask(), "base", GenerationSettings(temperature=0, max_new_tokens=64)))
    done = finished(events)
    assert "Paris" in done.text
    assert done.stop_reason == "eos" and done.tokens < 64
    assert eng.tokenizer.convert_tokens_to_ids("<|im_end|>") in eng.stop_ids
    assert eng.pad_id not in eng.stop_ids  # SmolLM2's own pad token is <|im_end|>
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.text


# ---------------------------------------------------------------- the CLI verbs


def test_cli_chat_and_compare(studio_home, tiny_base_dir, adapters, engine, capsys, monkeypatch):
    import io

    from studio.cli.main import run
    from studio.core.basemodels import inspect_base_model

    # The random adapters A and B are enough for the verbs.
    shutil.copytree(adapters["A"], studio_home.adapters / "rand-a")
    shutil.copytree(adapters["B"], studio_home.adapters / "rand-b")
    expected = engine.generate_batch(ask(), ["A", "B", "base"], GenerationSettings(temperature=0, max_new_tokens=10))
    greedy = ["--temperature", "0", "--max-new-tokens", "10", "--quant", "none"]
    base = ["--base", str(tiny_base_dir)]

    assert run(["chat", "--adapter", "rand-a", "--prompt", PROBE, "--json", *base, *greedy]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["text"], out["adapter_id"], out["tokens"]) == (expected[0], "rand-a", 10)
    assert out["stop_reason"] == "max_tokens" and out["tokens_per_second"] > 0
    assert out["base"]["fingerprint"] == inspect_base_model(tiny_base_dir).fingerprint

    # Without --base, the base the adapter names ("tiny-llama", in the studio's models/) is used.
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    assert run(["chat", "--adapter", "rand-a", "--prompt", PROBE, "--json", *greedy]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == expected[0] and out["base"]["path"] == str(studio_home.models / "tiny-llama")

    assert run(["compare", "rand-b", "base", "--prompt", PROBE, "--json", *base, *greedy]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batched"] is True
    assert [a["adapter"] for a in out["answers"]] == ["rand-b", "base"]
    assert [a["text"] for a in out["answers"]] == expected[1:]

    assert run(["compare", "rand-a", "rand-b", "--prompt", PROBE, "--no-batch", *base, *greedy]) == 0
    text = capsys.readouterr().out
    assert "== rand-a" in text and "== rand-b" in text and expected[1] in text

    # Interactive: lines from stdin until /exit; /reset forgets the conversation.
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROBE}\n/reset\n{PROBE}\n/exit\nnever read\n"))
    assert run(["chat", "--adapter", "rand-a", *base, *greedy]) == 0
    text = capsys.readouterr().out
    assert text.count(expected[0]) == 2 and "(2 turns)" in text
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROBE}\n"))
    assert run(["chat", "--json", *base, *greedy]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["text"] == expected[2] and lines[-1]["turns"] == 1

    assert run(["compare", "rand-a", "rand-a", "--prompt", "x", *base]) == 1
    assert run(["chat", "--adapter", "missing", "--prompt", "x", *base]) == 1
    assert "No adapter called" in capsys.readouterr().err
