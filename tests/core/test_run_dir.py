"""A run folder's layout has one owner (RunDir), its checkpoint bookkeeping is plain Python, and the
TrainConfig a run is given is a frozen, checked value that carries no test hook into config.json."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

import studio
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train import checkpoints, run_lock
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir, step_of
from studio.core.train.runs import list_runs

ROOT = Path(studio.__file__).resolve().parents[1]


def fake_checkpoint(run: RunDir, step: int, *, complete: bool = True, info: dict | None = None) -> Path:
    """What the Trainer leaves: peft's two files in checkpoint-<step>/ (and the studio's marker)."""
    folder = run.checkpoint(step)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * step)
    if complete:
        checkpoints.mark_complete(folder, info)
    return folder


def test_a_run_folder_written_and_read_back_through_its_run_dir(tmp_path: Path) -> None:
    data = DataDir(tmp_path).ensure()
    run = RunDir.of(data, "20260101-120000-math-abcd")
    run.path.mkdir()
    config = TrainConfig(data_folder="d", adapter_name="math", tags=["x"])
    run.write_config(config.to_dict())
    with run.metrics.open("w", encoding="utf-8") as handle:
        handle.write(ev.event_to_json(ev.Stopped(step=2, checkpoint=None)) + "\n")
    assert TrainConfig.from_dict(run.read_config()) == config
    assert run.events() == [ev.Stopped(step=2, checkpoint=None)]
    assert RunDir.existing(data, run.run_id) == run and RunDir.all(data) == [run]
    (summary,) = list_runs(data)
    assert (summary.run_dir, summary.status, summary.name) == (run, "stopped", "math")
    for missing in ("nope", "", "../x"):
        with pytest.raises(StudioError, match="no training run"):
            RunDir.existing(data, missing)

    run_lock.acquire(run)
    try:
        assert run.holder_file.is_file() and run.lock_file.is_file()
        assert run_lock.holder(RunDir(Path(str(run.path)))).pid == os.getpid()  # keyed by the folder
    finally:
        run_lock.release(run)
    assert not run.holder_file.exists()


def test_checkpoint_bookkeeping_trusts_only_complete_checkpoints(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert checkpoints.last_complete(run) is None and checkpoints.kept_steps(run) == []
    for step in (2, 4, 6):
        fake_checkpoint(run, step, info={"eval_loss": 1.0 / step})
    torn = fake_checkpoint(run, 8, complete=False)  # killed while the Trainer wrote it
    assert checkpoints.kept_steps(run) == [2, 4, 6] and step_of(checkpoints.last_complete(run)) == 6
    assert checkpoints.read_marker(run.checkpoint(4))["eval_loss"] == 0.25
    assert checkpoints.complete_at(run, 4) == run.checkpoint(4) and checkpoints.complete_at(run, 8) is None
    (run.checkpoint(6) / "adapter_model.safetensors").write_bytes(b"cut")  # a file changed after the marker
    assert not checkpoints.is_complete(run.checkpoint(6)) and checkpoints.kept_steps(run) == [2, 4]

    # The newest folder stays (the Trainer may still be writing it); older ones beyond keep_last go.
    removed = checkpoints.prune(run, keep_last=1, protect={run.checkpoint(2)})
    assert sorted(step_of(p) for p in removed) == [6] and [step_of(p) for p in run.checkpoint_folders()] == [2, 4, 8]
    assert checkpoints.remove_incomplete(run) == [torn] and checkpoints.kept_steps(run) == [2, 4]
    empty = run.checkpoint(10)
    empty.mkdir()
    with pytest.raises(RuntimeError, match="lacks"):
        checkpoints.mark_complete(empty)


def test_train_config_is_frozen_and_saved_without_a_test_hook() -> None:
    config = TrainConfig(data_folder="d", targets=["q_proj"], probe_prompts=["Hi?"], tags=[" a", "b", "a", ""])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 8  # type: ignore[misc]
    assert (config.targets, config.probe_prompts, config.tags) == (("q_proj",), ("Hi?",), ("a", "b"))
    assert config.replace(rank=8).rank == 8 and config.rank == 16
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["targets"] == ["q_proj"] and saved["tags"] == ["a", "b"]
    assert not [key for key in saved if "oom" in key.lower() or key.startswith("_")]
    assert TrainConfig.from_dict(saved) == config
    # a config.json written before the hook moved out still reads, and loses the key
    assert "_inject_oom_at_step" not in TrainConfig.from_dict({**saved, "_inject_oom_at_step": 3}).to_dict()
    with pytest.raises(TypeError):
        TrainConfig(data_folder="d", _inject_oom_at_step=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(("change", "field"), [
    (dict(rank=0), "rank"), (dict(method="ia3"), "method"), (dict(learning_rate=3.0), "learning_rate"),
    (dict(seq_len=4), "seq_len"), (dict(max_steps=0, epochs=0), "epochs"), (dict(eval_every=-1), "eval_every"),
    (dict(dropout=1.5), "dropout"), (dict(targets=[]), "targets"), (dict(micro_batch_size=1.5), "micro_batch_size"),
    (dict(warmup_steps=-2), "warmup_steps"), (dict(data_folder=""), "data_folder"), (dict(alpha="x"), "alpha"),
    (dict(tags="a,b"), "tags"), (dict(probe_prompts=[3]), "probe_prompts"),
])
def test_a_value_that_cannot_work_is_refused_naming_its_field(change: dict, field: str) -> None:
    with pytest.raises(StudioError) as caught:
        TrainConfig(**{"data_folder": "d", **change})
    assert caught.value.message.startswith(field)
    with pytest.raises(StudioError, match=f"^{field}"):  # replace() checks too: no invalid config exists
        TrainConfig(data_folder="d").replace(**change)


LAYOUT_NAMES = re.compile(r"metrics\.jsonl|running\.json|running\.lock|studio-complete\.json|(?<![-\w])checkpoint-")


def _layout_literals(path: Path) -> list[str]:
    """The string literals in code (not docstrings) that spell a run folder's file names, or
    join "checkpoints" / "config.json" onto a path."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and LAYOUT_NAMES.search(node.value)):
            found.append(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and right.value == "checkpoints":
                found.append(right.value)
            if (isinstance(right, ast.Constant) and right.value == "config.json"
                    and "runs" in ast.unparse(node.left)):
                found.append(right.value)
    return found


def test_only_run_dir_spells_out_the_run_folder_layout() -> None:
    owner = ROOT / "studio" / "core" / "train" / "run_dir.py"
    assert _layout_literals(owner)  # the check sees the names where they are
    offenders = {}
    for folder in ("studio", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != owner and (hits := _layout_literals(path)):
                offenders[str(path.relative_to(ROOT))] = hits
    assert offenders == {}
