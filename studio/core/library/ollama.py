"""Ollama bundles: a folder with a Modelfile (FROM base + ADAPTER ./adapter) and the adapter files.

`ollama create NAME -f Modelfile` inside the folder turns it into an Ollama model. FROM names the
base: an Ollama library tag or a folder when the user gives one, otherwise `./base`, where the user
puts (or links) the base's safetensors folder (Ollama imports Llama-, Mistral- and Gemma-family
safetensors): a bundle is made to be shared, so it names no folder of the user's. For ChatML
bases (the default SmolLM2 is one) the Modelfile carries the TEMPLATE and the stop parameters, so
Ollama renders turns the way the adapter was trained and stops at `<|im_end|>`.

Also a small parser, so a bundle can be checked for well-formedness without Ollama installed.
The smoke test of a bundle is studio.ml.export.merge.export_ollama's.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from studio.core import atomic
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import CONFIG_NAME, WEIGHTS_NAME

MODELFILE = "Modelfile"
ADAPTER_DIR = "adapter"
BUNDLED_BASE = "./base"  # the default FROM: a folder beside the Modelfile, which ollama resolves from there
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES")

# Ollama's Go template for ChatML: the system prompt, then each user/assistant turn, then the
# assistant's opening. Mirrors the ChatML chat templates of SmolLM2 and Qwen.
CHATML_OLLAMA_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n{{ end }}{{- end }}<|im_start|>assistant\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


@dataclass
class OllamaBundle:
    path: Path
    modelfile: Path
    from_ref: str
    has_template: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "modelfile": str(self.modelfile), "from": self.from_ref,
                "has_template": self.has_template, "warnings": list(self.warnings)}


def is_chatml(chat_template: str | None) -> bool:
    return bool(chat_template) and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template


def _quote(value: str) -> str:
    if '"""' in value:
        raise StudioError("This text cannot be put in a Modelfile (it contains triple quotes).")
    return f'"""{value}"""'


def modelfile_text(from_ref: str, *, adapter: str = f"./{ADAPTER_DIR}", chat_template: str | None = None,
                   system: str | None = None, comment: str = "") -> str:
    """The Modelfile: FROM, ADAPTER, and for ChatML bases TEMPLATE plus stop parameters."""
    if not from_ref.strip() or "\n" in from_ref:
        raise StudioError("The Ollama base (FROM) must be a model tag or a folder path on one line.")
    lines = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    lines += [f"FROM {from_ref}", f"ADAPTER {adapter}"]
    if is_chatml(chat_template):
        lines.append(f"TEMPLATE {_quote(CHATML_OLLAMA_TEMPLATE)}")
        lines += [f'PARAMETER stop "{stop}"' for stop in CHATML_STOPS]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs; raises StudioError on anything Ollama would reject."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([A-Za-z]+)\s+(.*)$", line)
        if not match or match.group(1).upper() not in INSTRUCTIONS:
            raise StudioError(f"Modelfile line {i} is not an instruction: {line!r}.")
        name, arg = match.group(1).upper(), match.group(2)
        if arg.startswith('"""'):
            body = arg[3:]
            while '"""' not in body:
                if i >= len(lines):
                    raise StudioError(f"Modelfile: the {name} text opened with \"\"\" is never closed.")
                body += "\n" + lines[i]
                i += 1
            arg, rest = body.split('"""', 1)
            if rest.strip():
                raise StudioError(f"Modelfile: text after the closing \"\"\" of {name}: {rest.strip()!r}.")
        if name == "PARAMETER" and not re.match(r"\w+\s+\S", arg):
            raise StudioError(f"Modelfile: PARAMETER needs a name and a value, got {arg!r}.")
        out.append((name, arg))
    froms = [arg for name, arg in out if name == "FROM"]
    if len(froms) != 1:
        raise StudioError(f"A Modelfile needs exactly one FROM, this one has {len(froms)}.")
    return out


def write_bundle(adapter_folder: Path | str, dest: Path | str, *, from_ref: str = BUNDLED_BASE,
                 chat_template: str | None, system: str | None = None, adapter_name: str = "",
                 base_name: str = "", adapter_config: str = "") -> OllamaBundle:
    """Write Modelfile + adapter/ into `dest` (an empty or new folder; callers stage it atomically).

    `adapter_config`, when given, is the text of the bundled adapter_config.json (an export's, see
    studio.core.library.exported), else the folder's is copied; `base_name` is named in the
    Modelfile's comment as the base FROM must be."""
    adapter_folder, dest = Path(adapter_folder), Path(dest)
    missing = [name for name in ADAPTER_FILES if not (adapter_folder / name).exists()]
    if missing:
        raise StudioError(f"{adapter_folder} lacks {', '.join(missing)}.",
                          hint="Ollama imports safetensors peft adapters (adapter_config.json + "
                               "adapter_model.safetensors).")
    target = dest / ADAPTER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter_folder / name, target / name)
    if adapter_config:
        atomic.write_text(target / CONFIG_NAME, adapter_config)
    warnings = []
    if not is_chatml(chat_template):
        warnings.append("The base's chat template is not ChatML, so the Modelfile has no TEMPLATE: "
                        "Ollama uses the FROM model's own template.")
    comment = (f"LoRA Studio export{f' of {adapter_name}' if adapter_name else ''}.\n"
               "Create the model with:  ollama create MODEL-NAME -f Modelfile\n"
               f"FROM must be the base this adapter was trained on{f' ({base_name})' if base_name else ''}: "
               "an Ollama tag or its safetensors folder."
               + (f"\nPut that folder (or a link to it) here as {BUNDLED_BASE}, or change FROM." if
                  from_ref == BUNDLED_BASE else ""))
    text = modelfile_text(from_ref, chat_template=chat_template, system=system, comment=comment)
    parse_modelfile(text)
    atomic.write_text(dest / MODELFILE, text)
    return OllamaBundle(path=dest, modelfile=dest / MODELFILE, from_ref=from_ref,
                        has_template=is_chatml(chat_template), warnings=warnings)
