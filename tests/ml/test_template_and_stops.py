"""One chat-template hash and one stop-token rule: an adapter trained on a base chats on it without a
template warning (named templates too) and warns on a base with another template; chat, exports and
training samples stop at the same tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.ml.chat.generation import GenerationSettings, TemplateWarning
from tests.tiny_model import CHATML_TEMPLATE, make_tiny_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ASK = [{"role": "user", "content": "What is 2 plus 3?"}]
ONE_TOKEN = GenerationSettings(temperature=0, max_new_tokens=1)


def with_template(tiny_base_dir: Path, folder: Path, template) -> Path:
    """A copy of the tiny base whose tokenizer carries `template` (a string, or named templates)."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_base_dir, folder)
    for stale in ("chat_template.jinja", "additional_chat_templates"):
        path = folder / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder


def warnings_for(engine, adapter_id: str) -> list[TemplateWarning]:
    return [e for e in engine.stream(ASK, adapter_id, ONE_TOKEN) if isinstance(e, TemplateWarning)]


def test_adapter_trained_on_a_base_gets_no_template_warning_there_and_one_elsewhere(tiny_base_dir, studio_home,
                                                                                   tmp_path):
    from studio.core.library.store import AdapterLibrary
    from studio.core.train.config import TrainConfig
    from studio.ml.chat.engine import ChatEngine
    from studio.ml.train.run import run_training

    named = with_template(tiny_base_dir, tmp_path / "named-base",
                          {"default": CHATML_TEMPLATE, "tool_use": "TOOLS {{ messages | length }}"})
    other = with_template(tiny_base_dir, tmp_path / "other-base", "### chat\n" + CHATML_TEMPLATE)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus 1?"},
                          {"role": "assistant", "content": f"It is {a + 1}."}]} for a in range(12)]
    (data / "chats.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    config = TrainConfig(data_folder=str(data), base=str(named), adapter_name="named", quant="none", rank=4,
                         alpha=8.0, max_steps=2, micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=2,
                         checkpoint_every=2, sample_every=0, device="cpu")
    result = run_training(config, studio_home)
    assert result.status == "finished", result.message
    library = AdapterLibrary(studio_home)
    entry = library.get(result.adapter_id)
    assert entry.manifest.chat_template_sha256

    same = ChatEngine(named, library=library)
    same.load_adapter(entry.id)
    assert warnings_for(same, entry.id) == []
    elsewhere = ChatEngine(other, library=library)
    elsewhere.load_adapter(entry.id)
    (warning,) = warnings_for(elsewhere, entry.id)
    assert "another chat template" in warning.message


def test_chat_exports_and_samples_share_one_stop_rule(tiny_base_dir, tmp_path):
    """A template that writes two end markers: the chat engine, the merged model's generation config and
    the smoke test's end-of-turn token all follow `stop_ids`."""
    from transformers import AutoTokenizer

    from studio.ml.chat.engine import ChatEngine
    from studio.ml.chat.generation import end_of_turn_token, stop_ids
    from studio.ml.export.merge import merge_and_export

    template = CHATML_TEMPLATE.replace("{% endfor %}", "{% endfor %}{% if not add_generation_prompt %}"
                                                       "{{ '<|endoftext|>' }}{% endif %}")
    base = with_template(tiny_base_dir, tmp_path / "two-markers", template)
    tokenizer = AutoTokenizer.from_pretrained(base)
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert tokenizer.eos_token_id == im_end and endoftext != im_end
    rule = stop_ids(tokenizer)
    assert set(rule) == {im_end, endoftext}
    assert tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)) == im_end

    engine = ChatEngine(base)
    assert set(engine.stop_ids) == set(rule)
    adapter = make_tiny_adapter(base, tmp_path / "adapter", base_name=str(base))
    merged = merge_and_export(base, adapter, tmp_path / "merged", "fp32", smoke_check=lambda answer: None)
    eos = json.loads((merged.path / "generation_config.json").read_text())["eos_token_id"]
    assert set(eos if isinstance(eos, list) else [eos]) == set(rule)


def test_named_templates_render_and_hash_by_their_default(tiny_base_dir, tmp_path):
    from transformers import AutoTokenizer

    from studio.ml.base.loading import chat_template_sha256, chat_template_text
    from studio.ml.chat.generation import end_of_turn_token

    named = with_template(tiny_base_dir, tmp_path / "named", {"default": CHATML_TEMPLATE, "tool_use": "<|endoftext|>"})
    tokenizer = AutoTokenizer.from_pretrained(named)
    assert chat_template_text(tokenizer) == CHATML_TEMPLATE
    assert chat_template_sha256(chat_template_text(tokenizer)) == chat_template_sha256(CHATML_TEMPLATE)
    assert chat_template_sha256("") == "" and len(chat_template_sha256("x")) == 64
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
