"""The CLI verbs of the foundation: --json gives one object on stdout, errors go to stderr with exit 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.cli.main import run
from studio.cli.registry import VERBS, index
from studio.cli.verb import Output, Verb, VerbGroup
from tests.tiny_model import make_tiny_adapter

# Every verb, named here by hand: a verb module left out of the registry fails this, loudly.
ALL_VERBS = {"list", "show", "import", "export", "rm", "restore", "trash", "rename", "tag",  # library
             "models", "doctor", "install-shortcut",  # base models and this machine
             "scan", "estimate", "train", "runs", "save-checkpoint",  # training
             "blend", "merge", "resize", "export-ollama",  # blending and exporting
             "chat", "compare", "votes", "leaderboard"}  # chat and A/B


def _json(capsys, argv: list[str]) -> dict:
    code = run([*argv[:1], *argv[1:], "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_library_round_trip_through_the_cli(capsys, studio_home, tiny_base_dir: Path, tmp_path: Path):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "plain-peft")

    models = _json(capsys, ["models", "--no-hf-cache"])
    assert [m["id"] for m in models["models"]] == ["tiny-llama"]
    assert _json(capsys, ["list"])["adapters"] == []

    imported = _json(capsys, ["import", str(adapter), "--name", "pirate"])
    adapter_id = imported["id"]
    listed = _json(capsys, ["list"])["adapters"]
    assert [a["id"] for a in listed] == [adapter_id]
    shown = _json(capsys, ["show", "pirate"])
    assert shown["manifest"]["name"] == "pirate"
    assert shown["manifest"]["base_model"] == "tiny-llama"

    exported = _json(capsys, ["export", adapter_id, str(tmp_path / "out.zip"), "--zip", "--no-smoke-test"])
    assert Path(exported["path"]).is_file()

    trash_id = _json(capsys, ["rm", adapter_id])["trash_id"]
    assert _json(capsys, ["list"])["adapters"] == []
    restored = _json(capsys, ["restore", trash_id])
    assert restored["id"] == adapter_id
    assert len(_json(capsys, ["list"])["adapters"]) == 1


def test_errors_go_to_stderr_with_nonzero_exit(capsys, studio_home, tmp_path: Path):
    not_an_adapter = tmp_path / "holiday-photos"
    not_an_adapter.mkdir()
    (not_an_adapter / "beach.jpg").write_bytes(b"\xff\xd8\xff")
    code = run(["import", str(not_an_adapter), "--json"])
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    assert out.err.startswith("error: ") and "holiday-photos" in out.err
    code = run(["show", "no-such-adapter"])
    out = capsys.readouterr()
    assert code == 1 and "no-such-adapter" in out.err


def test_console_script_runs_with_home_from_env(studio_home):
    result = subprocess.run([sys.executable, "-m", "studio", "list", "--json"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"adapters": [], "problems": []}


def test_estimate_scan_and_doctor_on_a_fresh_data_directory(capsys, studio_home):
    """Nothing converted yet: estimate works from the default base's known shape, without loading it."""
    from studio.core.paths import RESOURCES_DIR

    lora = _json(capsys, ["estimate", "--rank", "8", "--seq-len", "512"])
    assert lora["trainable_params"] > 0 and lora["predicted_peak_bytes"] > 0 and lora["verdict"]
    dora = _json(capsys, ["estimate", "--rank", "8", "--seq-len", "512", "--method", "dora"])
    assert dora["trainable_params"] > lora["trainable_params"]  # plus the magnitude vectors
    no_checkpointing = _json(capsys, ["estimate", "--rank", "8", "--seq-len", "512", "--no-gradient-checkpointing"])
    assert no_checkpointing["predicted_peak_bytes"] > lora["predicted_peak_bytes"]
    assert not any(studio_home.models.iterdir()) if studio_home.models.exists() else True  # nothing converted

    code = run(["estimate", "--base", "no-such-model"])
    assert code == 1 and "no-such-model" in capsys.readouterr().err

    scanned = _json(capsys, ["scan", str(RESOURCES_DIR / "sample_dataset"), "--no-tokenizer"])
    assert scanned["totals"]["samples"] > 0 and scanned["totals"]["files_used"] == 3

    doctor = _json(capsys, ["doctor"])
    device = doctor["device"]
    assert device["cpu_count"] > 0 and device["ram_total_bytes"] > 0 and device["torch_version"]
    assert doctor["summary"] and doctor["versions"]["torch"] == device["torch_version"]


def test_help_lists_every_verb_and_each_takes_json(capsys):
    assert set(VERBS) == ALL_VERBS
    with pytest.raises(SystemExit):
        run(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name} " in listed or f"    {name}\n" in listed for name in ALL_VERBS), listed
    for name in sorted(ALL_VERBS):
        with pytest.raises(SystemExit):
            run([name, "--help"])
        assert "--json" in capsys.readouterr().out, name


def test_the_registry_refuses_two_verbs_with_one_name():
    def nothing(args, data) -> Output:
        return Output({}, "")

    first = VerbGroup((Verb("list", "one", nothing),), lambda add: None)
    second = VerbGroup((Verb("list", "another", nothing),), lambda add: None)
    with pytest.raises(ValueError, match="'list'"):
        index((first, second))
    with pytest.raises(TypeError):
        VERBS["list"] = first.verbs[0]  # type: ignore[index]  # built once, read-only


def test_a_relative_home_is_made_absolute(tmp_path, monkeypatch):
    from studio.core.paths import data_dir

    monkeypatch.chdir(tmp_path)
    data = data_dir("sd")
    assert data.root == tmp_path.resolve() / "sd" and data.models.is_absolute()
