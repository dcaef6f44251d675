"""Merging into the base and exporting: logits of the merged model equal the adapted model's,
safetensors shards + tokenizer + chat template + end-of-turn EOS, disk-space and base refusals,
atomic writes, the smoke test (its check, and the real thing on SmolLM2), Ollama bundles, and the
`merge` / `export-ollama` CLI verbs."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from tests.tiny_model import make_tiny_adapter

PROMPTS = ["Hello, how are you today?", "What is the capital of France?", "The quick brown fox"]


def answers_something(answer) -> str | None:
    """The smoke check used on the tiny random model, which never learned to stop."""
    return None if answer.token_ids and answer.text else "it generated nothing"


@pytest.fixture(scope="module")
def adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tiny_base_dir, tmp_path_factory.mktemp("merge") / "adapter", rank=4, seed=7,
                             targets=("q_proj", "v_proj", "up_proj"))


def logits_of(model, tokenizer, texts: list[str]):
    import torch

    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out.append(model(**ids).logits)
    return out


def adapted_logits(base: Path, adapter_folder: Path, texts: list[str]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                      adapter_folder).eval()
    return logits_of(model, AutoTokenizer.from_pretrained(base), texts)


def test_merged_model_matches_adapted_model(tiny_base_dir, adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.ml.export.merge import merge_and_export

    events = []
    dest = tmp_path / "merged"
    result = merge_and_export(tiny_base_dir, adapter, dest, "fp32", max_shard_size="150KB",
                              progress=events.append, smoke_check=answers_something)
    assert result.smoke.passed and result.path == dest
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) >= 2  # sharded
    assert "chat_template.jinja" in names or "chat_template" in json.loads(
        (dest / "tokenizer_config.json").read_text())
    assert [e.fraction for e in events] == sorted(e.fraction for e in events) and events[-1].fraction == 1.0
    assert {e.stage for e in events} >= {"check", "load", "merge", "save", "smoke", "done"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    merged = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template
    expected = adapted_logits(tiny_base_dir, adapter, PROMPTS)
    base_only = logits_of(AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval(),
                          tokenizer, PROMPTS[:1])
    assert not torch.allclose(base_only[0], expected[0], atol=1e-3)  # the adapter does change the model
    for got, want in zip(logits_of(merged, tokenizer, PROMPTS), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def test_bf16_export_and_end_of_turn_eos(tiny_base_dir, adapter, tmp_path):
    from studio.core.tensorfiles import read_header
    from studio.ml.export.merge import merge_and_export

    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    # A base whose generation config only knows <|endoftext|>: the export must add <|im_end|>.
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 1}))
    merge_and_export(base, adapter, tmp_path / "bf16", "bf16", smoke_check=answers_something)
    dtypes = {info.dtype for info in read_header(tmp_path / "bf16" / "model.safetensors").values()}
    assert dtypes == {"BF16"}
    gen = json.loads((tmp_path / "bf16" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]  # <|im_end|> first, then the base's own EOS


def test_end_of_turn_check_on_crafted_answers():
    from studio.ml.chat.smoke import (
        GreedyAnswer,
        SmokeResult,
        SmokeTestFailed,
        ends_at_end_of_turn,
        require_pass,
    )

    def answer(ids, text="Paris."):
        return GreedyAnswer(prompt="q", text=text, token_ids=tuple(ids), max_new_tokens=8,
                            end_token="<|im_end|>", end_token_id=2)

    assert ends_at_end_of_turn(answer([40, 41, 42, 2])) is None
    assert "did not end at <|im_end|> within 8 tokens" in ends_at_end_of_turn(answer([40] * 8))
    assert "did not stop" in ends_at_end_of_turn(answer([40, 2, 41, 42]))
    assert "empty" in ends_at_end_of_turn(answer([2], text=""))
    failed = SmokeResult(passed=False, message="it ran on", prompt="q", answer="aaaa", new_tokens=8,
                         max_new_tokens=8, end_token="<|im_end|>")
    with pytest.raises(SmokeTestFailed, match="failed its smoke test: it ran on"):
        require_pass(failed, "merged model")


def test_export_that_never_stops_is_refused_and_not_kept(tiny_base_dir, adapter, tmp_path):
    from studio.ml.base.loading import load_full_precision, load_tokenizer
    from studio.ml.chat.smoke import SmokeTestFailed, ends_at_end_of_turn, greedy_chat

    model, tokenizer = load_full_precision(tiny_base_dir), load_tokenizer(tiny_base_dir, distinct_pad=False)
    # Precondition: the random tiny model rambles instead of closing its turn.
    assert ends_at_end_of_turn(greedy_chat(model, tokenizer, "What is the capital of France?")) is not None

    from studio.ml.export.merge import merge_and_export

    with pytest.raises(SmokeTestFailed, match="did not end at <\\|im_end\\|>"):
        merge_and_export(tiny_base_dir, adapter, tmp_path / "out", "fp32")  # the default check
    assert list(tmp_path.iterdir()) == []


def test_refuses_without_disk_space(tiny_base_dir, adapter, tmp_path, monkeypatch):
    from studio.ml.export import merge as merge_export

    needed = merge_export.estimate_export_bytes(tiny_base_dir, "fp32")
    assert needed > merge_export.estimate_export_bytes(tiny_base_dir, "bf16") > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(merge_export.shutil, "disk_usage", lambda path: usage(10**9, 10**9, needed))
    with pytest.raises(StudioError, match="Not enough disk space") as err:
        merge_export.merge_and_export(tiny_base_dir, adapter, tmp_path / "out", "fp32")
    assert "bf16" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_refuses_adapter_of_another_base_and_existing_dest(tiny_base_dir, adapter, tmp_path):
    from studio.core.library.manifest import AdapterManifest, write_manifest
    from studio.ml.export.merge import merge_and_export

    foreign = tmp_path / "foreign"
    shutil.copytree(adapter, foreign)
    write_manifest(foreign, AdapterManifest(id="f", name="foreign", base_model="Other-1B",
                                            base_fingerprint="0000111122223333"))
    with pytest.raises(StudioError, match="was trained on Other-1B"):
        merge_and_export(tiny_base_dir, foreign, tmp_path / "out", "fp32")
    (tmp_path / "taken").mkdir()
    with pytest.raises(StudioError, match="already exists"):
        merge_and_export(tiny_base_dir, adapter, tmp_path / "taken", "fp32")
    with pytest.raises(StudioError, match="Unknown dtype"):
        merge_and_export(tiny_base_dir, adapter, tmp_path / "out", "int4")


def test_stop_leaves_nothing(tiny_base_dir, adapter, tmp_path):
    from studio.core.progress import Cancelled
    from studio.ml.export.merge import merge_and_export

    seen = []
    with pytest.raises(Cancelled):
        merge_and_export(tiny_base_dir, adapter, tmp_path / "out", "fp32", progress=seen.append,
                         should_stop=lambda: any(e.stage == "save" for e in seen))
    assert seen[-1].stage == "save"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ Ollama


def test_modelfile_parser_rejects_malformed_files():
    from studio.core.library.ollama import modelfile_text, parse_modelfile

    good = parse_modelfile(modelfile_text("smollm2:135m", chat_template="<|im_start|>x<|im_end|>",
                                          system="Be brief."))
    assert [name for name, _ in good] == ["FROM", "ADAPTER", "TEMPLATE", "PARAMETER", "PARAMETER", "SYSTEM"]
    for bad, match in [("ADAPTER ./adapter\n", "exactly one FROM"),
                       ("FROM x\nTEMPLATE \"\"\"open\n", "never closed"),
                       ("FROM x\nRUN rm -rf /\n", "not an instruction"),
                       ("FROM x\nPARAMETER stop\n", "PARAMETER needs")]:
        with pytest.raises(StudioError, match=match):
            parse_modelfile(bad)


def test_ollama_bundle_is_well_formed_and_its_adapter_loads(tiny_base_dir, adapter, tmp_path):
    import torch

    from studio.core.library.ollama import CHATML_STOPS, parse_modelfile
    from studio.ml.export.merge import export_ollama

    dest = tmp_path / "bundle"
    result = export_ollama(tiny_base_dir, adapter, dest, from_ref="smollm2:135m", adapter_name="tiny",
                           smoke_check=answers_something)
    assert result.smoke.passed and result.bundle.path == dest
    instructions = parse_modelfile((dest / "Modelfile").read_text())
    as_dict = {}
    for name, arg in instructions:
        as_dict.setdefault(name, []).append(arg)
    assert as_dict["FROM"] == ["smollm2:135m"] and as_dict["ADAPTER"] == ["./adapter"]
    assert "<|im_start|>{{ .Role }}" in as_dict["TEMPLATE"][0]
    assert as_dict["PARAMETER"] == [f'stop "{s}"' for s in CHATML_STOPS]
    assert sorted(p.name for p in (dest / "adapter").iterdir()) == ["adapter_config.json",
                                                                   "adapter_model.safetensors"]
    for got, want in zip(adapted_logits(tiny_base_dir, dest / "adapter", PROMPTS[:2]),
                         adapted_logits(tiny_base_dir, adapter, PROMPTS[:2]), strict=True):
        assert torch.equal(got, want)


def test_ollama_bundle_without_chatml_has_no_template(adapter, tmp_path):
    from studio.core.library.ollama import parse_modelfile, write_bundle

    bundle = write_bundle(adapter, tmp_path / "b", from_ref="/models/llama", chat_template="{{ messages }}")
    names = [name for name, _ in parse_modelfile(bundle.modelfile.read_text())]
    assert names == ["FROM", "ADAPTER"] and bundle.warnings and not bundle.has_template


# ------------------------------------------------------------------ the real default model


@pytest.mark.slow
def test_merge_into_default_model_answers_and_stops(default_base_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.ml.export.merge import merge_and_export

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(default_base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a small but real update (B starts at zero)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)
    peft_model.save_pretrained(tmp_path / "adapter")
    del peft_model, model
    result = merge_and_export(default_base_dir, tmp_path / "adapter", tmp_path / "merged", "fp32")
    assert result.smoke.passed, result.smoke.message
    assert result.smoke.end_token == "<|im_end|>" and result.smoke.new_tokens < result.smoke.max_new_tokens
    assert "Paris" in result.smoke.answer


# ------------------------------------------------------------------ library exports and the CLI


@pytest.fixture
def library(studio_home, tiny_base_dir, adapter):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    lib = AdapterLibrary(studio_home)
    lib.import_path(adapter, name="tiny")
    return lib


@pytest.mark.parametrize("fmt", ["peft", "zip"])
def test_library_export_is_smoke_tested(library, tiny_base_dir, adapter, tmp_path, fmt):
    import torch

    from studio.ml.chat.smoke import SmokeTestFailed
    from studio.ml.export.library_export import export_adapter

    exports = tmp_path / "exports"  # (tmp_path also holds the data directory)
    exports.mkdir()
    with pytest.raises(SmokeTestFailed):  # the tiny model never stops: the export is removed again
        export_adapter(library, "tiny", exports / "out", fmt)
    assert list(exports.iterdir()) == []
    result = export_adapter(library, "tiny", exports / "out", fmt, smoke_check=answers_something)
    assert result.smoke.passed and result.path.exists()
    if fmt == "peft":
        for got, want in zip(adapted_logits(tiny_base_dir, result.path, PROMPTS[:1]),
                             adapted_logits(tiny_base_dir, adapter, PROMPTS[:1]), strict=True):
            assert torch.equal(got, want)
    else:
        assert result.path.suffix == ".zip"


def test_cli_merge_and_export_ollama(library, tmp_path, capsys, monkeypatch):
    from studio.cli.main import run
    from studio.ml.chat import smoke

    dest = tmp_path / "merged"
    assert run(["merge", "tiny", str(dest), "--dtype", "fp32"]) == 1  # the real check refuses the tiny model
    assert "failed its smoke test" in capsys.readouterr().err and not dest.exists()

    monkeypatch.setattr(smoke, "ends_at_end_of_turn", answers_something)
    assert run(["merge", "tiny", "--out", str(dest), "--dtype", "fp32", "--shard-size", "150KB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(dest) and out["dtype"] == "fp32" and out["smoke"]["passed"]
    assert (dest / "model.safetensors.index.json").exists()

    bundle = tmp_path / "ollama"
    assert run(["export-ollama", "tiny", str(bundle), "--from", "smollm2:135m", "--system", "Be brief.",
                "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "ollama" and out["smoke"]["passed"]
    text = (bundle / "Modelfile").read_text()
    assert "FROM smollm2:135m\nADAPTER ./adapter\n" in text and 'SYSTEM """Be brief."""' in text
    assert run(["export-ollama", "tiny", str(bundle)]) == 1
    assert "already exists" in capsys.readouterr().err
