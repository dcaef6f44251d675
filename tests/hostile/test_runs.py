"""Issue 14, the end of a run and the clean-up after a kill, attacked the way a hostile or unlucky user
would: SIGKILLs between publishing an adapter and recording it, a resume from the final checkpoint,
killed imports and conversions leaving their work folders, two imports racing for one name, run ids
that are paths, and a loop of SIGKILLs at random moments of a tiny-model run.

Training runs in a forked child of this process (torch is imported once, here), killed with a real
SIGKILL: by the test at a random moment, or by itself at a named moment it hears of through the
studio's own logging and events.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from studio.core import scratch
from studio.core.errors import StudioError
from studio.core.leftovers import remove_leftovers
from studio.core.library.store import AdapterLibrary
from studio.core.paths import DataDir, data_dir
from studio.core.train import checkpoints
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir
from studio.core.train.runs import list_runs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 one-turn chats in a JSONL file."""
    folder = tmp_path_factory.mktemp("chats")
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                      {"role": "assistant", "content": f"The answer is {a + b}."}]})
             for a in range(1, 7) for b in range(1, 5)]
    (folder / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_config(folder: Path, base: Path, **overrides) -> TrainConfig:
    values = dict(data_folder=str(folder), base=str(base), adapter_name="k15", quant="none", rank=4, alpha=8.0,
                  max_steps=4, micro_batch_size=2, grad_accum=1, seq_len=48, eval_every=2, checkpoint_every=2,
                  keep_checkpoints=2, sample_every=0, memory_every=0, device="cpu")
    return TrainConfig(**{**values, **overrides})


class _KillOnLog(logging.Handler):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.message):
            os.kill(os.getpid(), signal.SIGKILL)


def fork_run(config: TrainConfig, data: DataDir, *, kill_on_log: str = "",
             kill_on_event: Callable[[ev.Event], bool] | None = None) -> int:
    """Train in a forked child; it SIGKILLs itself when the studio logs `kill_on_log` (a message's
    start) or emits an event `kill_on_event` accepts. Returns the child's pid."""
    gc.freeze()  # the child's collections then skip this process's heap instead of copying it page by page
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return pid
    code = 0
    try:  # the child: never back into pytest
        if kill_on_log:
            root = logging.getLogger("studio")
            root.setLevel(logging.INFO)
            root.addHandler(_KillOnLog(kill_on_log))

        def on_event(event: ev.Event) -> None:
            if kill_on_event is not None and kill_on_event(event):
                os.kill(os.getpid(), signal.SIGKILL)

        from studio.ml.train.run import run_training

        run_training(config, data, on_event=on_event)
    except BaseException:  # noqa: BLE001 - reported through the exit code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def poll(pid: int) -> int | None:
    """The child's exit code (minus the signal that ended it) once it has ended, else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def wait(pid: int, timeout: float = 120) -> int:
    """The child's end: its exit code, or minus the signal that ended it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = poll(pid)
        if code is not None:
            return code
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the training child did not end")


def leftovers(home: DataDir) -> list[Path]:
    """Every work folder or work-folder lock anywhere in the data directory."""
    return sorted(p for p in home.root.rglob("*") if (scratch.is_leftover_name(p.name) and p.is_dir())
                  or p.name.endswith(scratch.SUFFIX + scratch.LOCK_SUFFIX))


def adapters_of(home: DataDir, run_id: str) -> list[str]:
    return [e.id for e in AdapterLibrary(home).list() if e.manifest.lineage.recipe.get("run_id") == run_id]


def finished_records(run: RunDir) -> list[ev.Finished]:
    return [e for e in run.events() if isinstance(e, ev.Finished)]


def only_run(home: DataDir) -> RunDir:
    (run,) = RunDir.all(home)
    return run


# ---------------------------------------------------------------- publishing and recording: one step


@pytest.mark.parametrize("then", ["resume", "list"])
def test_a_kill_between_publishing_and_recording_is_completed_not_trained_again(then, chats, tiny_base_dir,
                                                                                studio_home):
    config = tiny_config(chats, tiny_base_dir)
    assert wait(fork_run(config, studio_home, kill_on_log="Added adapter")) == -signal.SIGKILL
    run = only_run(studio_home)
    (published,) = adapters_of(studio_home, run.run_id)  # in the library, under lineage naming the run
    assert finished_records(run) == []  # ... and the record never said so
    steps = [e for e in run.events() if isinstance(e, ev.Step)]
    assert leftovers(studio_home)  # the killed publisher's work folder in the run folder

    if then == "resume":
        from studio.cli.main import run as cli

        assert cli(["train", "--resume", run.run_id]) == 0  # a CLI start: leftovers go, the record is completed
    else:
        (summary,) = list_runs(studio_home)
        assert (summary.status, summary.adapter_id) == ("finished", published)
        remove_leftovers(studio_home)
    assert [e.name for e in AdapterLibrary(studio_home).list()] == ["k15"]  # no "k15 (2)"
    (record,) = finished_records(run)
    assert record.adapter_id == published and record.final_loss is not None
    assert [e for e in run.events() if isinstance(e, ev.Step)] == steps  # nothing trained after the kill
    assert [s.status for s in list_runs(studio_home)] == ["finished"]
    assert leftovers(studio_home) == []
    with pytest.raises(StudioError, match="already finished"):
        from studio.ml.train.run import run_training

        run_training(TrainConfig(resume=run.run_id), studio_home)


def test_a_resume_from_the_final_checkpoint_publishes_without_training_past_max_steps(chats, tiny_base_dir,
                                                                                      studio_home):
    config = tiny_config(chats, tiny_base_dir)

    def final_checkpoint(event: ev.Event) -> bool:
        return isinstance(event, ev.Checkpoint) and event.step == config.max_steps

    assert wait(fork_run(config, studio_home, kill_on_event=final_checkpoint)) == -signal.SIGKILL
    run = only_run(studio_home)
    assert checkpoints.kept_steps(run)[-1] == config.max_steps and AdapterLibrary(studio_home).list() == []
    from studio.ml.train.run import run_training

    seen: list[ev.Event] = []
    result = run_training(TrainConfig(resume=run.run_id), studio_home, on_event=seen.append)
    assert (result.status, result.step, result.max_steps) == ("finished", 4, 4)  # not 5 of 4
    assert not any(isinstance(e, ev.Step) for e in seen)
    assert max(e.step for e in run.events() if isinstance(e, ev.Step)) == config.max_steps
    (entry,) = AdapterLibrary(studio_home).list()
    assert entry.id == result.adapter_id and entry.manifest.metrics["steps"] == 4
    assert entry.manifest.metrics["final_train_loss"] is not None and entry.manifest.metrics["tokens_seen"] > 0
    assert len(finished_records(run)) == 1


# ---------------------------------------------------------------- leftovers of killed processes

HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from studio.core import atomic
    final = Path(sys.argv[1])
    with atomic.staging_dir(final) as stage:
        (stage / "model.safetensors").write_bytes(b"0" * 1024)
        print(stage, flush=True)
        time.sleep(600)
""")


def hold_staging(final: Path) -> tuple[subprocess.Popen, Path]:
    """A live process staging `final` (the way the default model's conversion does) and its folder."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(final)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_stale_work_folders_go_at_start_and_live_ones_stay(studio_home):
    model = studio_home.models / "SmolLM2-135M-Instruct"
    killed, killed_stage = hold_staging(model)
    live, live_stage = hold_staging(model)
    try:
        killed.kill()
        killed.wait()
        run = studio_home.runs / "20260101-120000-k15-abcd"
        run.mkdir()
        (run / "config.json").write_text("{}")
        older = [studio_home.adapters / ".import-x1y2.tmp", run / ".adapter-3k_9", studio_home.root / ".blend-q",
                 studio_home.models / ".SmolLM2-135M-Instruct.ab12.staging"]  # named as before the locks
        for folder in older:
            folder.mkdir()
            (folder / "adapter_model.safetensors").write_bytes(b"0" * 4096)
        keep = studio_home.adapters / ".git"  # hidden, but not a studio work folder
        keep.mkdir()
        empty_run = studio_home.runs / "20260101-120001-x-0000"  # made by older versions before its config
        empty_run.mkdir()

        from studio.cli.main import run as cli

        assert cli(["runs"]) == 0  # a CLI start
        assert not killed_stage.exists() and not any(p.exists() for p in older) and not empty_run.exists()
        assert live_stage.is_dir() and keep.is_dir() and run.is_dir()
        assert leftovers(studio_home) == [live_stage, live_stage.with_name(live_stage.name + ".lock")]
    finally:
        live.kill()
        live.wait()
    assert remove_leftovers(studio_home) == [live_stage] and leftovers(studio_home) == []


IMPORT_SCRIPT = textwrap.dedent("""
    import sys
    from studio.core.library.store import AdapterLibrary
    from studio.core.paths import data_dir
    AdapterLibrary(data_dir(sys.argv[1])).import_path(sys.argv[2], name=sys.argv[3] if len(sys.argv) > 3 else None)
""")


def test_a_killed_zip_import_leaves_nothing_after_the_next_start(studio_home, tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        handle.writestr("big/adapter_config.json", json.dumps({"peft_type": "LORA", "r": 4}))
        handle.writestr("big/adapter_model.safetensors", os.urandom(96 * 1024 * 1024))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_SCRIPT, str(studio_home.root), str(archive)], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            unpacking = [p for p in studio_home.adapters.glob(".*") if p.is_dir() and any(p.rglob("*.json"))]
            if unpacking:
                proc.kill()
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    assert leftovers(studio_home)  # the half-unpacked zip
    assert remove_leftovers(studio_home) and leftovers(studio_home) == []
    assert AdapterLibrary(studio_home).list() == []


def test_processes_importing_with_the_same_name_at_once_get_different_names(studio_home, tiny_base_dir, tmp_path):
    from tests.tiny_model import make_tiny_adapter

    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "same", base_name=str(tiny_base_dir))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", IMPORT_SCRIPT, str(studio_home.root), str(adapter), "same"],
                              env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    names = sorted(e.name for e in AdapterLibrary(studio_home).list())
    assert names == ["same", "same (2)", "same (3)", "same (4)"]


def test_a_torn_last_line_of_the_record_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(ev.event_to_json(ev.Stopped(step=2, checkpoint=None)) + '\n{"type": "step", "st')  # killed
    ev.append_event(path, ev.Stopped(step=3, checkpoint=None))
    assert ev.read_events(path) == [ev.Stopped(step=2, checkpoint=None), ev.Stopped(step=3, checkpoint=None)]



def test_a_line_torn_inside_a_character_spoils_only_itself(tmp_path):
    path = tmp_path / "metrics.jsonl"
    torn = ev.event_to_json(ev.Stopped(step=2, checkpoint="caf\u00e9 \u2026")).encode("utf-8")
    cut = torn.index("\u2026".encode()) + 1  # a short write ended inside the three bytes of "…"
    path.write_bytes(torn[:cut] + b"\n" + (ev.event_to_json(ev.Stopped(step=3, checkpoint=None)) + "\n").encode())
    assert ev.read_events(path) == [ev.Stopped(step=3, checkpoint=None)]

# ---------------------------------------------------------------- run ids are names inside runs/


@pytest.mark.parametrize("run_id", ["/some/outside/run", "../../other/runs/20260101-120000-k-abcd", "a/b", "..",
                                    ".hidden", "a\\b", "", "C:run"])
def test_a_run_id_is_a_name_inside_runs_never_a_path(run_id, studio_home):
    with pytest.raises(StudioError, match="a run id is the name of a folder in"):
        RunDir.of(studio_home, run_id)


def test_resume_and_save_checkpoint_refuse_run_folders_outside_the_data_directory(tmp_path, studio_home, capsys):
    from studio.cli.main import run as cli

    other = data_dir(tmp_path / "other")
    outside = other.runs / "20260101-120000-k15-abcd"
    checkpoint = RunDir(outside).checkpoint(40)
    checkpoint.mkdir(parents=True)
    (outside / "config.json").write_text(json.dumps(TrainConfig(data_folder=str(tmp_path)).to_dict()))
    (checkpoint / "adapter_config.json").write_text("{}")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"0" * 64)
    checkpoints.mark_complete(checkpoint)
    before = sorted(p.relative_to(other.root) for p in other.root.rglob("*"))

    relative = os.path.relpath(outside, studio_home.runs)
    for argv in (["train", "--resume", str(outside)], ["train", "--resume", relative],
                 ["save-checkpoint", relative, "40"], ["save-checkpoint", str(outside), "40"]):
        assert cli(argv) == 1
        assert "a run id is the name of a folder in" in capsys.readouterr().err
    assert sorted(p.relative_to(other.root) for p in other.root.rglob("*")) == before  # nothing written there
    assert AdapterLibrary(studio_home).list() == [] and RunDir.all(studio_home) == []


# ---------------------------------------------------------------- SIGKILLs at random moments


@pytest.mark.slow
def test_sigkills_at_random_moments_leave_one_adapter_a_finished_record_and_no_leftovers(chats, tiny_base_dir,
                                                                                         studio_home, tmp_path):
    seed = int(os.environ.get("HOSTILE_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    config = tiny_config(chats, tiny_base_dir, max_steps=6, eval_every=3)
    from studio.ml.train.run import run_training

    # A whole run here, in another data directory, imports and warms up what the forked children use
    # (they start warm: ~1 s a run instead of ~8); the next one, forked, is the span to kill within.
    assert run_training(config, data_dir(tmp_path / "warm-up")).status == "finished"
    started = time.monotonic()
    assert wait(fork_run(config, data_dir(tmp_path / "reference"))) == 0
    span = time.monotonic() - started
    kills, current, unrecorded = 0, None, 0
    for _ in range(60):
        if kills >= 10:
            break
        pid = fork_run(TrainConfig(resume=current) if current else config, studio_home)
        time.sleep(rng.uniform(0.0, span))
        code = poll(pid)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            kills += 1
            code = wait(pid)
        assert code in (0, -signal.SIGKILL), f"seed {seed}: the run failed ({code})"
        # what the next start does: clear leftovers, list the runs and the library
        unrecorded += sum(bool(adapters_of(studio_home, run.run_id)) and not finished_records(run)
                          for run in RunDir.all(studio_home))
        remove_leftovers(studio_home)
        summaries = {s.run_id: s for s in list_runs(studio_home)}
        AdapterLibrary(studio_home).list()
        unfinished = [r for r, s in summaries.items() if s.status != "finished"]
        assert len(unfinished) <= 1, f"seed {seed}: {unfinished}"
        current = unfinished[0] if unfinished else None
    assert kills >= 10, f"seed {seed}: only {kills} kills landed"
    if current is not None:
        assert wait(fork_run(TrainConfig(resume=current), studio_home)) == 0, f"seed {seed}"
    remove_leftovers(studio_home)
    summaries = list_runs(studio_home)
    assert summaries and all(s.status == "finished" for s in summaries), f"seed {seed}"
    for summary in summaries:
        assert len(finished_records(summary.run_dir)) == 1, f"seed {seed}: {summary.run_id}"
        assert adapters_of(studio_home, summary.run_id) == [summary.adapter_id], f"seed {seed}: {summary.run_id}"
    assert len(AdapterLibrary(studio_home).list()) == len(summaries), f"seed {seed}"
    assert leftovers(studio_home) == [], f"seed {seed}"
    print(f"seed {seed}: {kills} kills over {len(summaries)} runs ({unrecorded} between publishing and "
          f"recording), a whole run {span:.2f} s")


def test_a_full_disk_while_saving_a_checkpoint_says_so_and_keeps_the_last_one(chats, tiny_base_dir, studio_home,
                                                                               monkeypatch):
    """torch.save raising its serializer's error stands in for a full disk (no disk fills up here)."""
    import torch

    from studio.ml.train.run import run_training

    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                               "writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    config = tiny_config(chats, tiny_base_dir, max_steps=6, keep_checkpoints=5)
    events: list = []
    result = run_training(config, studio_home, on_event=events.append)
    assert result.status == "failed"
    failed = events[-1]
    assert isinstance(failed, ev.Failed)
    assert "the disk is full" in failed.message and "MB free at" in failed.message, failed.message
    assert "resume" in failed.hint.lower()
    run = RunDir.existing(studio_home, result.run_id)
    assert checkpoints.kept_steps(run) == [2], "the last complete checkpoint stays"
    assert [p.name for p in run.checkpoint_folders()] == ["checkpoint-2"], "the half-written one is gone"
    assert Path(failed.checkpoint).name == "checkpoint-2"

    monkeypatch.setattr(torch, "save", real_save)  # space again: the run resumes from step 2 and finishes
    resumed = run_training(TrainConfig(resume=result.run_id), studio_home)
    assert resumed.status == "finished", resumed
    assert [e.manifest.name for e in AdapterLibrary(studio_home).list()] == ["k15"]


class _FillingDisk(io.RawIOBase):
    """A file on a disk that fills up when told: writes then fail with ENOSPC, as the OS's would."""

    def __init__(self, path: Path, disk: dict[str, bool]) -> None:
        self.real, self.disk = open(path, "ab", buffering=0), disk  # noqa: SIM115 - closed in close()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        super().close()


def test_a_full_disk_while_writing_events_ends_the_run_with_the_message_and_lets_the_run_go(
        chats, tiny_base_dir, studio_home, monkeypatch):
    """metrics.jsonl on a disk that fills up after step 2 stands in for a full disk (no disk fills up
    here): the Step event, the Failed event and the close's flush all fail, as they would."""
    from studio.core.train import run_lock
    from studio.ml.train import callbacks
    from studio.ml.train.run import run_training

    disk = {"full": False}
    monkeypatch.setattr(callbacks, "open_for_append", lambda path: io.TextIOWrapper(
        io.BufferedWriter(_FillingDisk(path, disk)), encoding="utf-8"))

    def fill_after_step_2(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 2:
            disk["full"] = True

    result = run_training(tiny_config(chats, tiny_base_dir, max_steps=6), studio_home, on_event=fill_after_step_2)
    assert result.status == "failed"
    assert "the disk is full" in result.message and "MB free at" in result.message, result.message
    assert "progress after step 2" in result.message, result.message  # not "checkpoint": none was being saved
    assert "resume" in result.hint.lower()
    run = RunDir.existing(studio_home, result.run_id)
    assert run_lock.holder(run) is None
    run_lock.acquire(run)  # the run was let go: it can be taken again (a resume)
    run_lock.release(run)


def test_a_full_disk_while_publishing_says_it_was_copying_the_adapter(chats, tiny_base_dir, studio_home,
                                                                      monkeypatch):
    """shutil.copy2 raising ENOSPC for the adapter's weights stands in for a full disk (no disk fills up here)."""
    import shutil

    from studio.ml.train.run import run_training

    real_copy = shutil.copy2

    def copy_on_a_full_disk(src, dst, *args, **kwargs):
        if Path(src).name == "adapter_model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", copy_on_a_full_disk)
    events: list = []
    result = run_training(tiny_config(chats, tiny_base_dir), studio_home, on_event=events.append)
    assert result.status == "failed"
    assert isinstance(events[-1], ev.Failed) and events[-1].message == result.message
    assert "the disk is full" in result.message and "library" in result.message, result.message
    assert "checkpoint after step" not in result.message
    assert AdapterLibrary(studio_home).list() == []

    monkeypatch.setattr(shutil, "copy2", real_copy)  # space again: the resume only publishes
    resumed = run_training(TrainConfig(resume=result.run_id), studio_home)
    assert resumed.status == "finished", resumed
