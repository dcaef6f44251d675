"""CLI: `export --format gguf` (GGUF LoRA), `merge --format gguf` (merged GGUF model) and `resize`, each with
--json giving one object on stdout and refusals going to stderr with exit code 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.cli.main import run
from tests.tiny_model import make_tiny_adapter


def answers_something(answer) -> str | None:
    """The smoke check used on the tiny random model, which never learned to stop."""
    return None if answer.token_ids else "it generated nothing"


@pytest.fixture
def library(studio_home, tiny_base_dir: Path, tmp_path: Path):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    folder = make_tiny_adapter(tiny_base_dir, tmp_path / "src", rank=4, seed=11,
                               targets=("q_proj", "k_proj", "v_proj"))
    lib = AdapterLibrary(studio_home)
    lib.import_path(folder, name="tiny")
    return lib


def _json(capsys, argv: list[str]) -> dict:
    code = run([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_export_gguf_lora(library, tmp_path, capsys):
    import gguf

    out = _json(capsys, ["export", "tiny", str(tmp_path / "tiny-lora.gguf"), "--format", "gguf"])
    path = Path(out["path"])
    assert out["format"] == "gguf" and out["smoke"] is None and out["details"]["kind"] == "adapter"
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    assert len(reader.tensors) == 2 * 2 * 3

    folder = tmp_path / "exports"
    folder.mkdir()
    assert run(["export", "tiny", str(folder), "--format", "gguf", "--gguf-type", "f16"]) == 0
    text = capsys.readouterr().out
    assert "GGUF LoRA (f16)" in text and (folder / "tiny.gguf").is_file()
    types = {t.tensor_type for t in gguf.GGUFReader(str(folder / "tiny.gguf")).tensors}
    assert types == {gguf.GGMLQuantizationType.F16}

    assert run(["export", "tiny", str(folder), "--format", "gguf"]) == 1  # tiny.gguf is there already
    assert "already exists" in capsys.readouterr().err


def test_merge_to_gguf(library, tmp_path, capsys, monkeypatch):
    import gguf

    from studio.ml.chat import smoke

    dest = tmp_path / "merged.gguf"
    assert run(["merge", "tiny", str(dest), "--format", "gguf"]) == 1  # the real check refuses the tiny model
    assert "smoke test" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "src"]  # nothing half-written

    monkeypatch.setattr(smoke, "ends_at_end_of_turn", answers_something)
    out = _json(capsys, ["merge", "tiny", "--out", str(dest), "--format", "gguf", "--gguf-type", "f32"])
    assert out["kind"] == "model" and out["dtype"] == "f32" and out["metadata"]["smoke"]["passed"]
    reader = gguf.GGUFReader(str(dest))
    assert reader.fields["general.type"].contents() == "model"
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["general.name"].contents() == "tiny"


def test_resize(library, capsys):
    out = _json(capsys, ["resize", "tiny", "--rank", "2", "--name", "tiny r2"])
    assert out["rank"] == 2 and out["previous_rank"] == 4
    assert 0 < out["min_layer_energy"] <= out["retained_energy"] < 1
    assert out["adapter"]["manifest"]["lineage"]["recipe"]["method"] == "resize"
    assert sorted(a["name"] for a in _json(capsys, ["list"])["adapters"]) == ["tiny", "tiny r2"]

    assert run(["resize", "tiny r2", "--rank", "1", "--name", "tiny r1"]) == 0
    text = capsys.readouterr().out
    assert "Resized rank 2 -> 1" in text and "of the energy" in text

    assert run(["resize", "tiny", "--rank", "4", "--name", "same"]) == 1
    assert "between 1 and 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["resize", "tiny", "--name", "no rank"])  # --rank is required


def test_help_names_gguf(capsys):
    from studio.cli.main import build_parser

    parser = build_parser()
    for verb in ("export", "merge"):
        with pytest.raises(SystemExit):
            parser.parse_args([verb, "--help"])
        assert "gguf" in capsys.readouterr().out
