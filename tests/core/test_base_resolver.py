"""The one resolver from a base reference (studio id, Hugging Face cache repo id, folder) to its folder:
what it records so a base resolves from any working directory, the name peft is given, old manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from studio.core.basemodels import (
    DEFAULT_BASE_HUB_ID,
    DEFAULT_BASE_ID,
    inspect_base_model,
    locate_base,
    resolve_base_model,
)
from studio.core.errors import StudioError
from tests.tiny_model import make_hf_cache


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache that the hub client (and so the resolver) reads."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_folder_base_is_recorded_by_its_absolute_path(studio_home, tiny_base_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_base_dir, work / "localbase")
    monkeypatch.chdir(work)
    info = resolve_base_model(studio_home, "localbase")  # a folder given relative to where the user is
    assert (info.id, info.source) == (str((work / "localbase").resolve()), "folder")
    assert info.peft_name == info.id
    monkeypatch.chdir(tmp_path)  # somewhere else: what was recorded still finds it
    again = resolve_base_model(studio_home, info.id)
    assert (again.path, again.id, again.fingerprint) == (info.path, info.id, info.fingerprint)
    with pytest.raises(StudioError, match="localbase"):
        resolve_base_model(studio_home, "localbase")  # the bare name alone does not


def test_a_studio_model_is_known_by_its_studio_id_however_it_is_named(studio_home, tiny_base_dir):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    shutil.copytree(tiny_base_dir, studio_home.models / "someone--tiny-chat")  # downloaded from the hub
    by_folder = resolve_base_model(studio_home, str(studio_home.models / "tiny-llama"))
    assert (by_folder.id, by_folder.source) == ("tiny-llama", "studio")
    assert by_folder.peft_name == str((studio_home.models / "tiny-llama").resolve())  # no hub id: its folder
    downloaded = resolve_base_model(studio_home, str(studio_home.models / "someone--tiny-chat"))
    assert (downloaded.id, downloaded.peft_name) == ("someone/tiny-chat", "someone/tiny-chat")
    assert resolve_base_model(studio_home, "someone/tiny-chat").path == downloaded.path


def test_the_default_is_written_for_peft_by_its_hub_id(studio_home, tiny_base_dir):
    shutil.copytree(tiny_base_dir, studio_home.models / DEFAULT_BASE_ID)  # stands in for the converted default
    info = resolve_base_model(studio_home, DEFAULT_BASE_ID)
    assert (info.id, info.source, info.peft_name) == (DEFAULT_BASE_ID, "studio", DEFAULT_BASE_HUB_ID)
    # An adapter that names the default by its hub id (as exports do) finds the converted default.
    assert resolve_base_model(studio_home, DEFAULT_BASE_HUB_ID).path == info.path


def test_a_hugging_face_cache_model_is_known_by_its_repo_id(studio_home, tiny_base_dir, hub_cache):
    snapshot = make_hf_cache(hub_cache, "someone/tiny-chat", tiny_base_dir)
    for ref in ("someone/tiny-chat", str(snapshot)):
        info = resolve_base_model(studio_home, ref)
        assert (info.id, info.source, info.peft_name, info.path) == (
            "someone/tiny-chat", "hf-cache", "someone/tiny-chat", snapshot)
    assert inspect_base_model(snapshot).id == "someone/tiny-chat"  # not the snapshot's hash


def test_an_old_bare_folder_name_fails_saying_what_was_looked_for(studio_home, tiny_base_dir, tmp_path,
                                                                  monkeypatch, hub_cache):
    monkeypatch.chdir(tmp_path)
    assert locate_base(studio_home, "localbase") is None
    with pytest.raises(StudioError) as caught:
        resolve_base_model(studio_home, "localbase", fingerprint=inspect_base_model(tiny_base_dir).fingerprint)
    err = caught.value
    assert "'localbase'" in str(err) and str(tmp_path / "localbase") in str(err)
    assert str(studio_home.models / "localbase") in str(err)
    assert "full path" in err.hint and "lora-studio models" in err.hint
    # With a studio model of the same fingerprint, the hint points at it (it is not used silently).
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    with pytest.raises(StudioError) as caught:
        resolve_base_model(studio_home, "localbase", fingerprint=inspect_base_model(tiny_base_dir).fingerprint)
    assert "tiny-llama" in caught.value.hint


def test_a_folder_recorded_elsewhere_finds_the_studios_namesake(studio_home, tiny_base_dir, tmp_path):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    info = resolve_base_model(studio_home, str(tmp_path / "gone" / "tiny-llama"))
    assert (info.id, info.source) == ("tiny-llama", "studio")


def test_locating_a_base_stays_free_of_torch_and_transformers(studio_home, tiny_base_dir):
    import subprocess
    import sys

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    code = ("import sys\n"
            "from studio.core.basemodels import locate_base\n"
            "from studio.core.paths import data_dir\n"
            f"found = locate_base(data_dir({str(studio_home.root)!r}), 'tiny-llama')\n"
            "assert found is not None and found.id == 'tiny-llama', found\n"
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
