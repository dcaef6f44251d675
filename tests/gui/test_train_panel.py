"""The Train panel on the tiny model: the wizard drives a real run to the library, the dashboard's
charts hold one point per event, Pause and Resume through the buttons, a failed run shows its
error, an interrupted run is offered for resuming after a restart, closing mid-run stops cleanly,
and the run browser overlays and diffs runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QWizard

from studio.core.library.store import AdapterLibrary
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir
from studio.gui.settings_dialog import BASE_MODEL_KEY

RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def library_home(studio_home, tiny_base_dir):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    return studio_home


def tiny_config(folder: Path, **overrides) -> TrainConfig:
    values = dict(data_folder=str(folder), base="tiny-llama", adapter_name="math", quant="none", rank=4, alpha=8.0,
                  max_steps=4, micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=2, checkpoint_every=2,
                  sample_every=2, sample_max_new_tokens=4, learning_rate=5e-3, memory_every=1, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def metrics(home, run_id: str) -> list:
    return RunDir.of(home, run_id).events()


def of(events, cls) -> list:
    return [e for e in events if isinstance(e, cls)]


@pytest.fixture
def panel(qtbot, library_home, changes):
    from studio.gui.train.panel import TrainPanel

    widget = TrainPanel(library_home, changes)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: widget.browser.runs is not None)
    yield widget
    widget.shutdown()


def test_wizard_to_a_finished_run_fills_the_dashboard(qtbot, panel, library_home, math_folder, changes):
    QSettings().setValue(BASE_MODEL_KEY, "tiny-llama")
    created: list[str] = []
    compared: list[str] = []
    changes.changed.connect(lambda c: created.extend(c.adapters_added))
    panel.compare_requested.connect(compared.append)
    wizard = panel.start_wizard(math_folder)
    data_page, settings = wizard.data_page, wizard.settings_page
    qtbot.waitUntil(lambda: data_page.isComplete() and bool(data_page.rendered), timeout=30_000)
    wizard.next()
    settings.method_combo.setCurrentIndex(1)  # LoRA on a full-precision base
    settings.advanced_button.click()
    assert settings.advanced.isVisible()
    settings.rank_slider.setValue(4)
    settings.advanced.max_steps.setValue(4)
    settings.advanced.seq_len.setValue(64)
    settings.advanced.micro_batch.setValue(2)
    settings.advanced.grad_accum.setValue(1)
    settings.advanced.eval_every.setValue(2)
    settings.advanced.checkpoint_every.setValue(2)
    settings.advanced.sample_every.setValue(2)
    settings.advanced.learning_rate.setValue(5e-3)
    settings.advanced.device_combo.setCurrentText("cpu")
    wizard.next()
    wizard.review_page.name_edit.setText("Math from the wizard")
    wizard.review_page.tags_edit.setText("math, wizard")
    assert "tiny-llama" in wizard.review_page.summary.toPlainText()

    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        wizard.button(QWizard.WizardButton.FinishButton).click()
        assert panel.busy()
    result = finished.args[0]
    assert result.status == "finished", result.message
    assert not panel.busy()

    events = metrics(library_home, result.run_id)
    charts = panel.charts
    assert charts.loss.x == [1, 2, 3, 4] and len(charts.smoothed) == 4
    assert len(charts.learning_rate) == len(charts.tokens_per_second) == 4
    assert len(charts.eval_loss) == len(of(events, ev.Eval)) >= 2
    assert len(charts.memory_used) == len(of(events, ev.Memory)) >= 1
    assert charts.memory_total and charts.memory_total > 0
    assert panel.samples.topLevelItemCount() == len(of(events, ev.Sample)) >= 2
    assert panel.events_seen == len(events)
    assert panel.progress.value() == 4

    entry = AdapterLibrary(library_home).get(result.adapter_id)
    assert entry.name == "Math from the wizard" and set(entry.manifest.tags) == {"math", "wizard"}
    assert entry.manifest.rank == 4
    assert created == [result.adapter_id]
    assert panel.compare_button.isEnabled()
    qtbot.mouseClick(panel.compare_button, Qt.MouseButton.LeftButton)
    assert compared == [result.adapter_id]

    # A second run with another rank; the browser overlays both and diffs their settings.
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        panel.start_run(tiny_config(math_folder, rank=8, alpha=16.0, adapter_name="math r8"))
    browser = panel.browser  # it listed the run when it started, and again when it finished
    qtbot.waitUntil(lambda: [r.status for r in browser.runs or []] == ["finished", "finished"], timeout=10_000)
    browser.select([r.run_id for r in browser.runs])
    assert len(browser.overlay.curves) == 2
    diff = {browser.diff.item(row, 0).text(): (browser.diff.item(row, 1).text(), browser.diff.item(row, 2).text())
            for row in range(browser.diff.rowCount())}
    assert diff["rank"] == ("8", "4") and "max_steps" not in diff


def test_pause_and_resume_through_the_buttons(qtbot, panel, library_home, math_folder):
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as paused:
        panel.start_run(tiny_config(math_folder, max_steps=4))
        assert panel.pause_button.isEnabled() and not panel.resume_button.isEnabled()
        qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)  # stops at the end of step 1
        assert not panel.pause_button.isEnabled()
    first = paused.args[0]
    assert first.status == "stopped" and first.step == 1 and first.checkpoint is not None
    assert "Paused at step 1" in panel.title.text()
    assert panel.resume_button.isEnabled() and panel.new_button.isEnabled()

    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as resumed:
        qtbot.mouseClick(panel.resume_button, Qt.MouseButton.LeftButton)
        assert panel.busy()
    second = resumed.args[0]
    assert second.status == "finished" and second.run_id == first.run_id
    assert panel.charts.loss.x == [1, 2, 3, 4]  # the replayed first step, then the resumed ones
    started = of(metrics(library_home, first.run_id), ev.RunStarted)
    assert [s.start_step for s in started] == [0, 1]


def test_a_failed_run_shows_its_error_and_the_panel_stays_usable(qtbot, panel, math_folder, monkeypatch):
    from studio.ml.train.run import OOM_TEST_ENV

    monkeypatch.setenv(OOM_TEST_ENV, "1")  # the training process inherits it
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        panel.start_run(tiny_config(math_folder, micro_batch_size=1))
    result = done.args[0]
    assert result.status == "failed"
    box = panel.error_box
    assert box is not None and box.isVisible()
    assert "Out of memory" in box.text() and "seq_len" in box.informativeText()
    assert "Failed" in panel.title.text() and "failed" in panel.log_view.toPlainText()
    assert not panel.busy() and panel.new_button.isEnabled() and not panel.stop_button.isEnabled()
    box.close()


def test_an_interrupted_run_is_offered_after_a_restart(qtbot, panel, library_home, math_folder, changes):
    from studio.gui.train.panel import TrainPanel

    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS) as paused:
        panel.start_run(tiny_config(math_folder, max_steps=3))
        panel.pause()
    run_id = paused.args[0].run_id
    # The app died right after the checkpoint: the run's last line (Stopped) was never written.
    path = RunDir.of(library_home, run_id).metrics
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["type"] == "stopped"
    path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")

    restarted = TrainPanel(library_home, changes)
    qtbot.addWidget(restarted)
    qtbot.waitUntil(lambda: restarted.browser.runs is not None)
    assert [r.status for r in restarted.browser.runs] == ["interrupted"]
    assert not restarted.banner.isHidden() and "did not finish" in restarted.banner.text.text()
    with qtbot.waitSignal(restarted.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(restarted.banner.resume_button, Qt.MouseButton.LeftButton)
    assert done.args[0].status == "finished" and done.args[0].run_id == run_id
    assert restarted.banner.isHidden()
    restarted.shutdown()


def test_shutdown_during_a_run_stops_at_a_step_and_waits(qtbot, panel, library_home, math_folder):
    panel.start_run(tiny_config(math_folder, max_steps=200, eval_every=0, checkpoint_every=0, sample_every=0))
    qtbot.waitUntil(lambda: len(panel.charts.loss) >= 1, timeout=RUN_TIMEOUT_MS)
    assert panel.busy()
    panel.shutdown(timeout_s=60)
    assert panel._done.is_set()  # the worker has returned
    run_id = panel.run_id
    last = metrics(library_home, run_id)[-1]
    assert isinstance(last, ev.Stopped) and last.checkpoint is not None and last.step < 200
    assert not panel.charts.timer.isActive()
