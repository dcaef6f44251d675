"""Validate and describe one adapter folder in peft's layout, without loading a single weight.

An adapter folder holds peft's `adapter_config.json`, `adapter_model.safetensors` and, when the
studio made or imported it, our `studio.json`. `inspect_adapter` checks the config is a LoRA config
peft understands whose initialisation leaves the base model's weights alone (PiSSA, OLoRA, CorDA,
LoftQ and LoRA-GA rewrite them when peft attaches the adapter, so they are refused), the weights are
a whole safetensors file (never a pickle), the tensor names are
LoRA's with ranks matching `r`, and, when the claimed base model can be found, that every LoRA
matrix fits the base's Linear weight. A folder without `studio.json` gets a manifest inferred from
its config. `adapter_base` finds the base an adapter records, through the one base resolver
(studio.core.basemodels); what an export carries is studio.core.library.exported's. Unpacking a .zip
safely is studio.core.library.archive's job; `find_adapter_root` finds the adapter inside what it
unpacked.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.core.basemodels import (
    BaseLocation,
    base_not_found,
    find_by_fingerprint,
    fingerprint,
    locate_base,
    read_config,
    same_fingerprint_note,
    tensor_infos,
)
from studio.core.errors import StudioError
from studio.core.library.archive import ZIP_JUNK
from studio.core.library.manifest import MANIFEST_NAME, AdapterManifest, clean_text, read_manifest
from studio.core.paths import DataDir
from studio.core.tensorfiles import TensorInfo, nonfinite_tensors, read_header

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# What an import copies besides peft's two files and studio.json: small files people ship with an adapter.
EXTRA_FILES = ("README.md", "LICENSE", "LICENSE.md", "LICENSE.txt")
MAX_EXTRA_BYTES = 1024**2
MAX_MANIFEST_BYTES = 16 * 1024**2
MAX_WEIGHTS_BYTES = 20 * 1024**3
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PEFT_PREFIX = "base_model.model."
LORA_TENSOR = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[^.]+)?(?:\.weight)?$"
)
# peft saves the full weight of a targeted embedding / output head beside its LoRA pair (its
# save_embedding_layers="auto"), e.g. "lm_head.base_layer.weight" when a tied lm_head is targeted.
EMBEDDING_COPY = re.compile(r"^(?P<module>.+\.)?(embed_tokens|lm_head|wte)(\.base_layer)?\.weight$")
CONVERT_HINT = (
    "Convert it once, in Python, after checking you trust its source: "
    "`import torch; from safetensors.torch import save_file; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), 'adapter_model.safetensors')`, "
    "then remove the .bin and import the folder again."
)

# peft inits that rewrite the base layer's weight when the adapter is attached; the adapter's saved
# A/B only make sense on that rewritten base, and the chat engine shares one base among adapters.
BASE_MUTATING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
# named inits that leave the base alone (what they make is replaced by the saved weights anyway)
BASE_KEEPING_INITS = ("gaussian", "eva", "orthogonal", "mica")
CONVERSION_HINT = (
    "Convert it once to a plain LoRA adapter where it was trained: save it again with peft's "
    "`save_pretrained(out_dir, path_initial_model_for_weight_conversion=init_dir)`, where init_dir holds "
    "the adapter as saved right after its initialisation (PiSSA, OLoRA, CorDA), then import out_dir."
)

BaseLookup = Callable[[str], "Path | None"]


@dataclass
class AdapterInfo:
    """What `inspect_adapter` found: the folder's config, manifest (read or inferred) and base."""

    path: Path
    config: dict[str, Any]
    manifest: AdapterManifest
    inferred: bool  # True when the manifest was inferred (no usable studio.json)
    tensors: dict[str, TensorInfo]
    modules: list[str]  # base module names the LoRA matrices attach to
    weights_bytes: int
    base_path: Path | None = None
    base_fingerprint: str = ""
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- config and weights files


def read_adapter_config(folder: Path, label: str) -> dict[str, Any]:
    """peft's adapter_config.json, checked to be a LoRA config peft can load."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise StudioError(f"{label} is not a peft adapter: it has no {CONFIG_NAME}.",
                          hint="Pick the folder (or .zip) that holds adapter_config.json and "
                               "adapter_model.safetensors, as written by peft's save_pretrained.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{label}: {CONFIG_NAME} is not valid JSON ({err}).",
                          hint="Restore the file from the adapter's original source.") from err
    except RecursionError as err:
        raise StudioError(f"{label}: {CONFIG_NAME} is not usable: its JSON is nested too deeply.",
                          hint="Restore the file from the adapter's original source.") from err
    if not isinstance(config, dict):
        raise StudioError(f"{label}: {CONFIG_NAME} should hold a JSON object.")
    peft_type = str(config.get("peft_type") or "")
    if peft_type.upper() != "LORA":
        raise StudioError(f"{label} is a {peft_type or 'unknown'} adapter, not LoRA "
                          f"(adapter_config.json says peft_type={peft_type or 'nothing'!r}).",
                          hint="The studio handles LoRA adapters (LoRA, DoRA, rsLoRA) only.")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise StudioError(f"{label}: {CONFIG_NAME} has no valid rank 'r' (found {rank!r}).")
    if not config.get("target_modules") and not config.get("target_parameters"):
        raise StudioError(f"{label}: {CONFIG_NAME} names no target_modules.")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise StudioError(f"{label}: {CONFIG_NAME} has a non-numeric lora_alpha ({alpha!r}).")
    check_config_values(config, label)
    check_init_keeps_base(config, label)
    return config


def check_config_values(config: dict[str, Any], label: str) -> None:
    """The types and values peft would trip over later: targets, rank/alpha patterns, finite alpha."""
    where = f"{label}: {CONFIG_NAME}"
    for key in ("target_modules", "target_parameters"):
        targets = config.get(key)
        if targets is None or isinstance(targets, str):
            continue
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise StudioError(f"{where}: {key} should be a list of module names or one pattern, "
                              f"not {targets!r:.80}.")
    alpha = config.get("lora_alpha", 8)
    if not math.isfinite(alpha) or alpha <= 0:
        raise StudioError(f"{where}: lora_alpha must be a positive finite number, not {alpha!r}.")
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise StudioError(f"{where}: {key} should map module patterns to numbers, not {patterns!r:.80}.")
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise StudioError(f"{where}: {key} entry {pattern!r} is not a valid regular expression "
                                  f"({err}).") from err
            whole = isinstance(value, int) and value > 0
            number = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
            if isinstance(value, bool) or not (whole if key == "rank_pattern" else number):
                raise StudioError(f"{where}: {key} gives {pattern!r} the value {value!r}; it must be a "
                                  f"positive {'whole ' if key == 'rank_pattern' else ''}number.")


def importable_files(folder: Path, label: str) -> list[Path]:
    """The files an import copies from `folder`: peft's two, studio.json and small known extras.

    Nothing else comes in (logs, notes, data a user left beside the adapter), and a symbolic link
    is never followed, except for peft's own two files, which the Hugging Face cache keeps as links
    into its blobs and which are validated in full after the copy.
    """
    chosen: list[Path] = []
    for name in (CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME, *EXTRA_FILES):
        path = folder / name
        if name in (CONFIG_NAME, WEIGHTS_NAME):
            if path.is_file():
                chosen.append(path)
            continue
        if path.is_symlink() or not path.is_file():
            if path.is_symlink():
                log.warning("%s: not importing %s, a symbolic link", label, name)
            continue
        if path.stat().st_size > extra_file_limit(name):
            log.warning("%s: not importing %s (%d bytes, more than it may take)", label, name, path.stat().st_size)
            continue
        chosen.append(path)
    weights = folder / WEIGHTS_NAME
    if weights.is_file() and weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise StudioError(f"{label}: {WEIGHTS_NAME} is {weights.stat().st_size / 1024**3:.1f} GiB, more than "
                          f"the {MAX_WEIGHTS_BYTES / 1024**3:.0f} GiB any LoRA adapter takes.",
                          hint="Check that it is a LoRA adapter and not a whole model.")
    return chosen


def extra_file_limit(name: str) -> int:
    """The most bytes an import takes of studio.json or one of EXTRA_FILES."""
    return MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_EXTRA_BYTES


def base_mutating_init(config: dict[str, Any]) -> str:
    """The config's init_lora_weights when peft would rewrite the base weights with it, else ""."""
    init = config.get("init_lora_weights", True)
    return init if isinstance(init, str) and init.lower().startswith(BASE_MUTATING_INITS) else ""


def check_init_keeps_base(config: dict[str, Any], label: str) -> None:
    """Refuse an adapter whose initialisation would change the base model shared with other adapters."""
    init = base_mutating_init(config)
    if init:
        raise StudioError(
            f"{label} was made with the {init!r} initialisation (init_lora_weights in {CONFIG_NAME}): peft "
            "rewrites the base model's weights when it loads such an adapter, which would change the answers "
            "of the base and of every other adapter on it, and the adapter itself is only right on that "
            "rewritten base.", hint=CONVERSION_HINT)


def neutral_init(init: Any) -> Any:
    """The init to attach a saved adapter with: its own when it leaves the base alone, else peft's plain one."""
    return init if isinstance(init, bool) or init in BASE_KEEPING_INITS else True


def pickled_weights(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def check_weights_present(folder: Path, label: str) -> None:
    """Refuse a folder whose only weights are pickles (or that has no weights at all)."""
    if (folder / WEIGHTS_NAME).is_file():
        return
    pickles = pickled_weights(folder)
    if pickles:
        names = ", ".join(p.name for p in pickles)
        raise StudioError(f"{label} has pickled weights ({names}) and no {WEIGHTS_NAME}. The studio "
                          "does not load pickles, because unpickling a file can run any code.",
                          hint=CONVERT_HINT)
    raise StudioError(f"{label} has no {WEIGHTS_NAME}.",
                      hint="Save the adapter with peft's save_pretrained (safetensors is its default).")


# ---------------------------------------------------------------- manifest inference


def method_of(config: dict[str, Any]) -> str:
    if config.get("use_dora"):
        return "dora"
    return "rslora" if config.get("use_rslora") else "lora"


def target_list(config: dict[str, Any]) -> list[str]:
    targets = config.get("target_modules") or config.get("target_parameters") or []
    return [targets] if isinstance(targets, str) else sorted(str(t) for t in targets)


def infer_manifest(folder: Path, config: dict[str, Any], *, source: str = "inferred") -> AdapterManifest:
    """A manifest built from peft's config alone, for adapters that arrive without studio.json."""
    mtime = (folder / CONFIG_NAME).stat().st_mtime
    created = datetime.fromtimestamp(mtime, timezone.utc).replace(microsecond=0).isoformat()
    return AdapterManifest(
        id=folder.name, name=clean_text(folder.name), base_model=str(config.get("base_model_name_or_path") or ""),
        method=method_of(config), rank=int(config["r"]), alpha=float(config.get("lora_alpha", 8)),
        target_modules=target_list(config),
        hyperparameters={"lora_dropout": config.get("lora_dropout", 0.0), "bias": config.get("bias", "none")},
        source=source, created=created,
    )


# ---------------------------------------------------------------- finding the claimed base


def default_base_lookup(data: DataDir) -> BaseLookup:
    """name -> base model folder or None, through the base resolver (studio.core.basemodels.locate_base).

    Nothing is inspected, so listing a library neither reads weights nor imports transformers."""
    cache: dict[str, Path | None] = {}

    def lookup(name: str) -> Path | None:
        if name not in cache:
            found = locate_base(data, name)
            cache[name] = found.path if found is not None else None
        return cache[name]

    return lookup


def base_claims(manifest: AdapterManifest, config: dict[str, Any]) -> list[str]:
    """The names an adapter gives its base: studio.json's base_model, then adapter_config.json's."""
    return [c for c in dict.fromkeys((manifest.base_model, str(config.get("base_model_name_or_path") or ""))) if c]


def first_base_found(data: DataDir, claims: list[str]) -> BaseLocation | None:
    """The first of an adapter's `base_claims` the base resolver finds here, or None."""
    for claim in claims:
        found = locate_base(data, claim)
        if found is not None:
            return found
    return None


def adapter_base(data: DataDir, folder: Path, manifest: AdapterManifest) -> BaseLocation:
    """Where the base model an adapter was trained on is, found from what it records (`base_claims`).

    Older studios recorded a base given as a folder by its bare name in studio.json (and by its full
    path in adapter_config.json), so the second claim is tried when the first is not found. Failing
    both, the StudioError says what was looked for and which file to fix. Reads no weights."""
    name = manifest.name or folder.name
    claims = base_claims(manifest, read_adapter_config(folder, repr(name)))
    fix = folder / MANIFEST_NAME
    if not claims:
        raise StudioError(f"{name!r} does not say which base model it was trained on.",
                          hint=f"Set base_model in {fix} to the base's folder (full path), studio id or "
                               "Hugging Face repo id, then try again.")
    found = first_base_found(data, claims)
    if found is not None:
        return found
    missing = base_not_found(data, claims[0])
    raise StudioError(f"{name!r} was trained on a base that is not here. {missing.message}",
                      hint=f"Set base_model in {fix} to the base's full folder path (or its studio id or "
                           "Hugging Face repo id); `lora-studio models` lists the bases available."
                           + same_fingerprint_note(data, manifest.base_fingerprint))


# ---------------------------------------------------------------- tensors


def _module_rank(config: dict[str, Any], module: str) -> int:
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            return int(rank)
    return int(config["r"])


def group_lora_tensors(tensors: dict[str, TensorInfo], config: dict[str, Any], label: str
                       ) -> dict[str, dict[str, TensorInfo]]:
    """Base module name -> {lora_A, lora_B, ...}, after checking names, pairs and ranks."""
    extra_allowed = bool(config.get("modules_to_save") or config.get("trainable_token_indices"))
    groups: dict[str, dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        match = LORA_TENSOR.match(name)
        if not match:
            if extra_allowed or EMBEDDING_COPY.match(name):
                continue
            raise StudioError(f"{label}: tensor {name!r} is not a LoRA tensor (expected names ending in "
                              "lora_A / lora_B / lora_magnitude_vector).",
                              hint="This file does not look like a peft LoRA adapter.")
        module = match["module"].removeprefix(PEFT_PREFIX)
        groups.setdefault(module, {})[match["kind"].replace("embedding_", "")] = info
    if not groups:
        raise StudioError(f"{label}: {WEIGHTS_NAME} holds no LoRA tensors.")
    for module, parts in groups.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            raise StudioError(f"{label}: module {module!r} has only one of lora_A / lora_B; the file is incomplete.")
        a, b = parts["lora_A"], parts["lora_B"]
        rank = _module_rank(config, module)
        if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise StudioError(f"{label}: the rank of {a.name!r} {list(a.shape)} and {b.name!r} "
                              f"{list(b.shape)} does not match r={rank} in {CONFIG_NAME}.",
                              hint="The config and the weights come from different adapters.")
    return groups


def tied_embedding(base: dict[str, TensorInfo]) -> TensorInfo | None:
    """The token embedding a model without its own lm_head weight ties its output head to."""
    return next((info for name, info in base.items() if name.endswith(("embed_tokens.weight", "wte.weight"))),
                None)


def check_fits_base(groups: dict[str, dict[str, TensorInfo]], base: dict[str, TensorInfo],
                    config: dict[str, Any], label: str, base_label: str) -> None:
    """Every LoRA pair must match the (out, in) shape of the base weight it attaches to."""
    claimed = config.get("base_model_name_or_path") or "?"
    hint = (f"The adapter was made for a different model than {claimed!r}. Use it with the base it was "
            "trained on, or fix base_model_name_or_path in adapter_config.json.")
    for module, parts in groups.items():
        weight = next((base[n] for n in (f"{module}.weight", f"{module.removeprefix('model.')}.weight")
                       if n in base), None)
        if weight is None and module.split(".")[-1] == "lm_head":
            weight = tied_embedding(base)  # tied embeddings: the output head is the input embedding
        a, b = parts["lora_A"], parts["lora_B"]
        if weight is None:
            raise StudioError(f"Adapter {label} does not fit base model {base_label}: tensor {a.name!r} "
                              f"attaches to {module!r}, which the base model does not have.", hint=hint)
        if len(weight.shape) < 2:
            raise StudioError(f"Adapter {label} does not fit base model {base_label}: {module!r} is not "
                              f"a Linear layer there (shape {list(weight.shape)}).", hint=hint)
        out_f, in_f = weight.shape[0], weight.shape[1]
        if config.get("fan_in_fan_out") or "lora_embedding_A" in a.name:
            out_f, in_f = in_f, out_f  # Conv1D and Embedding store (in, out)
        for tensor, dim, expected in ((a, 1, in_f), (b, 0, out_f)):
            if tensor.shape[dim] != expected:
                want = [tensor.shape[0], expected] if dim == 1 else [expected, tensor.shape[1]]
                raise StudioError(
                    f"Adapter {label} does not fit base model {base_label}: tensor {tensor.name!r} has "
                    f"shape {list(tensor.shape)}, but the base's {weight.name!r} has shape "
                    f"{list(weight.shape)}, so it should be {want}.", hint=hint)
        magnitude = parts.get("lora_magnitude_vector")
        if magnitude is not None and magnitude.shape and magnitude.shape[0] != out_f:
            raise StudioError(f"Adapter {label} does not fit base model {base_label}: DoRA magnitude "
                              f"{magnitude.name!r} has shape {list(magnitude.shape)}, expected [{out_f}].",
                              hint=hint)


def check_rank_fits(groups: dict[str, dict[str, TensorInfo]], label: str) -> None:
    """Refuse a LoRA pair whose rank exceeds both sides of the layer it adapts: no base has a use for it."""
    for module, parts in groups.items():
        a, b = parts["lora_A"], parts["lora_B"]
        rank, in_f, out_f = a.shape[0], a.shape[1], b.shape[0]
        if rank > max(in_f, out_f):
            raise StudioError(f"{label}: module {module!r} has rank {rank} (tensor {a.name!r} {list(a.shape)}) "
                              f"on a layer only {in_f} wide in and {out_f} out; a rank above "
                              f"{min(in_f, out_f)} adds nothing there.",
                              hint="Train it again with a smaller rank (8 to 64 is usual).")


def check_targets_in_base(config: dict[str, Any], base: dict[str, TensorInfo], label: str, base_label: str) -> None:
    """Every module `target_modules` names must exist in the base, as peft matches them (name suffix, or regex)."""
    targets = config.get("target_modules")
    if not targets or targets == "all-linear":
        return
    modules = {name.removesuffix(".weight") for name in base if name.endswith(".weight")}
    if tied_embedding(base) is not None:
        modules.add("lm_head")  # a tied output head has no weight of its own, but peft can target it
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, m) for m in modules):
            raise StudioError(f"Adapter {label}: target_modules pattern {targets!r} matches no layer of base "
                              f"model {base_label}.", hint="Use it with the base it was trained on.")
        return
    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
    for target in targets:
        if not any(m == target or m.endswith(f".{target}") for m in modules):
            raise StudioError(f"Adapter {label}: target_modules names {target!r}, which base model {base_label} "
                              f"does not have (its layers end in {', '.join(leaves[:12])}).",
                              hint="Use it with the base it was trained on, or fix target_modules in "
                                   f"{CONFIG_NAME}.")


def check_finite_weights(folder: Path, tensors: dict[str, TensorInfo], label: str) -> None:
    """Refuse weights holding NaN or Inf: every answer of the adapted model would be garbage."""
    bad = nonfinite_tensors(folder / WEIGHTS_NAME, tensors)
    if bad:
        first = bad[0]
        match = LORA_TENSOR.match(first)
        module = match["module"].removeprefix(PEFT_PREFIX) if match else first
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise StudioError(f"{label}: tensor {first!r} of module {module!r} holds NaN or infinite values{more}.",
                          hint="The training that made it diverged; train it again, e.g. with a lower "
                               "learning rate.")


def find_adapter_root(root: Path, label: str) -> Path:
    """The folder of an unpacked zip holding adapter_config.json: the root or its one sub-folder."""
    if (root / CONFIG_NAME).is_file():
        return root
    subs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in ZIP_JUNK and not p.name.startswith(".")]
    hits = [p for p in subs if (p / CONFIG_NAME).is_file()]
    if len(hits) > 1:
        raise StudioError(f"{label} holds several adapters ({', '.join(p.name for p in hits)}).",
                          hint="Import them one at a time, as separate zips or folders.")
    if hits:
        return hits[0]
    read_adapter_config(root, label)  # raises "not a peft adapter: no adapter_config.json"
    return root


# ---------------------------------------------------------------- the whole inspection


def inspect_adapter(folder: Path | str, base_lookup: BaseLookup | None = None, *,
                    data: DataDir | None = None, label: str | None = None) -> AdapterInfo:
    """Validate an adapter folder and describe it; every refusal is a StudioError.

    `base_lookup` maps the claimed base name to a base model folder (or None when it is not
    available); by default it searches `data` (the studio's data directory) and the HF cache.
    `label` names the adapter in messages (default: the folder name).
    """
    folder = Path(folder)
    label = label or repr(folder.name)
    if not folder.is_dir():
        raise StudioError(f"{label} is not a folder.")
    config = read_adapter_config(folder, label)
    check_weights_present(folder, label)
    warnings: list[str] = []
    if pickled_weights(folder):
        warnings.append("Pickled weight files in the folder are ignored; only adapter_model.safetensors is used.")
    tensors = read_header(folder / WEIGHTS_NAME)
    groups = group_lora_tensors(tensors, config, label)
    check_rank_fits(groups, label)

    manifest: AdapterManifest | None = None
    try:
        manifest = read_manifest(folder)
    except (StudioError, TypeError, ValueError) as err:
        warnings.append(f"studio.json could not be read ({err}); its details were inferred again.")
    inferred = manifest is None
    if manifest is None:
        manifest = infer_manifest(folder, config)
    manifest.id = folder.name

    if base_lookup is None:
        if data is None:
            from studio.core.paths import data_dir

            data = data_dir()
        base_lookup = default_base_lookup(data)
    claims = base_claims(manifest, config)
    base_path = next((p for p in (base_lookup(c) for c in claims) if p is not None), None)
    if base_path is None and manifest.base_fingerprint and data is not None:
        base_path = find_by_fingerprint(data, manifest.base_fingerprint)

    base_fp = ""
    if base_path is None:
        warnings.append(f"Base model {claims[0] if claims else '(none named)'!r} was not found, so the adapter's "
                        "shapes could not be checked against it.")
    else:
        base_tensors = tensor_infos(base_path)
        base_label = repr(claims[0] if claims else base_path.name)
        if claims and claims[0] not in (base_path.name, str(base_path)):
            base_label += f" (found at {base_path})"
        check_fits_base(groups, base_tensors, config, label, base_label)
        check_targets_in_base(config, base_tensors, label, base_label)
        base_fp = fingerprint(read_config(base_path), base_tensors)
        if manifest.base_fingerprint and manifest.base_fingerprint != base_fp:
            warnings.append(f"The adapter was trained on a base with fingerprint {manifest.base_fingerprint}; "
                            f"{base_path.name} has {base_fp}. Its shapes fit, but outputs may differ.")
    return AdapterInfo(path=folder, config=config, manifest=manifest, inferred=inferred, tensors=tensors,
                       modules=sorted(groups), weights_bytes=sum(t.nbytes for t in tensors.values()),
                       base_path=base_path, base_fingerprint=base_fp, warnings=warnings)
