"""The run browser on real tiny training runs: it lists past runs with their settings, overlays the
selected runs' loss curves (one curve per run, one point per logged step), diffs exactly the
settings that differ, and lists a run whose process was killed after a checkpoint as interrupted
and resumable; Resume continues it from that checkpoint to the end.

The runs are made once per module by studio.ml.train.run.run_training on the tiny model: two that
finish (different rank, alpha and learning rate) and one in a child process that is SIGKILLed right
after its first complete checkpoint. Each test works on its own copy of that data directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from studio.core.paths import DataDir, data_dir
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir
from studio.core.train.runs import HIDDEN_DIFF_KEYS
from studio.gui.train.charts import smooth
from tests.lock_holder import held_by_another_process

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_MS = 120_000
KILL_AT_STEP = 2

# A child process that trains and dies (SIGKILL: no Stopped, no Failed, no cleanup) right after the
# checkpoint of step KILL_AT_STEP is complete: what a crash or a closed laptop leaves behind.
KILLED_RUN = """
import json, os, signal, sys
from studio.core.train import events as ev
from studio.core.paths import data_dir
from studio.core.train.config import TrainConfig
from studio.ml.train.run import run_training

def on_event(event):
    if isinstance(event, ev.Checkpoint) and event.step >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

run_training(TrainConfig.from_dict(json.loads(sys.argv[2])), data_dir(sys.argv[1]), on_event=on_event)
"""


def tiny_config(folder: Path, **overrides) -> TrainConfig:
    values = dict(data_folder=str(folder), base="tiny-llama", adapter_name="math", quant="none", rank=4, alpha=8.0,
                  max_steps=4, micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=2, checkpoint_every=2,
                  sample_every=0, learning_rate=5e-3, memory_every=1, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def metrics(folder: Path) -> list:
    return RunDir(folder).events()


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def run_of(home: DataDir, name: str) -> Path:
    """The folder of the run whose adapter_name is `name`."""
    for run in RunDir.all(home):
        if run.read_config()["adapter_name"] == name:
            return run.path
    raise AssertionError(f"no run named {name!r}")


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_base_dir) -> DataDir:
    """A data directory with three real runs: 'rank 4' and 'rank 8' finished, 'killed' interrupted."""
    from studio.ml.train.run import run_training

    root = tmp_path_factory.mktemp("runs-home")
    folder = root / "math-data"
    folder.mkdir()
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                      {"role": "assistant", "content": f"The answer is {a + b}."}]})
             for a in range(1, 6) for b in range(1, 6)]
    (folder / "math.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    home = data_dir(root / "home")
    shutil.copytree(tiny_base_dir, home.models / "tiny-llama")

    # The child starts first (it spends most of its time importing) and trains alongside the others.
    killed = tiny_config(folder, adapter_name="killed", max_steps=6)
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(home.root), json.dumps(killed.to_dict()),
                              str(KILL_AT_STEP)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    for config in (tiny_config(folder, adapter_name="rank 4"),
                   tiny_config(folder, adapter_name="rank 8", rank=8, alpha=16.0, learning_rate=1e-3)):
        assert run_training(config, home).status == "finished"
    _, stderr = child.communicate(timeout=180)
    assert child.returncode == -signal.SIGKILL, stderr[-2000:]
    return home


@pytest.fixture
def home(trained_home: DataDir, tmp_path: Path) -> DataDir:
    """This test's own copy of the trained data directory (resuming changes a run)."""
    return data_dir(shutil.copytree(trained_home.root, tmp_path / "home", symlinks=True))


@pytest.fixture
def browser(qtbot, home, changes):
    from studio.gui.train.run_browser import RunBrowser

    widget = RunBrowser(home, changes)
    qtbot.addWidget(widget)
    widget.resize(1100, 700)
    widget.show()
    with qtbot.waitSignal(widget.loaded, timeout=10_000):
        widget.refresh()
    return widget


def rows(browser) -> dict[str, list[str]]:
    """The run table as {run name: [column texts]}."""
    table = browser.table
    out = {}
    for index in range(table.topLevelItemCount()):
        item = table.topLevelItem(index)
        out[item.text(0)] = [item.text(column) for column in range(table.columnCount())]
    return out


def diff_rows(browser) -> dict[str, tuple[str, str]]:
    table = browser.diff
    return {table.item(row, 0).text(): (table.item(row, 1).text(), table.item(row, 2).text())
            for row in range(table.rowCount())}


def test_the_past_runs_are_listed_with_their_settings(browser, home):
    table = rows(browser)
    assert set(table) == {"rank 4", "rank 8", "killed"}
    for name, status in (("rank 4", "finished"), ("rank 8", "finished"), ("killed", "interrupted")):
        events = metrics(run_of(home, name))
        last_step = of(events, ev.Step)[-1]
        column = dict(zip(["Run", "Started", "Status", "Steps", "Final loss", "Eval loss", "Base"], table[name],
                          strict=True))
        assert column["Status"] == status
        assert column["Steps"] == f"{last_step.step}/{last_step.max_steps}"
        assert column["Final loss"] == f"{last_step.loss:.4f}"
        assert column["Eval loss"] == f"{min(e.eval_loss for e in of(events, ev.Eval)):.4f}"
        assert column["Base"] == "tiny-llama"
        assert column["Started"][:2] == "20"  # a date read from the run id
    assert table["killed"][3] == f"{KILL_AT_STEP}/6"

    # One run selected: its full settings, as config.json has them.
    run = run_of(home, "rank 8")
    browser.select([run.name])
    config = RunDir(run).read_config()
    shown = diff_rows(browser)
    assert set(shown) == set(config) - HIDDEN_DIFF_KEYS
    assert shown["rank"][0] == "8" and shown["learning_rate"][0] == "0.001" and shown["base"][0] == "tiny-llama"
    assert "rank 8" in browser.diff_label.text()


def test_selected_runs_overlay_their_loss_curves(browser, home):
    finished = [run_of(home, "rank 4"), run_of(home, "rank 8")]
    browser.select([run.name for run in finished])
    curves = browser.overlay.curves
    assert len(curves) == 2
    for run in finished:
        name = RunDir(run).read_config()["adapter_name"]
        (curve,) = [curve for label, curve in curves.items() if label.startswith(f"{name} (")]
        steps = of(metrics(run), ev.Step)
        x, y = curve.getData()
        assert list(x) == [s.step for s in steps] == [1, 2, 3, 4]
        assert list(y) == pytest.approx(smooth([s.loss for s in steps]))

    everything = [run.name for run in home.runs.iterdir()]
    browser.select(everything)
    assert len(browser.overlay.curves) == 3
    assert sorted(len(curve.getData()[0]) for curve in browser.overlay.curves.values()) == [KILL_AT_STEP, 4, 4]
    assert len(browser.overlay.legend.items) == 3

    browser.select([])
    assert browser.overlay.curves == {} and browser.diff.rowCount() == 0


def test_two_runs_that_read_the_same_keep_their_own_curves(qtbot, browser, home):
    # A second copy of a run under another id: same name, same start minute.
    original = run_of(home, "rank 4")
    twin = home.runs / f"{original.name[:15]}-rank-4-twin"
    shutil.copytree(original, twin)
    with qtbot.waitSignal(browser.loaded, timeout=10_000):
        browser.refresh()
    browser.select([original.name, twin.name])
    assert len(browser.overlay.curves) == 2
    assert len(set(browser.overlay.curves)) == 2 and all(original.name in label or twin.name in label
                                                        for label in browser.overlay.curves)
    assert browser.diff.rowCount() == 0 and "0 setting(s) differ" in browser.diff_label.text()


def test_the_settings_diff_shows_exactly_the_differing_fields(browser, home):
    a, b = run_of(home, "rank 4"), run_of(home, "rank 8")
    browser.select([a.name, b.name])
    shown = diff_rows(browser)
    # The two runs were made with different name, rank, alpha and learning rate, nothing else.
    assert set(shown) == {"adapter_name", "rank", "alpha", "learning_rate"}
    first = browser.selected_ids()[0]  # column A is the first selected row (the table's order)
    left, right = (a, b) if first == a.name else (b, a)
    configs = [RunDir(run).read_config() for run in (left, right)]
    for key, (value_a, value_b) in shown.items():
        assert (value_a, value_b) == (str(configs[0][key]), str(configs[1][key]))
    assert "4 setting(s) differ" in browser.diff_label.text()


def test_an_interrupted_run_is_resumable_and_resume_continues_it(qtbot, home, changes):
    from studio.gui.train.panel import TrainPanel

    panel = TrainPanel(home, changes)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.browser.runs is not None, timeout=10_000)
    browser = panel.browser
    killed = run_of(home, "killed")
    summary = browser.run(killed.name)
    assert summary.status == "interrupted" and summary.resumable and summary.step == KILL_AT_STEP
    assert [r.run_id for r in browser.interrupted()] == [killed.name]
    assert not panel.banner.isHidden() and "killed" in panel.banner.text.text()
    assert RunDir(killed).checkpoints.is_dir()

    browser.select([run_of(home, "rank 4").name])
    assert not browser.resume_button.isEnabled()  # a finished run has nothing to resume
    browser.select([killed.name])
    assert browser.resume_button.isEnabled()

    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(browser.resume_button, Qt.MouseButton.LeftButton)
        assert panel.busy() and panel.run_id == killed.name
        assert not browser.resume_button.isEnabled()  # no second resume of the run that is training
    result = done.args[0]
    assert result.status == "finished" and result.run_id == killed.name and result.step == 6
    assert [s.start_step for s in of(metrics(killed), ev.RunStarted)] == [0, KILL_AT_STEP]
    assert panel.charts.loss.x == [1, 2, 3, 4, 5, 6]  # the killed run's history, then the resumed steps

    qtbot.waitUntil(lambda: browser.run(killed.name) is not None and browser.run(killed.name).status == "finished",
                    timeout=10_000)
    assert browser.interrupted() == [] and panel.banner.isHidden()
    panel.shutdown()


def test_a_run_another_process_is_training_is_not_offered_for_resume(qtbot, home, tmp_path, changes):
    """A second window or the CLI training a run: the browser says running, and a resume is refused."""
    from studio.core.errors import StudioError
    from studio.gui.train.run_browser import RunBrowser
    from studio.ml.train.run import run_training

    killed = run_of(home, "killed")
    assert RunDir(killed).holder_file.is_file()  # the SIGKILLed trainer could not remove it: stale
    with held_by_another_process(killed):
        widget = RunBrowser(home, changes)
        qtbot.addWidget(widget)
        with qtbot.waitSignal(widget.loaded, timeout=10_000):
            widget.refresh()
        summary = widget.run(killed.name)
        assert summary.status == "running" and not summary.resumable and widget.interrupted() == []
        with pytest.raises(StudioError, match="another process"):
            run_training(TrainConfig(resume=killed.name), home)
    with qtbot.waitSignal(widget.loaded, timeout=10_000):
        widget.refresh()
    assert widget.run(killed.name).status == "interrupted"  # its holder is gone: resumable again


def test_a_run_trained_elsewhere_shows_up_in_the_runs_tab(qtbot, home, changes):
    """The CLI (here: the same function in this process) trains while the panel is open; the watch on the
    data directory announces the new run and the browser lists it, with no refresh button."""
    from studio.gui.changes import DataDirWatcher
    from studio.gui.train.panel import TrainPanel
    from studio.ml.train.run import run_training

    panel = TrainPanel(home, changes)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.browser.runs is not None, timeout=10_000)
    assert len(panel.browser.runs) == 3
    watcher = DataDirWatcher(home, changes)
    folder = Path(RunDir(run_of(home, "rank 4")).read_config()["data_folder"])
    assert run_training(tiny_config(folder, adapter_name="from the cli", max_steps=2), home).status == "finished"
    qtbot.waitUntil(lambda: "from the cli" in rows(panel.browser), timeout=10_000)
    watcher.stop()
    panel.shutdown()


def test_a_checkpoint_the_user_picks_is_saved_to_the_library(qtbot, home, monkeypatch, changes):
    """Not only the best one: the user picks a kept checkpoint of a finished run and gets a new adapter."""
    from PySide6.QtWidgets import QInputDialog

    from studio.core.library.store import AdapterLibrary
    from studio.core.train import checkpoints
    from studio.gui.train.run_browser import RunBrowser

    widget = RunBrowser(home, changes)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(widget.loaded, timeout=10_000):
        widget.refresh()
    finished = run_of(home, "rank 4")
    assert not widget.save_checkpoint_button.isEnabled()  # nothing selected
    widget.select([finished.name])
    assert widget.save_checkpoint_button.isEnabled()
    kept = checkpoints.kept_steps(RunDir(finished))
    offered: list[list[str]] = []

    def pick_the_first(parent, title, label, items, current, editable):
        offered.append(list(items))
        return items[0], True

    monkeypatch.setattr(QInputDialog, "getItem", pick_the_first)
    library = AdapterLibrary(home)
    before = {entry.id for entry in library.list()}
    with qtbot.waitSignal(changes.changed, timeout=20_000) as created:
        widget.save_checkpoint_button.click()
    assert [label.split()[1] for label in offered[0]] == [str(step) for step in kept] and len(kept) >= 2
    (saved,) = created.args[0].adapters_added
    entry = library.get(saved)
    assert entry.id not in before and entry.manifest.lineage.recipe == {
        "kind": "checkpoint", "run_id": finished.name, "step": kept[0]}
    assert "Saved as" in widget.hint.text() and widget.save_checkpoint_button.isEnabled()
