"""Base models: validation, fingerprints, the data directory and the Hugging Face cache, offline download."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.core.basemodels import (
    download_base_model,
    hf_cache_models,
    inspect_base_model,
    list_base_models,
    resolve_base_model,
)
from studio.core.errors import StudioError
from studio.core.progress import StageProgress
from tests.tiny_model import make_hf_cache


def test_inspect_tiny_base(tiny_base_dir: Path):
    info = inspect_base_model(tiny_base_dir)
    assert info.architecture == "LlamaForCausalLM"
    assert info.has_chat_template and not info.warnings
    assert info.parameters > 0 and len(info.fingerprint) == 16
    assert inspect_base_model(tiny_base_dir).fingerprint == info.fingerprint


def test_fingerprint_changes_with_shapes(tmp_path: Path, tiny_base_dir: Path):
    from tests.tiny_model import make_tiny_base

    other = make_tiny_base(tmp_path / "wider", hidden_size=32)
    assert inspect_base_model(other).fingerprint != inspect_base_model(tiny_base_dir).fingerprint
    same_shapes = make_tiny_base(tmp_path / "reseeded", seed=7)  # other weights, same shapes
    assert inspect_base_model(same_shapes).fingerprint == inspect_base_model(tiny_base_dir).fingerprint


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("breakage, message", [
    ("no_config", "no config.json"),
    ("bad_config", "not valid JSON"),
    ("unknown_arch", "not a causal language model"),
    ("no_tokenizer", "no tokenizer"),
    ("bin_only", "pickled .bin"),
    ("truncated", "truncated"),
])
def test_invalid_base_models_are_refused(tmp_path: Path, tiny_base_dir: Path, breakage: str, message: str):
    folder = _copy(tiny_base_dir, tmp_path / "model")
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_config":
        (folder / "config.json").write_text("{ not json")
    elif breakage == "unknown_arch":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "vit"
        (folder / "config.json").write_text(json.dumps(config))
    elif breakage == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif breakage == "bin_only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif breakage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(StudioError, match=message):
        inspect_base_model(folder)


def test_missing_chat_template_is_a_warning(tmp_path: Path, tiny_base_dir: Path):
    folder = _copy(tiny_base_dir, tmp_path / "model")
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    info = inspect_base_model(folder)
    assert not info.has_chat_template
    assert any("chat template" in w for w in info.warnings)


def test_lists_data_dir_hf_cache_and_folder(tmp_path: Path, tiny_base_dir: Path, studio_home, monkeypatch):
    _copy(tiny_base_dir, studio_home.models / "tiny-llama")
    (studio_home.models / "broken").mkdir()  # logged and skipped, not fatal
    cache = tmp_path / "hf-cache"
    make_hf_cache(cache, "someone/tiny-chat", tiny_base_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cached = hf_cache_models(cache)
    assert [m.id for m in cached] == ["someone/tiny-chat"]
    local = _copy(tiny_base_dir, tmp_path / "my-model")
    models = list_base_models(studio_home, extra_folders=[local], include_hf_cache=False)
    assert [(m.id, m.source) for m in models] == [("tiny-llama", "studio"), (str(local), "folder")]
    assert resolve_base_model(studio_home, "tiny-llama").source == "studio"
    assert resolve_base_model(studio_home, str(local)).id == str(local)  # a folder is known by its full path
    with pytest.raises(StudioError, match="lora-studio models"):
        resolve_base_model(studio_home, "nobody/nothing")


def test_download_offline_fails_fast_and_clearly(studio_home):
    started = time.monotonic()
    with pytest.raises(StudioError, match="Could not download .*internet connection"):
        download_base_model("lora-studio-tests/no-such-model", studio_home)
    assert time.monotonic() - started < 30
    assert not any(studio_home.models.iterdir())


def test_download_with_no_network_reachable_fails_fast(studio_home):
    """Without HF_HUB_OFFLINE the client really tries; on our machines no hub answers."""
    code = ("from studio.core.basemodels import download_base_model\n"
            "from studio.core.paths import data_dir\n"
            "from studio.core.errors import StudioError\n"
            "try:\n"
            f"    download_base_model('lora-studio-tests/no-such-model', data_dir({str(studio_home.root)!r}))\n"
            "except StudioError as err:\n"
            "    print('refused:', err)\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "refused: Could not download lora-studio-tests/no-such-model" in result.stdout, result.stderr
    assert time.monotonic() - started < 60
    assert not any(studio_home.models.iterdir())


class FakeHub:
    """The two huggingface_hub calls a download makes, serving a model folder from disk (no hub is
    reachable from our machines); `fail_after` files it raises as a dropped connection would."""

    def __init__(self, source: Path, fail_after: int | None = None) -> None:
        self.source, self.fail_after = source, fail_after

    def model_info(self, repo_id, timeout=None):
        return {"id": repo_id}

    def snapshot_download(self, repo_id, *, local_dir, tqdm_class, allow_patterns, **_):
        files = sorted(p for p in self.source.iterdir() if p.is_file())
        bar = tqdm_class(total=len(files))
        (Path(local_dir) / ".cache").mkdir(exist_ok=True)
        for index, file in enumerate(files):
            if self.fail_after is not None and index == self.fail_after:
                raise OSError("Connection reset by peer")
            byte_bar = tqdm_class(total=file.stat().st_size, unit="B")  # the client's per-file bar, same class
            shutil.copy(file, Path(local_dir) / file.name)
            byte_bar.update(file.stat().st_size)
            byte_bar.close()
            bar.update(1)
        bar.close()
        return str(local_dir)


def test_a_download_lands_whole_with_progress_or_not_at_all(studio_home, tiny_base_dir, monkeypatch):
    import huggingface_hub

    dropped = FakeHub(tiny_base_dir, fail_after=2)
    monkeypatch.setattr(huggingface_hub, "model_info", dropped.model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", dropped.snapshot_download)
    with pytest.raises(StudioError, match="not reachable.*resumes"):
        download_base_model("someone/tiny-chat", studio_home)
    assert list_base_models(studio_home, include_hf_cache=False) == []  # no half model listed
    assert [p.name for p in studio_home.models.iterdir()] == [".download-someone--tiny-chat"]  # kept to resume

    whole = FakeHub(tiny_base_dir)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", whole.snapshot_download)
    events: list[StageProgress] = []
    info = download_base_model("someone/tiny-chat", studio_home, progress=events.append)
    files = len([p for p in tiny_base_dir.iterdir() if p.is_file()])
    assert [e.message for e in events] == [
        "Downloading someone/tiny-chat from the Hugging Face Hub…",
        *(f"Downloading someone/tiny-chat: {k} of {files} files" for k in range(1, files + 1)),
        "Downloaded someone/tiny-chat."]  # the byte bars stay quiet
    assert [e.fraction for e in events] == [None, *(k / files for k in range(1, files + 1)), 1.0]
    assert {e.stage for e in events} == {"download"}
    assert info.path == studio_home.models / "someone--tiny-chat" and info.fingerprint
    assert [p.name for p in studio_home.models.iterdir()] == ["someone--tiny-chat"]
    assert not (info.path / ".cache").exists()
    assert resolve_base_model(studio_home, "someone/tiny-chat").path == info.path
    assert download_base_model("someone/tiny-chat", studio_home).path == info.path  # already there
