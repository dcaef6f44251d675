"""Base models: the one resolver from a base reference to its folder; validation and fingerprints.

A base model is a Hugging Face-layout folder: config.json, tokenizer files, safetensors weights.
A reference names one as a studio id (`models/<id>/`, "org/name" for `models/org--name/`), a Hugging
Face cache repo id, or a folder. `locate_base` finds the folder (cheaply, without reading weights)
and `resolve_base_model` describes it; either gives the base an `id` that finds it again from any
working directory (studio id, repo id, or absolute folder), which is what adapters record, a
`peft_name` (its hub id where it has one, else its folder) for the library's adapter_config.json, so
plain peft finds the base too, and an `export_name` (its hub id, else its folder's name: never a
path of the user's) for what leaves the machine. The fingerprint hashes what decides whether an
adapter fits: the shape-defining config keys and every tensor's name and shape. Loading weights is
studio.ml's job.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from studio.core.errors import StudioError
from studio.core.jsonfile import read_json
from studio.core.paths import DataDir
from studio.core.progress import OnProgress, Steps
from studio.core.tensorfiles import TensorInfo, read_header

log = logging.getLogger(__name__)

DEFAULT_BASE_ID = "SmolLM2-135M-Instruct"
DEFAULT_BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the default's id on the hub, for peft
SHAPE_KEYS = (
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# The default base's shape (SHAPE_KEYS, plus its positions), so estimates and the preflight work before
# it is converted on first use; a test checks it against the converted model. Positions are not a
# SHAPE_KEY: those make the fingerprint, and adapters record it.
DEFAULT_BASE_SHAPE = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 8192,
}
# The default base's Linear layer names (what explicit targets may name); the same test checks them.
DEFAULT_BASE_LINEAR = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")


def hub_id(base_id: str, source: str) -> str | None:
    """The base's Hugging Face hub id, where it has one (a cache repo, a download, the default)."""
    if source == "hf-cache" or (source == "studio" and "/" in base_id):
        return base_id
    if source == "studio" and base_id == DEFAULT_BASE_ID:
        return DEFAULT_BASE_HUB_ID
    return None


def peft_name(base_id: str, source: str, path: Path) -> str:
    """What the library's adapter_config.json names as base_model_name_or_path so that plain peft
    (AutoPeftModelForCausalLM) finds this base on this machine: its hub id, else its folder."""
    return hub_id(base_id, source) or str(path)


def export_name(base_id: str, source: str, path: Path) -> str:
    """How an export names this base: its hub id, else its folder's name (an export leaves the
    machine, so it carries no path of the user's)."""
    return hub_id(base_id, source) or Path(path).name


@dataclass(frozen=True)
class BaseLocation:
    """Where a base reference led: the folder, the id that finds it from anywhere, how it was found."""

    path: Path
    id: str
    source: str  # studio | hf-cache | folder

    @property
    def peft_name(self) -> str:
        return peft_name(self.id, self.source, self.path)

    @property
    def export_name(self) -> str:
        return export_name(self.id, self.source, self.path)

    def inspect(self) -> BaseModelInfo:
        """Validate the folder and describe it under this id (reads safetensors headers)."""
        return inspect_base_model(self.path, model_id=self.id, source=self.source)


@dataclass
class BaseModelInfo:
    id: str  # what adapters record: a studio id, a Hugging Face repo id, or an absolute folder
    path: Path
    source: str  # studio | hf-cache | folder
    architecture: str
    model_type: str
    parameters: int
    weights_bytes: int
    fingerprint: str
    has_chat_template: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def peft_name(self) -> str:
        return peft_name(self.id, self.source, self.path)

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path), "peft_name": self.peft_name}


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise StudioError(f"{folder} has no config.json, so it is not a Hugging Face model folder.",
                          hint="Point at the folder that holds config.json and the .safetensors files.")
    config = read_json(path)
    if not isinstance(config, dict):
        raise StudioError(f"{path} should hold a JSON object.")
    return config


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, RecursionError) as err:
            raise StudioError(f"{index} is not a valid safetensors index: {err}.") from err
        return [folder / name for name in names]
    return sorted(folder.glob("*.safetensors"))


def tensor_infos(folder: Path) -> dict[str, TensorInfo]:
    """Every weight tensor of the model folder, by name (headers only; nothing is loaded)."""
    files = weight_files(folder)
    if not files:
        if list(Path(folder).glob("*.bin")) or list(Path(folder).glob("*.pt")):
            raise StudioError(f"{folder} has only pickled .bin weights, which the studio does not load "
                              "(they can run code).", hint="Convert the model to safetensors first.")
        raise StudioError(f"{folder} has no .safetensors weights.")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        if not file.exists():
            raise StudioError(f"{file.name} is listed in the model's index but missing.")
        tensors.update(read_header(file))
    return tensors


def fingerprint(config: dict, tensors: dict[str, TensorInfo]) -> str:
    shape_config = {k: config.get(k) for k in SHAPE_KEYS if k in config}
    shapes = sorted((name, list(info.shape)) for name, info in tensors.items())
    blob = json.dumps({"config": shape_config, "tensors": shapes}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """The fingerprint of a model folder, from its config and safetensors headers (no weights read)."""
    return fingerprint(read_config(folder), tensor_infos(folder))


def find_by_fingerprint(data: DataDir, wanted: str) -> Path | None:
    """The first model in the studio's models/ with this fingerprint, if any."""
    if not wanted or not data.models.is_dir():
        return None
    for folder in sorted(p for p in data.models.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            if folder_fingerprint(folder) == wanted:
                return folder
        except StudioError:
            continue
    return None


def known_causal_lm(config: dict) -> bool:
    """Whether transformers has a causal-LM class for this model type (imports transformers lazily)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def has_chat_template(folder: Path) -> bool:
    folder = Path(folder)
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        try:
            settings = json.loads(tok_config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # a broken file has no usable template either
            return False
        return isinstance(settings, dict) and bool(settings.get("chat_template"))
    return False


def inspect_base_model(folder: Path | str, *, model_id: str | None = None, source: str = "folder"
                       ) -> BaseModelInfo:
    """Validate a model folder and describe it. Raises StudioError saying what is missing.

    Without `model_id`, a Hugging Face cache snapshot is known by its repo id and any other folder
    by its absolute path (only the resolver, which knows the data directory, gives studio ids)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"{folder} is not a folder.")
    if model_id is None:
        repo_id = hf_cache_repo_id(folder)
        model_id, source = (repo_id, "hf-cache") if repo_id else (str(folder.resolve()), "folder")
    config = read_config(folder)
    if not known_causal_lm(config):
        raise StudioError(f"{folder.name}: model type {config.get('model_type')!r} is not a causal language "
                          "model that this version of transformers knows.",
                          hint="Pick a chat/causal LM such as Llama, Qwen, Mistral or Gemma.")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise StudioError(f"{folder.name} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json).")
    tensors = tensor_infos(folder)
    warnings: list[str] = []
    chat = has_chat_template(folder)
    if not chat:
        warnings.append("No chat template: chat data will be rendered with a generic template.")
    if config.get("quantization_config"):
        warnings.append("config.json carries a quantization_config; the studio quantizes on its own.")
    architectures = config.get("architectures") or [config.get("model_type", "?")]
    return BaseModelInfo(
        id=model_id,
        path=folder,
        source=source,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type")),
        parameters=sum(_numel(t.shape) for t in tensors.values()),
        weights_bytes=sum(t.nbytes for t in tensors.values()),
        fingerprint=fingerprint(config, tensors),
        has_chat_template=chat,
        warnings=warnings,
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def studio_id(folder_name: str) -> str:
    """The studio id of `models/<folder_name>`: "org/name" for a hub model's "org--name" folder."""
    return folder_name.replace("--", "/")


def studio_models(data: DataDir) -> list[BaseModelInfo]:
    """Models converted or downloaded into `$LORA_STUDIO_HOME/models` (invalid ones are logged)."""
    found = []
    for folder in sorted(p for p in data.models.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(inspect_base_model(folder, model_id=studio_id(folder.name), source="studio"))
        except StudioError as err:
            log.warning("Skipping %s: %s", folder, err)
    return found


def hf_cache_models(cache_dir: Path | str | None = None) -> list[BaseModelInfo]:
    """Causal LMs already in the user's Hugging Face cache (newest snapshot of each repo)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        # The revision `main` points at, as transformers and peft resolve a repo id; else the newest.
        newest = next((r for r in repo.revisions if "main" in r.refs), None) or \
            max(repo.revisions, key=lambda r: r.last_modified)
        try:
            found.append(inspect_base_model(newest.snapshot_path, model_id=repo.repo_id, source="hf-cache"))
        except StudioError as err:
            log.info("Hugging Face cache entry %s is not usable as a base: %s", repo.repo_id, err)
    return found


def list_base_models(data: DataDir, extra_folders: list[Path] | None = None,
                     include_hf_cache: bool = True) -> list[BaseModelInfo]:
    models = studio_models(data)
    if include_hf_cache:
        models += hf_cache_models()
    for folder in extra_folders or []:
        models.append(_identify(data, Path(folder)).inspect())
    return models


# ---------------------------------------------------------------- the resolver


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache that the hub client, transformers and peft read."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_cache_repo_id(folder: Path) -> str | None:
    """The repo id of a hub cache snapshot folder (`.../models--org--name/snapshots/<revision>`), else None."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return "/".join(repo.split("--")[1:])  # the hub client's own reading of the folder name
    return None


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The snapshot of `repo_id` in the hub cache that peft would load: the one `refs/main` names,
    else the newest; None when the repo is not cached."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    main = repo / "refs" / "main"
    if main.is_file() and _is_model_folder(snapshots / main.read_text().strip()):
        return snapshots / main.read_text().strip()
    found = [p for p in snapshots.iterdir() if _is_model_folder(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file()


def _identify(data: DataDir, folder: Path) -> BaseLocation:
    """How a model folder is recorded: by studio id inside models/, repo id in the hub cache, else its path."""
    folder = folder.expanduser().resolve()
    if data.models.is_dir() and folder.parent == data.models.resolve():
        return BaseLocation(folder, studio_id(folder.name), "studio")
    repo_id = hf_cache_repo_id(folder)
    if repo_id:
        return BaseLocation(folder, repo_id, "hf-cache")
    return BaseLocation(folder, str(folder), "folder")


def _explicit_path(ref: str) -> bool:
    return Path(ref).expanduser().is_absolute() or ref.startswith((".", "~")) or "\\" in ref or ref.count("/") > 1


def locate_base(data: DataDir, ref: str | None, *, hf_cache: bool = True) -> BaseLocation | None:
    """Where the base `ref` names is, or None; reads no weights and imports neither torch nor transformers.

    In order: an explicit path (absolute, ./, ~); the studio's models/ by id; the hub cache by repo id
    (unless `hf_cache` is False); the default's hub id for the converted default; a folder relative
    to the working directory (how older manifests recorded a folder: by its name alone); and for a
    path that no longer exists, the studio's model of the same folder name."""
    ref = (ref or DEFAULT_BASE_ID).strip()
    candidate = Path(ref).expanduser()
    explicit = _explicit_path(ref)
    if explicit and _is_model_folder(candidate):
        return _identify(data, candidate)
    if not explicit:
        studio = data.models / ref.replace("/", "--")
        if _is_model_folder(studio):
            return BaseLocation(studio, studio_id(studio.name), "studio")
        if hf_cache and ref.count("/") == 1:
            snapshot = hf_cache_snapshot(ref)
            if snapshot is not None:
                return BaseLocation(snapshot, ref, "hf-cache")
        if ref == DEFAULT_BASE_HUB_ID and _is_model_folder(data.models / DEFAULT_BASE_ID):
            return BaseLocation(data.models / DEFAULT_BASE_ID, DEFAULT_BASE_ID, "studio")
        if _is_model_folder(candidate):
            return _identify(data, candidate)
    elif candidate.name and _is_model_folder(data.models / candidate.name):
        # recorded on another machine, or moved since: the studio holds a model of that name
        return BaseLocation(data.models / candidate.name, studio_id(candidate.name), "studio")
    return None


def same_fingerprint_note(data: DataDir, fingerprint: str) -> str:
    """A hint's last sentence naming the studio model with this fingerprint, if one has it ("" if none).

    A base with the same shapes is not used in place of the one named (its weights may differ)."""
    match = find_by_fingerprint(data, fingerprint)
    if match is None:
        return ""
    return f" The studio's {studio_id(match.name)!r} has the fingerprint the adapter recorded ({fingerprint})."


def resolve_base_model(data: DataDir, name_or_path: str | None, *, fingerprint: str = "") -> BaseModelInfo:
    """A base model by studio id, Hugging Face cache repo id, or folder path (see `locate_base`).

    When it is not found, the StudioError names every place looked in and how to fix the reference;
    `fingerprint` (what an adapter recorded) lets the hint point at a studio model that matches it."""
    found = locate_base(data, name_or_path)
    if found is None:
        raise base_not_found(data, name_or_path, fingerprint)
    return found.inspect()


def base_not_found(data: DataDir, name_or_path: str | None, fingerprint: str = "") -> StudioError:
    """The error for a base reference nothing answers to: the places looked in, and how to fix it."""
    ref = (name_or_path or DEFAULT_BASE_ID).strip()
    looked = [str(Path(ref).expanduser().absolute())]
    if not _explicit_path(ref):
        looked.append(f"{data.models / ref.replace('/', '--')} (the studio's models)")
        if ref.count("/") == 1:
            looked.append(f"{ref} in the Hugging Face cache ({hf_hub_cache()})")
    hint = ("Give the model folder's full path, its studio id or its Hugging Face repo id (an adapter "
            "records its base as base_model in its studio.json); run `lora-studio models` to list the "
            "bases available.")
    if ref == DEFAULT_BASE_ID:
        hint = "Prepare the default model first: `lora-studio models --prepare-default`."
    return StudioError(f"No base model called {ref!r} was found: looked for {'; '.join(looked)}.",
                       hint=hint + same_fingerprint_note(data, fingerprint))


def base_config(data: DataDir, name_or_path: str | None) -> dict:
    """A base model's config.json; for the default base before its first use, its known shape."""
    try:
        return read_config(resolve_base_model(data, name_or_path).path)
    except StudioError:
        if (name_or_path or DEFAULT_BASE_ID) == DEFAULT_BASE_ID:
            return dict(DEFAULT_BASE_SHAPE)
        raise


def download_base_model(repo_id: str, data: DataDir, progress: OnProgress | None = None) -> BaseModelInfo:
    """Download a hub model (safetensors only) into the data directory, failing fast offline.

    The files land in a hidden `.download-<name>` folder beside the others (listings skip it) and
    move into place only once the whole model is there and validates, so no half model is ever
    listed; a broken download leaves that folder, and the next attempt resumes where it stopped.
    A model already downloaded is returned as it is."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = data.models / repo_id.replace("/", "--")
    if target.is_dir():
        return inspect_base_model(target, model_id=repo_id, source="studio")
    report = Steps(progress, should_stop=None)
    report("download", None, f"Downloading {repo_id} from the Hugging Face Hub…")
    partial = data.models / f".download-{target.name}"
    try:
        huggingface_hub.model_info(repo_id, timeout=10)  # offline or unknown: fail before anything is written
        partial.mkdir(parents=True, exist_ok=True)
        huggingface_hub.snapshot_download(
            repo_id, local_dir=partial, tqdm_class=_files_progress(repo_id, report),
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"],
        )
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError) as err:
        raise StudioError(f"Could not download {repo_id}: the Hugging Face Hub is not reachable "
                          f"({type(err).__name__}).",
                          hint="Check your internet connection, or pick a model already on disk. Downloading "
                               "again resumes where this stopped.") from err
    except Exception as err:  # the hub client raises its HTTP library's own errors offline
        raise StudioError(f"Could not download {repo_id}: the Hugging Face Hub did not answer ({err}).",
                          hint="Check the model id and your internet connection, or pick a model "
                               "already on disk.") from err
    try:
        inspect_base_model(partial, model_id=repo_id, source="studio")  # refuse a repo that is not a model
    except StudioError:
        shutil.rmtree(partial, ignore_errors=True)  # complete, but not a model: nothing to resume
        raise
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # the hub client's download bookkeeping
    try:
        os.replace(partial, target)
    except OSError as err:  # e.g. a virus scanner holding a new file on Windows: the download is kept
        raise StudioError(f"Downloaded {repo_id}, but could not move it into place: {err}.",
                          hint="Try again in a moment: the files are kept and nothing is downloaded twice.") from err
    report("download", 1.0, f"Downloaded {repo_id}.")
    return inspect_base_model(target, model_id=repo_id, source="studio")


def _files_progress(repo_id: str, report: Steps):
    """A tqdm class for snapshot_download: its files bar reports "k of n files" (the hub client also
    makes its byte bars from this class; those stay quiet)."""
    from tqdm.auto import tqdm

    class FilesProgress(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["file"] = io.StringIO()  # messages for the window and the CLI, not a terminal bar
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.unit != "B":  # the files bar; the hub client's per-file byte bars would flood
                fraction = min(1.0, self.n / self.total) if self.total else None
                report("download", fraction, f"Downloading {repo_id}: {int(self.n)} of {self.total} files")
            return shown

    return FilesProgress
