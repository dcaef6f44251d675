"""What leaves the machine names no path of the user's (issue 14): an adapter over a base in a private
folder, trained on a dataset in another, exported in every format by the CLI (peft folder, .zip, Ollama
bundle, GGUF LoRA, merged model, merged GGUF), and every byte of every exported file is searched for
those folders. A base's config.json nested too deeply is a message naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from studio.core.basemodels import inspect_base_model, read_config
from studio.core.errors import StudioError
from studio.core.library.manifest import AdapterManifest, Lineage
from studio.core.library.store import AdapterLibrary
from tests.tiny_model import make_tiny_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
BASE_MARK = "private-user-xyz"
DATA_MARK = "secret-dataset-qrs"
# The tiny random model never learned to stop; what is tested here is what the exports carry, so the
# CLI runs with a smoke check that only asks for an answer (the real check is tested in test_merge_export).
CLI = ("import sys\n"
       "from studio.ml.chat import smoke\n"
       "smoke.ends_at_end_of_turn = lambda answer: None if answer.token_ids else 'it generated nothing'\n"
       "from studio.__main__ import main\n"
       "for argv in {runs!r}:\n"
       "    if main(argv) != 0:\n"
       "        sys.exit(f'failed: {{argv}}')\n")


def exported_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by its relative name, a .zip's members as `name.zip!member`."""
    found: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        found[name] = path.read_bytes()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                found.update({f"{name}!{member}": archive.read(member) for member in archive.namelist()})
    return found


def test_no_export_names_a_folder_of_the_user(tiny_base_dir, studio_home, tmp_path):
    private = tmp_path / BASE_MARK
    base = shutil.copytree(tiny_base_dir, private / "mybase")
    chats = tmp_path / DATA_MARK / "chats"
    # peft writes the base's full path into adapter_config.json and into its README.md model card
    made = make_tiny_adapter(base, private / "made", base_name=str(base), seed=5)
    assert str(base) in (made / "README.md").read_text()
    manifest = AdapterManifest(
        id="leaky", name="leaky", base_model=str(base), base_fingerprint=inspect_base_model(base).fingerprint,
        rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"],
        hyperparameters={"run_id": "run-1", "output_dir": str(studio_home.root / "runs" / "run-1")},
        dataset={"folder": str(chats), "files": 2, "warnings": [f"{chats}/notes.txt: 3 lines were not JSON"]},
        lineage=Lineage(parents=[], recipe={"kind": "imported", "source": str(made)}),
        notes=f"Made from the files in {chats}.")
    AdapterLibrary(studio_home).add_new(made, manifest)

    out = tmp_path / "out"
    out.mkdir()
    runs = [["export", "leaky", "peft"], ["export", "leaky", "leaky.zip", "--format", "zip"],
            ["export", "leaky", "ollama", "--format", "ollama"], ["export-ollama", "leaky", "ollama-2"],
            ["export", "leaky", "lora.gguf", "--format", "gguf"],
            ["merge", "leaky", "merged", "--dtype", "fp32"],
            ["merge", "leaky", "merged.gguf", "--format", "gguf", "--gguf-type", "f32"]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LORA_STUDIO_HOME": str(studio_home.root),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CLI.format(runs=runs)], cwd=out, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    files = exported_bytes(out)
    assert {"peft/studio.json", "peft/README.md", "leaky.zip!leaky/studio.json", "ollama/Modelfile",
            "ollama/adapter/adapter_config.json", "lora.gguf", "merged/config.json",
            "merged/generation_config.json", "merged/tokenizer_config.json", "merged.gguf"} <= set(files)
    for secret in (BASE_MARK, DATA_MARK, str(tmp_path), str(studio_home.root)):
        leaks = [name for name, data in files.items() if secret.encode() in data]
        assert not leaks, f"{secret!r} is in {leaks}"

    # what the exports say instead: the base's folder name, the dataset folder's name
    for config in ("peft/adapter_config.json", "leaky.zip!leaky/adapter_config.json",
                   "ollama/adapter/adapter_config.json"):
        assert json.loads(files[config])["base_model_name_or_path"] == "mybase"
    exported = json.loads(files["peft/studio.json"])
    assert exported["base_model"] == "mybase" and exported["dataset"]["folder"] == "chats"
    assert exported["dataset"]["warnings"] == ["chats/notes.txt: 3 lines were not JSON"]
    assert exported["lineage"]["recipe"]["source"] == "made" and exported["notes"] == "Made from the files in chats."
    assert exported["base_fingerprint"] == manifest.base_fingerprint and exported["id"] == "leaky"
    assert "base_model: mybase" in files["peft/README.md"].decode()
    assert b"FROM ./base\n" in files["ollama/Modelfile"]
    # ...while the library keeps the full paths that find the base and the data from anywhere
    kept = AdapterLibrary(studio_home).get("leaky")
    assert kept.manifest.base_model == str(base) and kept.manifest.dataset["folder"] == str(chats)


def test_a_base_config_nested_too_deeply_is_a_message(tiny_base_dir, tmp_path):
    base = shutil.copytree(tiny_base_dir, tmp_path / "deep")
    (base / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    for read in (read_config, inspect_base_model):
        with pytest.raises(StudioError, match="nested too deeply") as caught:
            read(base)
        assert str(base / "config.json") in caught.value.message


def test_the_export_naming_rule_rewrites_paths_and_nothing_else():
    from studio.core.library.exported import ExportNaming

    naming = ExportNaming("mybase", known=(("/home/Ann Lee/my data", "my data"), ("/home/Ann Lee", "~")))
    assert naming.text("/home/Ann Lee/my data/a.txt: bad line") == "my data/a.txt: bad line"
    assert naming.text("see /home/Ann Lee/notes/x.md") == "see x.md"
    assert ExportNaming("b", known=(("/home/ann", "~"),)).text("/home/annex/y") == "y"  # a longer name: not ~x/y
    assert naming.value({"folder": "C:\\Users\\ann\\chats", "src": "\\\\server\\share\\chats", "n": 3,
                         "list": ["~/models/base", "(from /srv/x/y)"]}) == {
        "folder": "chats", "src": "chats", "n": 3, "list": ["base", "(from y)"]}
    untouched = ["HuggingFaceTB/SmolLM2-135M-Instruct", "see https://huggingface.co/docs/peft", "1/2 and/or 3",
                 ".*\\.q_proj", "<|im_end|></s>", "cuda:0", "a / b", "/"]
    assert [naming.text(t) for t in untouched] == untouched


def test_an_export_keeps_module_patterns_as_peft_wrote_them(tmp_path):
    """Regex target modules and rank patterns are module names, not paths: `(\\d+)` keeps its backslash."""
    from studio.core.library.exported import ExportNaming

    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "/home/ann/models/mybase",
              "target_modules": "model\\.layers\\.(\\d+)\\.self_attn\\.(q_proj|v_proj)",
              "rank_pattern": {"^model\\.layers\\.(\\d+)\\.mlp": 4}, "alpha_pattern": {"(\\w+)_proj": 8},
              "exclude_modules": ["\\(lm_head\\)"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    exported = json.loads(ExportNaming("mybase").adapter_config(tmp_path))
    assert exported["base_model_name_or_path"] == "mybase"
    for field in ("target_modules", "rank_pattern", "alpha_pattern", "exclude_modules"):
        assert exported[field] == config[field], field
