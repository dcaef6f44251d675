"""The train-from-folder wizard on the tiny model: the data report and the sample browser (trained
tokens painted green), a folder without usable samples blocks the wizard with an explanation, a
folder dropped on the page is scanned, the estimate follows the rank dial instantly, and the
chosen settings come back as a TrainConfig."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDropEvent
from PySide6.QtWidgets import QWizard

from studio.core.progress import StageProgress
from studio.gui.train.wizard_data import TRAINED_COLOUR


@pytest.fixture
def library_home(studio_home, tiny_base_dir):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    return studio_home


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-data"
    folder.mkdir()
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                      {"role": "assistant", "content": f"The answer is {a + b}."}]})
             for a in range(1, 4) for b in range(1, 4)]
    (folder / "math.jsonl").write_text("\n".join(lines) + "\n{not json\n", encoding="utf-8")
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return folder


@pytest.fixture
def make_wizard(qtbot, library_home):
    from studio.gui.train.wizard import TrainWizard

    def make(**kwargs) -> TrainWizard:
        wizard = TrainWizard(library_home, base="tiny-llama", **kwargs)
        qtbot.addWidget(wizard)
        wizard.show()
        return wizard

    return make


def fragments(document):
    """(text, background colour name) of every text fragment of a QTextDocument."""
    out = []
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.isValid():
                brush = fragment.charFormat().background()
                colour = brush.color().name() if brush.style() != Qt.BrushStyle.NoBrush else ""
                out.append((fragment.text(), colour))
            it += 1
        block = block.next()
    return out


def test_report_table_and_sample_browser_highlight_trained_tokens(qtbot, make_wizard, data_folder):
    wizard = make_wizard(folder=data_folder)
    page = wizard.data_page
    qtbot.waitUntil(lambda: bool(page.rendered), timeout=30_000)
    assert page.isComplete() and wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    rows = {page.table.item(r, 0).text(): [page.table.item(r, c).text() for c in range(6)]
            for r in range(page.table.rowCount())}
    assert rows["math.jsonl"][1:5] == ["jsonl", "messages", "9", "1"]
    assert "invalid JSON" in rows["math.jsonl"][5]
    assert rows["picture.png"][3] == "0" and "unsupported file type" in rows["picture.png"][5]
    assert "9</b> samples" in page.totals.text()

    assert len(page.rendered) == 9 and "1 of 9" in page.sample_label.text()
    green = QColor(TRAINED_COLOUR).name()
    parts = fragments(page.browser.document())
    trained = "".join(text for text, colour in parts if colour == green)
    context = "".join(text for text, colour in parts if colour != green)
    assert trained.startswith("The answer is 2.") and "What is" not in trained
    assert "What is 1 plus 1?" in context and "The answer" not in context
    sample = page.rendered[0]
    assert 0 < sample.trained < sample.tokens

    page.next_button.click()
    assert "2 of 9" in page.sample_label.text()
    assert "What is 1 plus 2?" in page.browser.toPlainText()


def test_a_folder_without_usable_samples_stops_the_wizard(qtbot, make_wizard, tmp_path):
    folder = tmp_path / "nothing-usable"
    folder.mkdir()
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "empty.jsonl").write_text("", encoding="utf-8")
    (folder / "odd.jsonl").write_text(json.dumps({"foo": 1}) + "\n", encoding="utf-8")
    wizard = make_wizard(folder=folder)
    page = wizard.data_page
    qtbot.waitUntil(lambda: page.scan is not None, timeout=30_000)
    assert not page.isComplete()
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    assert "Nothing to train on" in page.status.text() and ".jsonl" in page.status.text()
    assert page.table.rowCount() == 3 and not page.rendered


def test_a_dropped_folder_is_scanned(qtbot, make_wizard, data_folder):
    wizard = make_wizard()
    page = wizard.data_page
    assert page.folder is None and not page.isComplete()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(data_folder))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    page.dropEvent(drop)
    assert page.folder == data_folder and page.folder_edit.text() == str(data_folder)
    qtbot.waitUntil(page.isComplete, timeout=30_000)
    assert page.scan.report.total_samples == 9
    qtbot.waitUntil(lambda: not page.rendering, timeout=30_000)


def test_the_estimate_follows_the_rank_dial_instantly(qtbot, make_wizard, data_folder):
    wizard = make_wizard(folder=data_folder)
    qtbot.waitUntil(wizard.data_page.isComplete, timeout=30_000)
    wizard.next()
    settings = wizard.settings_page
    assert settings.last is not None
    trainable, peaks, worst = [], [], 0.0
    for rank in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        started = time.perf_counter()
        settings.rank_slider.setValue(rank)  # the signal re-estimates synchronously
        worst = max(worst, (time.perf_counter() - started) * 1000)
        assert settings.rank_spin.value() == rank and settings.advanced.alpha.value() == 2 * rank
        trainable.append(settings.last.trainable_params)
        peaks.append(settings.last.predicted_peak_bytes)
        assert f"{settings.last.trainable_params:,} parameters" in settings.params_label.text()
    assert trainable == sorted(trainable) and len(set(trainable)) == len(trainable)
    assert trainable[-1] == 256 * trainable[0]
    assert peaks == sorted(peaks)
    assert worst < 50, f"a rank change took {worst:.1f} ms"  # generous: a shared CI CPU, widgets redrawn
    assert settings.last_estimate_ms < 5
    assert " of " in settings.memory_bar.format() and settings.verdict_label.text()
    for label in settings.preset_memory.values():
        assert "MiB" in label.text() or "GiB" in label.text()

    before = settings.last.predicted_peak_bytes
    settings.advanced.seq_len.setValue(4096)
    assert settings.last.predicted_peak_bytes > before
    settings.advanced.targets.setCurrentText("attention")
    assert settings.last.trainable_params < trainable[-1]
    qtbot.waitUntil(lambda: not wizard.data_page.rendering, timeout=30_000)


def test_the_chosen_settings_come_back_as_a_train_config(qtbot, make_wizard, data_folder):
    wizard = make_wizard(folder=data_folder)
    qtbot.waitUntil(wizard.data_page.isComplete, timeout=30_000)
    wizard.next()
    settings = wizard.settings_page
    settings.preset_buttons["style"].setChecked(True)
    assert settings.rank_spin.value() == 8 and settings.advanced.targets.currentText() == "attention"
    settings.method_combo.setCurrentIndex(2)  # DoRA keeps the chosen base weights
    settings.advanced.quant.setCurrentIndex(settings.advanced.quant.findData("8bit"))
    settings.advanced_button.click()
    settings.advanced.max_steps.setValue(12)
    settings.advanced.targets.setCurrentText("q_proj, v_proj")
    settings.advanced.early_stopping.setValue(3)
    settings.advanced.keep_checkpoints.setValue(4)
    settings.advanced.long_samples.setCurrentIndex(settings.advanced.long_samples.findData("drop"))
    settings.advanced.probe_prompts.setPlainText("What is 2 plus 2?\n\n  Who are you?  \n")
    wizard.next()
    assert wizard.review_page.name_edit.text() == "my-data"
    wizard.review_page.tags_edit.setText(" a, b ,, c")
    config = wizard.config()
    assert (config.data_folder, config.base, config.preset, config.method, config.quant) == (
        str(data_folder), "tiny-llama", "style", "dora", "8bit")
    assert (config.rank, config.alpha, config.max_steps, config.targets) == (8, 16.0, 12, ("q_proj", "v_proj"))
    assert (config.early_stopping_patience, config.keep_checkpoints, config.long_samples) == (3, 4, "drop")
    assert config.probe_prompts == ("What is 2 plus 2?", "Who are you?")
    assert config.adapter_name == "my-data" and config.tags == ("a", "b", "c")  # the run publishes them
    review = dict(settings.summary())
    assert review["Early stopping"] == "after 3 evaluations without a better eval loss"
    assert review["Probe prompts"] == "2 of yours"
    qtbot.waitUntil(lambda: not wizard.data_page.rendering, timeout=30_000)


def test_the_sample_browser_reports_the_default_models_first_conversion(studio_home, tiny_base_dir, monkeypatch):
    from studio.core.basemodels import DEFAULT_BASE_ID
    from studio.gui.train.wizard_data import render_samples
    from studio.ml.base import default_model

    def convert(data, progress=None):  # the conversion itself: tests/e2e/test_default_model.py
        progress(StageProgress("convert", 0.5, "Dequantizing the weights…"))
        return tiny_base_dir

    monkeypatch.setattr(default_model, "ensure_default_model", convert)
    heard: list[str] = []
    assert render_samples(studio_home, DEFAULT_BASE_ID, [], emit=heard.append) == []
    assert heard == ["Preparing the default model (first use only, 50%): Dequantizing the weights…"]
