"""Exact parameter counts and adapter file sizes, from a Hugging Face config.json alone.

Given a dense decoder's config (Llama, Mistral, Qwen2/3, Gemma and their kin: q/k/v/o attention
projections and a gate/up/down MLP) this module derives every linear layer's shape, and from them:

- the base model's parameter count (embeddings, untied lm head, projections, biases, norms);
- the trainable parameter count of a LoRA/DoRA/rsLoRA adapter, equal to peft's
  `get_nb_trainable_parameters()[0]`: r·(in + out) per targeted module per layer, plus `out` for
  DoRA's magnitude vector;
- the exact byte size of the `adapter_model.safetensors` that peft's `save_pretrained` writes:
  8 bytes of header length, the JSON header exactly as safetensors serialises it (`__metadata__`
  first, then tensors sorted by name, no spaces, padded with spaces to a multiple of 8), then the
  tensor data in the saved dtype (fp32 by default, since peft keeps adapter weights in fp32).

Memory and devices are left to `studio.core.train.estimator`, which builds on it. Mixture-of-
experts and fused-projection layouts (Phi-3's qkv_proj) are refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from studio.core.errors import StudioError

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES
# Model types whose decoder layer is exactly self_attn.{q,k,v,o}_proj + mlp.{gate,up,down}_proj under
# `model.layers.N`; others with the same config keys are estimated the same way, with a note.
LLAMA_LAYOUT_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo", "olmo2",
    "smollm3", "cohere", "stablelm", "starcoder2", "internlm2", "yi", "deepseek", "exaone",
})
# Known causal LMs whose projections are fused or named otherwise (qkv_proj, query_key_value, c_attn...).
OTHER_LAYOUT_TYPES = frozenset({"phi3", "phi", "gpt2", "gptj", "gpt_neox", "falcon", "bloom", "opt", "mpt"})
SAFETENSORS_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
# peft saves state-dict keys as base_model.model.<module path>, with the adapter name removed.
PEFT_PREFIX = "base_model.model.model.layers."

# Public config.json values (shape keys only) of the models the capability ladder tries, smallest first.
KNOWN_MODELS: dict[str, dict] = {
    "Llama-3.2-1B": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 131072,
    },
    "Qwen2.5-3B": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 2048,
        "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "Llama-3.1-8B": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 131072,
    },
    "Qwen2.5-14B": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 5120,
        "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
        "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
    "Qwen2.5-32B": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 5120,
        "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
        "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
}


@dataclass(frozen=True)
class ModelShape:
    """The shape-defining numbers of a dense decoder, read from its config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norms_per_layer: int  # hidden-sized norms in each layer (2; Gemma2/3 have 4)
    qk_norm: bool  # per-head q_norm/k_norm (Qwen3, Gemma3)
    known_layout: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear(self, name: str) -> tuple[str, int, int]:
        """(parent module, in_features, out_features) of one projection of a decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        table = {
            "q_proj": ("self_attn", h, q), "k_proj": ("self_attn", h, kv), "v_proj": ("self_attn", h, kv),
            "o_proj": ("self_attn", q, h), "gate_proj": ("mlp", h, i), "up_proj": ("mlp", h, i),
            "down_proj": ("mlp", i, h),
        }
        return table[name]

    @property
    def decoder_linear_params(self) -> int:
        """Weights of every q/k/v/o/gate/up/down projection (what bitsandbytes quantizes)."""
        per_layer = 0
        for name in ALL_LINEAR_MODULES:
            _, fan_in, fan_out = self.linear(name)
            per_layer += fan_in * fan_out
        return per_layer * self.layers

    @property
    def other_params(self) -> int:
        """Everything bitsandbytes leaves in 16-bit: embeddings, untied lm head, norms, biases."""
        h = self.hidden
        per_layer = self.norms_per_layer * h
        if self.qkv_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            per_layer += h
        if self.mlp_bias:
            per_layer += 2 * self.intermediate + h
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embeddings = self.vocab * h * (1 if self.tied else 2)
        return embeddings + per_layer * self.layers + h  # + the final norm

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def total_params(self) -> int:
        return self.decoder_linear_params + self.other_params


def _int(config: dict, key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise StudioError(f"The model's config.json has no usable {key!r} (found {value!r}).",
                          hint="The estimator needs a dense decoder config with hidden_size, "
                               "intermediate_size, num_attention_heads, num_hidden_layers and vocab_size.")
    return value


def model_shape(config: dict) -> ModelShape:
    """Read a config.json dict into a ModelShape; StudioError if it is not a dense decoder we can count."""
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    model_type = str(config.get("model_type", ""))
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if config.get(key):
            raise StudioError(f"{model_type or 'This model'} is a mixture-of-experts model; the estimator "
                              "only knows dense decoders.", hint="Estimates are unavailable for it.")
    if model_type in OTHER_LAYOUT_TYPES:
        raise StudioError(f"{model_type} names or fuses its projections differently from Llama "
                          "(q/k/v/o + gate/up/down), which the estimator does not count.",
                          hint="Estimates are unavailable for it.")
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    gemma_norms = model_type in ("gemma2", "gemma3_text", "gemma3")
    return ModelShape(
        model_type=model_type, hidden=hidden, intermediate=_int(config, "intermediate_size"),
        layers=_int(config, "num_hidden_layers"), heads=heads, kv_heads=int(kv_heads),
        head_dim=int(head_dim), vocab=_int(config, "vocab_size"),
        tied=bool(config.get("tie_word_embeddings", True)),
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        norms_per_layer=4 if gemma_norms else 2,
        qk_norm=model_type in ("qwen3", "gemma3_text", "gemma3", "olmo2"),
        known_layout=model_type in LLAMA_LAYOUT_TYPES,
    )


def resolve_targets(targets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'attention' -> q/k/v/o, 'all-linear' -> + gate/up/down, or an explicit list of module names."""
    if isinstance(targets, str):
        if targets == "attention":
            return ATTENTION_MODULES
        if targets == "all-linear":
            return ALL_LINEAR_MODULES
        targets = [targets]
    unknown = [t for t in targets if t not in ALL_LINEAR_MODULES]
    if unknown or not targets:
        raise StudioError(f"Unknown LoRA target modules: {', '.join(unknown) or '(none given)'}.",
                          hint="Use 'attention', 'all-linear', or names from: "
                               + ", ".join(ALL_LINEAR_MODULES) + ".")
    return tuple(name for name in ALL_LINEAR_MODULES if name in targets)


def trainable_params(shape: ModelShape, targets: tuple[str, ...], rank: int, dora: bool) -> int:
    """peft's trainable-parameter count: r·(in+out) per module per layer, + out per module for DoRA."""
    per_layer = 0
    for name in targets:
        _, fan_in, fan_out = shape.linear(name)
        per_layer += rank * (fan_in + fan_out) + (fan_out if dora else 0)
    return per_layer * shape.layers


def adapter_tensors(shape: ModelShape, targets: tuple[str, ...], rank: int, dora: bool
                    ) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict key, shape) of every tensor peft saves, as in adapter_model.safetensors."""
    return _entries(shape.layers, tuple((name, *shape.linear(name)) for name in targets), rank, dora)


def adapter_file_bytes(shape: ModelShape, targets: tuple[str, ...], rank: int, dora: bool,
                       dtype: str = "F32") -> int:
    """Exact size of the adapter_model.safetensors peft writes for this adapter (cached)."""
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise StudioError(f"Unknown adapter save dtype {dtype!r}.", hint="Use F32, BF16 or F16.")
    modules = tuple((name, *shape.linear(name)) for name in targets)
    return _adapter_file_bytes(shape.layers, modules, rank, dora, dtype)


Modules = tuple[tuple[str, str, int, int], ...]  # (name, parent, in_features, out_features)


def _entries(layers: int, modules: Modules, rank: int, dora: bool) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for layer in range(layers):
        for name, parent, fan_in, fan_out in modules:
            stem = f"{PEFT_PREFIX}{layer}.{parent}.{name}."
            entries.append((stem + "lora_A.weight", (rank, fan_in)))
            entries.append((stem + "lora_B.weight", (fan_out, rank)))
            if dora:
                entries.append((stem + "lora_magnitude_vector", (fan_out,)))
    return entries


@lru_cache(maxsize=256)
def _adapter_file_bytes(layers: int, modules: Modules, rank: int, dora: bool, dtype: str) -> int:
    """Same number as `safetensors_file_bytes(_entries(...))`, by arithmetic instead of building the
    header text: the name order is (layer number as a string, name within the layer), so only the
    digit counts of the data offsets need a walk. Tens of microseconds for a 64-layer model."""
    itemsize = SAFETENSORS_DTYPE_BYTES[dtype]
    in_layer = []  # (name after "layers.N.", shape) of one layer's tensors
    for name, parent, fan_in, fan_out in modules:
        stem = f"{parent}.{name}."
        in_layer.append((stem + "lora_A.weight", (rank, fan_in)))
        in_layer.append((stem + "lora_B.weight", (fan_out, rank)))
        if dora:
            in_layer.append((stem + "lora_magnitude_vector", (fan_out,)))
    in_layer.sort()
    # '"<name>":{"dtype":"F32","shape":[<dims>],"data_offsets":[<start>,<end>]}' minus the variable parts
    fixed = len('"":{"dtype":"","shape":[],"data_offsets":[,]}') + len(dtype) + len(PEFT_PREFIX) + 1
    sized = []
    for rel, dims in in_layer:
        size = itemsize
        for d in dims:
            size *= d
        sized.append((fixed + len(rel) + len(",".join(map(str, dims))), size))
    header = len('{"__metadata__":{"format":"pt"}}') + len(in_layer) * layers  # braces + one comma each
    offset = 0
    for layer in sorted(range(layers), key=str):
        digits = len(str(layer))
        for length, size in sized:
            header += length + digits + len(str(offset)) + len(str(offset + size))
            offset += size
    return 8 + header + (8 - header % 8) % 8 + offset


def safetensors_header(entries: list[tuple[str, tuple[int, ...]]], dtype: str,
                       metadata: dict[str, str] | None = None) -> bytes:
    """The JSON header safetensors writes for same-dtype tensors, padding included.

    safetensors sorts tensors by dtype then name, lays their data out in that order, serialises
    `{"__metadata__":{...},"name":{"dtype":..,"shape":[..],"data_offsets":[start,end]},...}` with no
    whitespace and pads it with spaces to a multiple of 8 bytes.
    """
    itemsize = SAFETENSORS_DTYPE_BYTES[dtype]
    parts = []
    if metadata:
        inner = ",".join(f'"{k}":"{v}"' for k, v in metadata.items())
        parts.append(f'"__metadata__":{{{inner}}}')
    offset = 0
    for name, dims in sorted(entries):
        size = itemsize
        for d in dims:
            size *= d
        shape_text = ",".join(str(d) for d in dims)
        parts.append(f'"{name}":{{"dtype":"{dtype}","shape":[{shape_text}],'
                     f'"data_offsets":[{offset},{offset + size}]}}')
        offset += size
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    return header + b" " * ((8 - len(header) % 8) % 8)


def safetensors_file_bytes(entries: list[tuple[str, tuple[int, ...]]], dtype: str,
                           metadata: dict[str, str] | None = None) -> int:
    """8-byte length prefix + padded JSON header + the tensors' data."""
    itemsize = SAFETENSORS_DTYPE_BYTES[dtype]
    data = 0
    for _, dims in entries:
        size = itemsize
        for d in dims:
            size *= d
        data += size
    return 8 + len(safetensors_header(entries, dtype, metadata)) + data
