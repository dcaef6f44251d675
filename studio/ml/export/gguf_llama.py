"""What GGUF needs to know about Llama-family models: hyperparameters, q/k row order, a BPE tokenizer.

Writes what llama.cpp's loader reads for its "llama" architecture: context/embedding/FFN sizes,
heads, RoPE (base, dimension, linear or llama3 scaling), RMS-norm epsilon, and the tokenizer as
`tokenizer.ggml.model = "gpt2"`: every token string by id, its type (normal, control, user
defined, unused), the merges, the special token ids, whether BOS/EOS are added, and the chat
template (these last via gguf's `SpecialVocab`). Byte-level BPE tokens carry no scores, so none
are written, as llama.cpp's own converter does.

The pre-tokenizer name (`tokenizer.ggml.pre`) is recognised the way llama.cpp's converter does it:
a fixed text is tokenized and the ids hashed; only a few common hashes are known here, anything
else gets "default" and a warning (the caller may name the right one instead).

llama.cpp's RoPE pairs the rows of q_proj and k_proj differently from Hugging Face, so its converter
permutes those rows (`permute_rows`); `unpermute_rows` undoes it.

SentencePiece tokenizers are refused.
"""

from __future__ import annotations

import json
import logging
import math
from hashlib import sha256
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.ml.base.loading import chat_template_text

log = logging.getLogger(__name__)

LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

# The text llama.cpp's convert_hf_to_gguf.py tokenizes to recognise a BPE pre-tokenizer.
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
    "?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256 of str(token ids of _CHECK_TEXT) -> llama.cpp's pre-tokenizer name (from its converter).
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}


def read_llama_config(folder: Path) -> dict[str, Any]:
    """config.json of a Llama-family model; refuses other architectures with a clear message."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StudioError(f"Cannot read {path}: {err}") from err
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in LLAMA_ARCHITECTURES:
        raise StudioError(f"GGUF export supports Llama-family models ({', '.join(LLAMA_ARCHITECTURES)}); "
                          f"this base is {arch}.",
                          hint="Export a peft folder instead and convert it with llama.cpp's own scripts.")
    return config


def head_counts(config: dict[str, Any]) -> tuple[int, int]:
    n_head = int(config["num_attention_heads"])
    return n_head, int(config.get("num_key_value_heads") or n_head)


def permute_rows(weights, n_head: int):
    """llama.cpp's row order for q/k (HF pairs row i with i + d/2 in a head; llama.cpp with i + 1)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_rows(weights, n_head: int):
    """The inverse of `permute_rows` (GGUF row order back to Hugging Face's)."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def qk_heads(hf_name: str, config: dict[str, Any]) -> int | None:
    """Heads to permute over for a q_proj / k_proj weight name, else None."""
    n_head, n_kv = head_counts(config)
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return n_head
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return n_kv
    return None


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters)."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def add_llama_hparams(writer, config: dict[str, Any], file_type: int) -> None:
    import gguf

    n_head, n_kv = head_counts(config)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(file_type)
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] not in ("default", "llama3"):
        raise StudioError(f"RoPE scaling {rope['rope_type']!r} is not supported by the GGUF export yet.",
                          hint="Export the merged model in the Hugging Face layout instead.")


def llama3_rope_factors(config: dict[str, Any]):
    """The rope_freqs tensor llama.cpp needs for Llama 3.1+ RoPE scaling, else None."""
    import numpy as np

    rope = _rope(config)
    if rope["rope_type"] != "llama3":
        return None
    dim = head_dim(config)
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _check_byte_level_bpe(folder: Path) -> None:
    path = folder / "tokenizer.json"
    if not path.exists():
        raise StudioError(f"{folder.name} has no tokenizer.json; the GGUF export needs a byte-level BPE tokenizer.",
                          hint="SentencePiece (tokenizer.model) tokenizers are not supported yet.")
    spec = json.loads(path.read_text(encoding="utf-8"))
    text = json.dumps({k: spec.get(k) for k in ("pre_tokenizer", "decoder")})
    if (spec.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in text:
        raise StudioError("The GGUF export supports byte-level BPE (gpt2-style) tokenizers only; this one is "
                          f"{(spec.get('model') or {}).get('type', '?')} without a ByteLevel pre-tokenizer.",
                          hint="Export the merged model in the Hugging Face layout instead.")


def pre_tokenizer_name(tokenizer) -> str | None:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when the hash is not known here."""
    ids = tokenizer.encode(_CHECK_TEXT)
    return KNOWN_PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id (padded to vocab_size) and their gguf.TokenType values."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[i]
        if i in added:
            if not added[i].normalized:  # llama.cpp expects added tokens already normalized
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            special = added[i].special or _looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, [int(t) for t in types]


def add_bpe_vocab(writer, folder: Path, vocab_size: int, pre_tokenizer: str | None = None) -> list[str]:
    """Write the tokenizer metadata; returns warnings for the user."""
    import gguf

    from studio.ml.base.loading import load_tokenizer

    folder = Path(folder)
    _check_byte_level_bpe(folder)
    tokenizer = load_tokenizer(folder, distinct_pad=False)
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise StudioError(f"The tokenizer has ids beyond the model's vocab_size ({vocab_size}).",
                          hint="The tokenizer does not belong to this model.")
    warnings = []
    pre = pre_tokenizer or pre_tokenizer_name(tokenizer)
    if pre is None:
        pre = "default"
        warnings.append("The tokenizer's pre-tokenizer is not one this export recognises, so the GGUF says "
                        "'default'; llama.cpp may split text slightly differently than Hugging Face does.")
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise StudioError("The tokenizer has no BPE merges; llama.cpp could not tokenize with it.")
    # What the tokenizer really does wins over what its config files suggest.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = bool(probe) and probe[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = bool(probe) and len(probe) > 1 and probe[-1] == tokenizer.eos_token_id
    if special.chat_template is None:  # the config files carried none: the one template rule decides
        special.chat_template = chat_template_text(tokenizer) or None
    special.add_to_gguf(writer, quiet=True)
    return warnings
