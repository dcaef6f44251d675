"""Base models: find them (data directory, Hugging Face cache, a folder), validate and fingerprint.

A base model is a Hugging Face-layout folder: config.json, tokenizer files, safetensors weights.
The fingerprint hashes what decides whether an adapter fits: the shape-defining config keys and
every tensor's name and shape. Knows nothing about loading weights (that is studio.ml).
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
from studio.core.paths import DataDir
from studio.core.progress import OnProgress, Steps
from studio.core.tensorfiles import TensorInfo, read_header

log = logging.getLogger(__name__)

DEFAULT_BASE_ID = "SmolLM2-135M-Instruct"
SHAPE_KEYS = (
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# The default base's shape (SHAPE_KEYS), so estimates work before it is converted on first use;
# a test checks it against the converted model.
DEFAULT_BASE_SHAPE = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "tie_word_embeddings": True,
}


@dataclass
class BaseModelInfo:
    id: str
    path: Path
    source: str  # studio | hf-cache | folder
    architecture: str
    model_type: str
    parameters: int
    weights_bytes: int
    fingerprint: str
    has_chat_template: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise StudioError(f"{folder} has no config.json, so it is not a Hugging Face model folder.",
                          hint="Point at the folder that holds config.json and the .safetensors files.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{path} is not valid JSON: {err}.") from err
    if not isinstance(config, dict):
        raise StudioError(f"{path} should hold a JSON object.")
    return config


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as err:
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
            return bool(json.loads(tok_config.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def inspect_base_model(folder: Path | str, *, model_id: str | None = None, source: str = "folder"
                       ) -> BaseModelInfo:
    """Validate a model folder and describe it. Raises StudioError saying what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"{folder} is not a folder.")
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
        id=model_id or folder.name,
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


def studio_models(data: DataDir) -> list[BaseModelInfo]:
    """Models converted or downloaded into `$LORA_STUDIO_HOME/models` (invalid ones are logged)."""
    found = []
    for folder in sorted(p for p in data.models.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(inspect_base_model(folder, model_id=folder.name, source="studio"))
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
        newest = max(repo.revisions, key=lambda r: r.last_modified)
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
        models.append(inspect_base_model(folder))
    return models


def resolve_base_model(data: DataDir, name_or_path: str | None) -> BaseModelInfo:
    """A base model by studio id, Hugging Face cache repo id, or folder path."""
    if not name_or_path:
        name_or_path = DEFAULT_BASE_ID
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir() and (candidate / "config.json").exists():
        return inspect_base_model(candidate)
    studio_folder = data.models / name_or_path.replace("/", "--")
    if studio_folder.is_dir():
        return inspect_base_model(studio_folder, model_id=name_or_path, source="studio")
    for info in hf_cache_models():
        if info.id == name_or_path:
            return info
    raise StudioError(f"No base model called {name_or_path!r} was found.",
                      hint="Run `lora-studio models` to list those available, or give a model folder.")


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
