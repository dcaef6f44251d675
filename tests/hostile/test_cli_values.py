"""CLI values attacked as a hostile or unlucky user would (issue 14 §3): NaN and infinities, zero and
absurd lengths, a config that is not an object, a --home that cannot be a data directory, and bad
arguments that must be refused before a run folder exists. Each is one message naming the field,
exit code 1, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.cli.main import run


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "notes"
    data.mkdir()
    (data / "a.jsonl").write_text('{"prompt": "Hi?", "completion": "Hello."}\n' * 4)
    return data


def refused(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 1 with a message (no traceback). Returns the message."""
    code = run(list(argv))
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def no_runs(home: Path) -> bool:
    runs = home / "runs"
    return not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--alpha", "nan", "alpha"), ("--alpha", "inf", "alpha"), ("--epochs", "inf", "epochs"),
    ("--lr", "nan", "learning_rate"), ("--dropout", "-inf", "dropout"), ("--seq-len", "0", "seq_len"),
    ("--max-file-mb", "nan", "max_file_mb"), ("--max-file-mb", "0", "max_file_mb"),
])
def test_train_refuses_values_that_are_not_finite_or_in_range(option: str, value: str, field: str, folder: Path,
                                                              studio_home, capsys):
    err = refused(capsys, "train", str(folder), f"{option}={value}", "--json")
    assert field in err
    assert no_runs(studio_home.root)


@pytest.mark.parametrize("content", ["[1, 2]", '"rank"', "3"])
def test_train_config_file_must_be_an_object(content: str, folder: Path, studio_home, tmp_path: Path, capsys):
    config = tmp_path / "config.json"
    config.write_text(content)
    assert "should hold a JSON object" in refused(capsys, "train", str(folder), "--config", str(config))
    assert no_runs(studio_home.root)


@pytest.mark.parametrize(("argv", "field"), [
    (["estimate", "--alpha", "nan"], "alpha"), (["estimate", "--alpha", "-2"], "alpha"),
    (["estimate", "--seq-len", "0"], "seq_len"), (["estimate", "--rank", "0"], "rank"),
])
def test_estimate_refuses_what_train_refuses(argv: list[str], field: str, studio_home, capsys):
    assert field in refused(capsys, *argv)


def test_estimate_refuses_a_seq_len_beyond_the_bases_positions(tiny_home, capsys):
    assert "--seq-len 10000000 is longer than the 512 positions" in refused(
        capsys, "estimate", "--base", "tiny-llama", "--seq-len", "10000000")


def test_scan_refuses_a_zero_seq_len(folder: Path, studio_home, capsys):
    assert "--seq-len" in refused(capsys, "scan", str(folder), "--seq-len", "0", "--no-tokenizer")


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--temperature", "nan", "temperature"), ("--top-p", "nan", "top_p"), ("--temperature", "inf", "temperature"),
    ("--repetition-penalty", "nan", "repetition_penalty"), ("--max-new-tokens", "0", "max_new_tokens"),
])
def test_chat_refuses_sampling_values_before_loading_anything(option: str, value: str, field: str, studio_home,
                                                             capsys):
    assert field in refused(capsys, "chat", "--prompt", "hi", option, value)


def test_home_that_is_a_file_or_cannot_be_made(tmp_path: Path, capsys):
    a_file = tmp_path / "home.txt"
    a_file.write_text("not a folder")
    assert "is a file, not a folder" in refused(capsys, "--home", str(a_file), "list")
    assert "cannot be used" in refused(capsys, "--home", "/proc/no-such-process/home", "list")
    assert "cannot be used" in refused(capsys, "--home", str(a_file / "below"), "list")


@pytest.fixture
def tiny_home(studio_home, tiny_base_dir: Path):
    import shutil

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    return studio_home


@pytest.mark.parametrize(("extra", "expected"), [
    (["--base", "no-such-model"], "No base model called 'no-such-model'"),
    (["--base", "tiny-llama", "--seq-len", "10000000"], "seq_len 10000000 is longer than the 512 positions"),
    (["--base", "tiny-llama", "--seq-len", "64", "--targets", "q_proj,zz_proj"], "no linear layers called zz_proj"),
    (["--base", "tiny-llama", "--seq-len", "64", "--continue", "no-such-adapter"],
     "No adapter called 'no-such-adapter'"),
])
def test_bad_arguments_leave_no_failed_run_behind(extra: list[str], expected: str, folder: Path, tiny_home,
                                                  capsys):
    assert expected in refused(capsys, "train", str(folder), *extra)
    assert no_runs(tiny_home.root)


def test_a_missing_data_folder_leaves_no_failed_run_behind(tiny_home, tmp_path: Path, capsys):
    assert "does not exist" in refused(capsys, "train", str(tmp_path / "nowhere"), "--base", "tiny-llama")
    assert no_runs(tiny_home.root)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--seq-len", "100000"], "seq_len 100000 is longer than the 8192 positions"),
    (["--seq-len", "64", "--targets", "q_proj,foo_proj"], "no linear layers called foo_proj"),
])
def test_bad_arguments_on_the_unconverted_default_base_leave_no_run_behind(extra: list[str], expected: str,
                                                                         folder: Path, studio_home, capsys):
    """A fresh home: the default base is not converted yet, and its known shape still refuses these."""
    assert not (studio_home.models / "SmolLM2-135M-Instruct").exists()
    assert expected in refused(capsys, "train", str(folder), *extra)
    assert no_runs(studio_home.root)
    assert not (studio_home.models / "SmolLM2-135M-Instruct").exists(), "refused before converting it"
