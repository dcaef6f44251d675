"""The adapter library on real peft adapters: import, infer, list, export, edit, trash, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.library.manifest import AdapterManifest
from studio.core.library.store import AdapterLibrary


@pytest.fixture(scope="session")
def peft_adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain peft LoRA adapter (no studio.json) on the tiny base, claiming base "tiny-llama"."""
    from tests.tiny_model import make_tiny_adapter

    folder = make_tiny_adapter(tiny_base_dir, tmp_path_factory.mktemp("peft") / "pirate-voice")
    assert not (folder / "studio.json").exists()
    return folder


@pytest.fixture(scope="session")
def misfit_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter made on a hidden-32 tiny base that claims the hidden-64 "tiny-llama"."""
    from tests.tiny_model import make_tiny_adapter, make_tiny_base

    root = tmp_path_factory.mktemp("misfit")
    small = make_tiny_base(root / "tiny-32", hidden_size=32)
    return make_tiny_adapter(small, root / "misfit", base_name="tiny-llama")


@pytest.fixture
def lib(studio_home, tiny_base_dir: Path) -> AdapterLibrary:
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    return AdapterLibrary(studio_home)


def snapshot(lib: AdapterLibrary) -> tuple:
    """Everything a refusal must leave as it was: the listing and every file under adapters/ and trash/."""
    files = sorted(str(p.relative_to(lib.data.root)) for d in (lib.data.adapters, lib.data.trash)
                   for p in d.rglob("*"))
    return [e.id for e in lib.list()], files


def copy_adapter(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as archive:
        for item in sorted(folder.iterdir()):
            archive.write(item, f"{prefix}{item.name}")
    return dest


def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


# ---------------------------------------------------------------- happy paths


def test_import_plain_peft_folder_infers_manifest(lib: AdapterLibrary, peft_adapter: Path):
    from studio.core.basemodels import inspect_base_model

    entry = lib.import_path(peft_adapter)
    m = entry.manifest
    assert (m.name, m.source, m.base_model, m.method, m.rank, m.alpha) == \
        ("pirate-voice", "imported", "tiny-llama", "lora", 4, 8.0)
    assert m.target_modules == ["q_proj", "v_proj"]
    assert m.base_fingerprint == inspect_base_model(lib.data.models / "tiny-llama").fingerprint
    assert entry.id.startswith("pirate-voice-") and entry.path.parent == lib.data.adapters
    on_disk = json.loads((entry.path / "studio.json").read_text())
    assert on_disk["id"] == entry.id and on_disk["source"] == "imported"
    assert (entry.path / "adapter_config.json").read_bytes() == (peft_adapter / "adapter_config.json").read_bytes()
    assert not (peft_adapter / "studio.json").exists(), "the source folder must not be touched"
    assert entry.warnings == [] and entry.size_bytes > 0
    assert [e.id for e in lib.list()] == [entry.id] and lib.problems() == []
    assert lib.get("pirate-voice").id == entry.id == lib.get(entry.id).id
    json.dumps(entry.to_dict())  # what the CLI prints with --json


@pytest.mark.parametrize("prefix", ["", "my-adapter/"])
def test_import_zip_at_root_or_in_one_subfolder(lib: AdapterLibrary, peft_adapter: Path, tmp_path: Path,
                                                prefix: str):
    archive = zip_folder(peft_adapter, tmp_path / "download.zip", prefix)
    entry = lib.import_path(archive)
    assert entry.manifest.name == (prefix.rstrip("/") or "download")
    assert entry.manifest.rank == 4 and entry.warnings == []
    assert sorted(p.name for p in lib.data.adapters.iterdir()) == [entry.id]  # no scratch left behind
    second = lib.import_path(archive, name="Second copy")
    assert second.manifest.name == "Second copy" and len(lib.list()) == 2


def test_adapter_on_a_tied_lm_head_is_accepted(lib: AdapterLibrary, tiny_base_dir: Path, tmp_path: Path):
    """The tiny base ties lm_head to the embedding, so its safetensors have no lm_head weight; an adapter
    that targets lm_head still fits (checked against the embedding's shape)."""
    from tests.tiny_model import make_tiny_adapter

    folder = make_tiny_adapter(tiny_base_dir, tmp_path / "head", targets=("q_proj", "lm_head"))
    entry = lib.import_path(folder, name="with-head")
    assert "lm_head" in entry.manifest.target_modules and not entry.warnings


def test_folder_copied_in_by_hand_is_listed_with_inferred_manifest(lib: AdapterLibrary, peft_adapter: Path):
    copy_adapter(peft_adapter, lib.data.adapters / "by-hand")
    (lib.data.adapters / "not-an-adapter").mkdir()
    (lib.data.adapters / "not-an-adapter" / "notes.txt").write_text("hello")
    [entry] = lib.list()
    assert entry.id == "by-hand" and entry.manifest.source == "inferred" and entry.manifest.name == "by-hand"
    assert entry.manifest.base_model == "tiny-llama" and entry.manifest.rank == 4
    assert not (entry.path / "studio.json").exists(), "listing must not write into the folder"
    [(path, message)] = lib.problems()
    assert path.name == "not-an-adapter" and "no adapter_config.json" in message


def test_base_not_found_is_accepted_with_a_warning(lib: AdapterLibrary, peft_adapter: Path, tmp_path: Path):
    folder = copy_adapter(peft_adapter, tmp_path / "orphan")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nowhere/some-other-base"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    entry = lib.import_path(folder)
    assert any("/nowhere/some-other-base" in w and "not found" in w for w in entry.warnings)
    assert entry.manifest.base_fingerprint == ""


def test_add_new_lands_atomically_with_the_given_manifest(lib: AdapterLibrary, peft_adapter: Path):
    manifest = AdapterManifest(id="", name="trained one", base_model="tiny-llama", method="lora",
                               hyperparameters={"lr": 2e-4}, metrics={"eval_loss": 1.5})
    entry = lib.add_new(peft_adapter, manifest)
    assert entry.manifest.source == "trained" and entry.manifest.metrics == {"eval_loss": 1.5}
    assert entry.manifest.rank == 4 and entry.manifest.base_fingerprint
    assert manifest.id == "", "the caller's manifest is not mutated"
    again = lib.add_new(peft_adapter, manifest)
    assert again.manifest.name == "trained one (2)"
    with pytest.raises(StudioError, match="already exists"):
        lib.add_new(peft_adapter, AdapterManifest(id=entry.id, name="x"))


def test_export_folder_and_zip_load_in_plain_peft(lib: AdapterLibrary, peft_adapter: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    entry = lib.import_path(peft_adapter, name="Pirate Voice")
    folder = lib.export(entry.id, tmp_path / "out")
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                  "studio.json"}
    archive = lib.export("Pirate Voice", tmp_path, as_zip=True)
    assert archive == tmp_path / "pirate-voice.zip"
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "unzipped")
    with pytest.raises(StudioError, match="already exists"):
        lib.export(entry.id, archive, as_zip=True)
    assert lib.export(entry.id, folder) == folder / "pirate-voice"  # an existing folder: export inside it

    original = lora_tensors(peft_adapter / "adapter_model.safetensors")
    for exported in (folder, tmp_path / "unzipped" / "pirate-voice"):
        base = AutoModelForCausalLM.from_pretrained(lib.data.models / "tiny-llama")
        model = PeftModel.from_pretrained(base, exported)
        state = model.state_dict()
        name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
        loaded = state[name.replace("lora_B.weight", "lora_B.default.weight")]
        assert loaded.abs().sum() > 0 and bool((loaded == original[name]).all())


def test_rename_tag_and_notes_persist(lib: AdapterLibrary, peft_adapter: Path):
    entry = lib.import_path(peft_adapter)
    other = lib.import_path(peft_adapter, name="other")
    lib.rename(entry.id, "Sea shanties")
    lib.tag("Sea shanties", add=["fun", "pirate", "fun"])
    lib.tag(entry.id, remove=["fun"])
    lib.set_notes(entry.id, "Arr, better at verse than prose.")
    fresh = AdapterLibrary(lib.data).get(entry.id)
    assert (fresh.manifest.name, fresh.manifest.tags, fresh.manifest.notes) == \
        ("Sea shanties", ["pirate"], "Arr, better at verse than prose.")
    assert json.loads((entry.path / "studio.json").read_text())["tags"] == ["pirate"]
    with pytest.raises(StudioError, match="already called 'other'"):
        lib.rename(entry.id, "other")
    assert lib.get("other").id == other.id


def test_get_missing_and_ambiguous_names(lib: AdapterLibrary, peft_adapter: Path):
    entry = lib.import_path(peft_adapter)
    copy_adapter(entry.path, lib.data.adapters / "hand-copy")  # same studio.json name, different id
    with pytest.raises(StudioError, match="Several adapters are called 'pirate-voice'") as err:
        lib.get("pirate-voice")
    assert entry.id in str(err.value) and "hand-copy" in str(err.value)
    with pytest.raises(StudioError, match="No adapter called 'nope'"):
        lib.get("nope")


def test_delete_trash_restore_round_trip(lib: AdapterLibrary, peft_adapter: Path):
    entry = lib.import_path(peft_adapter)
    trash_id = lib.delete(entry.id)
    assert lib.list() == [] and not entry.path.exists()
    [item] = lib.trash()
    assert (item.trash_id, item.original_id, item.name) == (trash_id, entry.id, "pirate-voice")
    record = json.loads((lib.data.trash / trash_id / "trash.json").read_text())
    assert record["original_id"] == entry.id and record["deleted"]

    restored = lib.restore(trash_id)
    assert restored.id == entry.id and restored.manifest == entry.manifest and lib.trash() == []

    trash_id = lib.delete("pirate-voice")
    copy_adapter(peft_adapter, lib.data.adapters / entry.id)  # something took the id meanwhile
    before = snapshot(lib)
    with pytest.raises(StudioError, match=f"same id \\({entry.id}\\)"):
        lib.restore(trash_id)
    assert snapshot(lib) == before
    assert lib.empty_trash(older_than_days=1) == 0 and lib.empty_trash() == 1 and lib.trash() == []


# ---------------------------------------------------------------- refusals


def _random_folder(tmp: Path, adapter: Path, misfit: Path) -> Path:
    folder = tmp / "holiday-photos"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(os.urandom(64))
    return folder


def _bad_json(tmp: Path, adapter: Path, misfit: Path) -> Path:
    folder = copy_adapter(adapter, tmp / "bad-json")
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4,')
    return folder


def _garbage_weights(tmp: Path, adapter: Path, misfit: Path) -> Path:
    folder = copy_adapter(adapter, tmp / "garbage")
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return folder


def _truncated_weights(tmp: Path, adapter: Path, misfit: Path) -> Path:
    folder = copy_adapter(adapter, tmp / "truncated")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return folder


def _pickled_weights(tmp: Path, adapter: Path, misfit: Path) -> Path:
    import torch

    folder = copy_adapter(adapter, tmp / "pickled")
    torch.save(lora_tensors(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    return folder


def _zip_dotdot(tmp: Path, adapter: Path, misfit: Path) -> Path:
    archive = zip_folder(adapter, tmp / "dotdot.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("../evil", "pwned")
    return archive


def _zip_absolute(tmp: Path, adapter: Path, misfit: Path) -> Path:
    archive = zip_folder(adapter, tmp / "absolute.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(zipfile.ZipInfo("/tmp/evil-absolute"), "pwned")
    return archive


def _zip_symlink(tmp: Path, adapter: Path, misfit: Path) -> Path:
    archive = zip_folder(adapter, tmp / "symlink.zip")
    link = zipfile.ZipInfo("shortcut.txt")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(link, "/etc/passwd")
    return archive


def _zip_bomb(tmp: Path, adapter: Path, misfit: Path) -> Path:
    archive = zip_folder(adapter, tmp / "bomb.zip")
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("padding.txt", b"\0" * (8 * 1024 * 1024))
    return archive


def _misfit(tmp: Path, adapter: Path, misfit: Path) -> Path:
    return misfit


REFUSALS: dict[str, tuple[Callable[[Path, Path, Path], Path], list[str]]] = {
    "not an adapter": (_random_folder, ["'holiday-photos' is not a peft adapter", "no adapter_config.json"]),
    "bad json": (_bad_json, ["adapter_config.json is not valid JSON"]),
    "garbage safetensors": (_garbage_weights, ["adapter_model.safetensors is corrupt or truncated"]),
    "truncated safetensors": (_truncated_weights, ["adapter_model.safetensors is truncated"]),
    "pickled bin": (_pickled_weights, ["pickled weights (adapter_model.bin)", "does not load pickles",
                                       "weights_only=True", "save_file"]),
    "zip ../evil": (_zip_dotdot, ["'../evil'", "outside"]),
    "zip absolute path": (_zip_absolute, ["'/tmp/evil-absolute'", "absolute path"]),
    "zip symlink": (_zip_symlink, ["'shortcut.txt' is a symbolic link"]),
    "zip bomb": (_zip_bomb, ["'padding.txt' expands", "zip bomb"]),
    "shapes misfit base": (_misfit, [
        "Adapter 'misfit' does not fit base model 'tiny-llama'",
        "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' has shape [4, 32]",
        "'model.layers.0.self_attn.q_proj.weight' has shape [64, 64]", "should be [4, 64]"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_leaves_library_untouched(case: str, lib: AdapterLibrary, peft_adapter: Path,
                                          misfit_adapter: Path, tmp_path: Path):
    existing = lib.import_path(peft_adapter, name="already here")
    before = snapshot(lib)
    build, expected = REFUSALS[case]
    src = build(tmp_path, peft_adapter, misfit_adapter)
    with pytest.raises(StudioError) as err:
        lib.import_path(src)
    for fragment in expected:
        assert fragment in str(err.value)
    assert snapshot(lib) == before
    assert sorted(p.name for p in lib.data.adapters.iterdir()) == [existing.id]
    assert not (tmp_path.parent / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def test_broken_folders_are_problems_not_crashes(lib: AdapterLibrary, peft_adapter: Path, misfit_adapter: Path,
                                                 tmp_path: Path):
    good = lib.import_path(peft_adapter)
    copy_adapter(misfit_adapter, lib.data.adapters / "misfit")
    _truncated_weights(tmp_path, peft_adapter, misfit_adapter).rename(lib.data.adapters / "truncated")
    assert [e.id for e in lib.list()] == [good.id]
    problems = dict((p.name, msg) for p, msg in lib.problems())
    assert "does not fit base model 'tiny-llama'" in problems["misfit"]
    assert "truncated" in problems["truncated"]
    trash_id = lib.delete("misfit")  # a broken folder can still be thrown away by id
    assert lib.trash()[0].trash_id == trash_id


def test_library_imports_neither_torch_nor_qt():
    code = ("import sys, studio.core.library.store\n"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'PySide6') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_an_import_records_its_base_by_what_finds_it_from_anywhere(lib: AdapterLibrary, peft_adapter: Path,
                                                                   tiny_base_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """An adapter naming its base by a folder relative to where the user is gets that folder's full path."""
    shutil.copytree(tiny_base_dir, tmp_path / "work" / "localbase")
    claims_relative = copy_adapter(peft_adapter, tmp_path / "relative")
    config = json.loads((claims_relative / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "localbase"
    (claims_relative / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path / "work")
    entry = lib.import_path(claims_relative)
    assert entry.manifest.base_model == str(tmp_path / "work" / "localbase")
    monkeypatch.chdir(tmp_path)
    assert lib.get(entry.id).warnings == []  # its base is still found, from elsewhere


def test_an_adapter_restored_while_its_name_is_taken_comes_back_under_a_free_one(lib: AdapterLibrary,
                                                                                  peft_adapter: Path):
    first = lib.import_path(peft_adapter)
    trash_id = lib.delete(first.id)
    lib.import_path(peft_adapter)  # a new "pirate-voice" while the first waits in the trash
    restored = lib.restore(trash_id)
    assert restored.id == first.id and restored.manifest.name == "pirate-voice (2)"
    assert sorted(e.manifest.name for e in lib.list()) == ["pirate-voice", "pirate-voice (2)"]
    assert lib.get("pirate-voice (2)").id == first.id
