"""A base recorded so that it resolves anywhere: an adapter trained on a base given as a folder merges
and exports from another working directory; exports name their base (by its hub id, else its folder's
name: never a path) so that plain peft's AutoPeftModelForCausalLM finds it; an old manifest that recorded a bare folder name fails saying what
was looked for; a Hugging Face cache base is shown by its repo id in chat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from studio.core.basemodels import DEFAULT_BASE_HUB_ID, DEFAULT_BASE_ID, inspect_base_model
from studio.core.library.manifest import AdapterManifest
from studio.core.library.store import AdapterLibrary
from tests.tiny_model import make_hf_cache, make_tiny_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
# The smoke check these exports run: the tiny random models may answer nothing at all (the real check
# is tested in test_merge_export); what is tested here is which base gets loaded.
LENIENT = "lambda answer: None"


def run_python(code: str, home, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter working in `cwd`, on this tree and this data directory."""
    cwd.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "LORA_STUDIO_HOME": str(home.root),
                   "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def exported_base_names(home, adapter_id: str, cwd: Path) -> dict[str, str]:
    """Export the adapter as a peft folder, a zip and an Ollama bundle from `cwd` (each smoke-tested on
    its base); the base_model_name_or_path each one's adapter_config.json carries."""
    code = (
        "from studio.core.library.store import AdapterLibrary\n"
        "from studio.core.paths import data_dir\n"
        "from studio.ml.export.library_export import export_adapter\n"
        "lib = AdapterLibrary(data_dir())\n"
        f"for fmt, dest in (('peft', 'peft-out'), ('zip', 'out.zip'), ('ollama', 'bundle')):\n"
        f"    export_adapter(lib, {adapter_id!r}, dest, fmt, smoke_check={LENIENT}, from_ref='x:1b')\n")
    result = run_python(code, home, cwd)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(cwd / "out.zip") as archive:
        zipped = next(n for n in archive.namelist() if n.endswith("adapter_config.json"))
        in_zip = json.loads(archive.read(zipped))
    return {"peft": json.loads((cwd / "peft-out" / "adapter_config.json").read_text())["base_model_name_or_path"],
            "zip": in_zip["base_model_name_or_path"],
            "ollama": json.loads((cwd / "bundle" / "adapter" / "adapter_config.json").read_text())[
                "base_model_name_or_path"]}


def test_an_adapter_trained_on_a_folder_merges_and_exports_from_anywhere(tiny_base_dir, studio_home, tmp_path,
                                                                        monkeypatch):
    from studio.core.train.config import TrainConfig
    from studio.ml.train.run import run_training

    work = tmp_path / "work"
    base = shutil.copytree(tiny_base_dir, work / "localbase")
    chats = work / "chats"
    chats.mkdir()
    (chats / "chats.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {n} plus {n}?"},
        {"role": "assistant", "content": f"The answer is {2 * n}."}]}) + "\n" for n in range(12)))
    monkeypatch.chdir(work)  # the user names the base folder relative to where they are
    config = TrainConfig(data_folder="chats", base="localbase", adapter_name="local", quant="none", rank=4,
                         alpha=8.0, max_steps=2, micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=2,
                         checkpoint_every=2, device="cpu", targets=["q_proj", "v_proj"])
    result = run_training(config, studio_home)
    assert result.status == "finished", result.message
    entry = AdapterLibrary(studio_home).get(result.adapter_id)
    assert entry.manifest.base_model == str(base)  # recorded so that it resolves from anywhere
    assert entry.manifest.base_fingerprint == inspect_base_model(base).fingerprint

    elsewhere = tmp_path / "elsewhere"
    code = ("from studio.core.library.store import AdapterLibrary\n"
            "from studio.core.paths import data_dir\n"
            "from studio.ml.export.library_export import merge_adapter\n"
            f"merge_adapter(AdapterLibrary(data_dir()), {entry.id!r}, 'merged', 'fp32', smoke_check={LENIENT})\n")
    merged = run_python(code, studio_home, elsewhere)
    assert merged.returncode == 0, merged.stderr
    assert (elsewhere / "merged" / "config.json").is_file()
    # An export leaves the machine: it names the base by its folder's name, never the user's path.
    assert exported_base_names(studio_home, entry.id, elsewhere) == {fmt: "localbase" for fmt in ("peft", "zip", "ollama")}

    # Plain peft loads the export by what it names, beside the base's folder.
    code = ("from peft import AutoPeftModelForCausalLM\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({str(elsewhere / 'peft-out')!r})\n"
            "print(model.base_model.model.config.hidden_size, sorted(model.peft_config))\n")
    loaded = run_python(code, studio_home, work)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["64", "['default']"]


def test_an_export_of_the_default_names_its_hub_id_which_peft_resolves(tiny_base_dir, studio_home, tmp_path):
    """The tiny model stands in for the converted default (converting the real one is an e2e test), and a
    hub cache built in a temporary HF_HOME stands in for the hub, which no test can reach."""
    shutil.copytree(tiny_base_dir, studio_home.models / DEFAULT_BASE_ID)
    (studio_home.models / DEFAULT_BASE_ID / ".converted").write_text("ok\n")
    made = make_tiny_adapter(tiny_base_dir, tmp_path / "made", base_name=DEFAULT_BASE_ID, seed=3)
    fingerprint = inspect_base_model(tiny_base_dir).fingerprint
    entry = AdapterLibrary(studio_home).add_new(made, AdapterManifest(
        id="", name="on default", base_model=DEFAULT_BASE_ID, base_fingerprint=fingerprint))
    out = tmp_path / "out"
    names = exported_base_names(studio_home, entry.id, out)
    assert names == {fmt: DEFAULT_BASE_HUB_ID for fmt in ("peft", "zip", "ollama")}

    hf_home = tmp_path / "hf-home"
    make_hf_cache(hf_home / "hub", DEFAULT_BASE_HUB_ID, tiny_base_dir)
    code = ("import torch\n"
            "from peft import AutoPeftModelForCausalLM, PeftModel\n"
            "from transformers import AutoModelForCausalLM\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({str(out / 'peft-out')!r}).eval()\n"
            f"same = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_base_dir)!r}),\n"
            f"                                 {str(out / 'peft-out')!r}).eval()\n"
            "ids = torch.tensor([[1, 20, 33, 47, 5]])\n"
            "with torch.no_grad():\n"
            "    print(torch.allclose(model(input_ids=ids).logits, same(input_ids=ids).logits))\n")
    loaded = run_python(code, studio_home, tmp_path / "elsewhere", HF_HOME=str(hf_home))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "True"
    without_cache = run_python(code, studio_home, tmp_path / "elsewhere", HF_HOME=str(tmp_path / "empty"))
    assert without_cache.returncode != 0 and "LocalEntryNotFoundError" in without_cache.stderr  # the cache is what it read


def test_an_old_manifest_by_bare_folder_name(tiny_base_dir, studio_home, tmp_path):
    made = make_tiny_adapter(tiny_base_dir, tmp_path / "made", base_name="localbase")
    library = AdapterLibrary(studio_home)
    fingerprint = inspect_base_model(tiny_base_dir).fingerprint
    old = library.add_new(made, AdapterManifest(id="old", name="old", base_model="localbase",
                                                base_fingerprint=fingerprint))
    failed = run_python("import sys\nfrom studio.cli.main import run\n"
                        "sys.exit(run(['merge', 'old', 'merged']))\n", studio_home, tmp_path / "elsewhere")
    assert failed.returncode == 1 and not (tmp_path / "elsewhere" / "merged").exists()
    assert "No base model called 'localbase'" in failed.stderr
    assert str(tmp_path / "elsewhere" / "localbase") in failed.stderr  # what was looked for...
    assert str(old.path / "studio.json") in failed.stderr  # ...and where to fix it

    # Older training wrote the folder's full path into adapter_config.json: that still finds it.
    config = json.loads((old.path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_base_dir)
    (old.path / "adapter_config.json").write_text(json.dumps(config))
    names = exported_base_names(studio_home, "old", tmp_path / "other")
    assert names == {fmt: tiny_base_dir.name for fmt in ("peft", "zip", "ollama")}  # its name, not its path


def test_a_hugging_face_cache_base_is_shown_by_its_repo_id_in_chat(tiny_base_dir, studio_home, tmp_path):
    cache = tmp_path / "hf-cache"
    make_hf_cache(cache, "someone/tiny-chat", tiny_base_dir)
    made = make_tiny_adapter(tiny_base_dir, tmp_path / "made", base_name="someone/tiny-chat")
    AdapterLibrary(studio_home).add_new(made, AdapterManifest(
        id="cached", name="cached", base_model="someone/tiny-chat",
        base_fingerprint=inspect_base_model(tiny_base_dir).fingerprint))
    code = ("import json, sys\n"
            "from studio.cli.main import run\n"
            "flags = ['--prompt', 'Hi', '--json', '--max-new-tokens', '2', '--quant', 'none']\n"
            "for extra in (['--base', 'someone/tiny-chat'], ['--adapter', 'cached']):\n"
            "    assert run(['chat', *extra, *flags]) == 0\n")
    chatted = run_python(code, studio_home, tmp_path / "elsewhere", HF_HUB_CACHE=str(cache))
    assert chatted.returncode == 0, chatted.stderr
    bases = [json.loads(line)["base"] for line in chatted.stdout.splitlines() if line.startswith("{")]
    assert [b["id"] for b in bases] == ["someone/tiny-chat"] * 2  # not the snapshot's hash
    assert all(Path(b["path"]).parent.name == "snapshots" for b in bases)
