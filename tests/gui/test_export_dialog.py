"""The Export dialog on a tiny real base: a peft export and a merge are written and their smoke test
reported; a failing smoke test shows an error and keeps nothing; Cancel stops a merge. Every test
waits for the dialog's worker to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_adapter


def answers_something(answer) -> str | None:
    """A smoke check for the tiny random model, which never learned to stop at end of turn."""
    return None if answer.token_ids and answer.text else "it generated nothing"


@pytest.fixture(scope="module")
def adapter_folder(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tiny_base_dir, tmp_path_factory.mktemp("export-dialog") / "a", rank=4, seed=5)


@pytest.fixture
def dialog(qtbot, studio_home, tiny_base_dir, adapter_folder, tmp_path, changes):
    from studio.core.library.store import AdapterLibrary
    from studio.gui.library.export_dialog import ExportDialog

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    entry = AdapterLibrary(studio_home).import_path(adapter_folder, name="Pirate Voice")
    widget = ExportDialog(studio_home, entry.id, changes)
    qtbot.addWidget(widget)
    widget.folder_edit.setText(str(tmp_path / "exports"))
    yield widget
    widget.shutdown()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=60_000)


def pick(dialog, fmt: str) -> None:
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData(fmt))


def run(qtbot, dialog) -> None:
    assert dialog.export_button.isEnabled(), dialog.space_label.text()
    dialog.export_button.click()
    assert dialog.busy() and dialog.cancel_button.text() == "Cancel"
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=60_000)


def test_peft_export_reports_its_smoke_test(qtbot, dialog, tmp_path):
    pick(dialog, "peft")
    assert dialog.name_edit.text() == "pirate-voice"
    assert not dialog.dtype_combo.isVisibleTo(dialog) and "free on that disk" in dialog.space_label.text()
    dialog.smoke_check = answers_something
    run(qtbot, dialog)
    assert dialog.last_error is None, dialog.status_label.text()
    out = tmp_path / "exports" / "pirate-voice"
    assert dialog.outcome.path == out
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    text = dialog.result_label.text()
    assert text.startswith("Smoke test passed") and "Asked: What is the capital of France?" in text
    assert dialog.outcome.smoke.answer in text
    assert "Written there" in dialog.space_label.text() and not dialog.export_button.isEnabled()
    dialog.name_edit.setText("")  # an existing folder other than the last export is refused
    dialog.name_edit.setText("pirate-voice")
    dialog.outcome = None
    dialog.update_space()
    assert "already exists" in dialog.space_label.text() and not dialog.export_button.isEnabled()


def test_merge_writes_a_standalone_model(qtbot, dialog, tmp_path):
    pick(dialog, "merge")
    dialog.dtype_combo.setCurrentText("fp32")
    assert dialog.name_edit.text() == "pirate-voice-merged-fp32"
    assert dialog.dtype_combo.isVisibleTo(dialog) and "Needs about" in dialog.space_label.text()
    dialog.smoke_check = answers_something
    run(qtbot, dialog)
    assert dialog.last_error is None, dialog.status_label.text()
    out = tmp_path / "exports" / "pirate-voice-merged-fp32"
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float32"
    assert list(out.glob("*.safetensors")) and (out / "tokenizer_config.json").exists()
    assert dialog.result_label.text().startswith("Smoke test passed")
    assert dialog.progress.value() == 1000 or not dialog.progress.isVisible()


def test_failed_smoke_test_shows_an_error_and_keeps_nothing(qtbot, dialog, tmp_path):
    pick(dialog, "zip")
    assert dialog.name_edit.text() == "pirate-voice.zip"
    # The default check: the random tiny model never stops at end of turn, so the export must fail.
    run(qtbot, dialog)
    box = dialog.last_error
    assert box is not None and "smoke test" in box.text()
    box.close()
    assert not (tmp_path / "exports" / "pirate-voice.zip").exists()
    assert dialog.status_label.text().startswith("Failed:") and dialog.result_label.text() == ""
    dialog.smoke_check = answers_something  # still usable: the same export now passes
    run(qtbot, dialog)
    assert (tmp_path / "exports" / "pirate-voice.zip").is_file()


def test_cancel_stops_a_merge_and_writes_nothing(qtbot, dialog, tmp_path):
    pick(dialog, "merge")
    dialog.smoke_check = answers_something
    dialog.show()
    dialog.export_button.click()
    dialog.cancel_button.click()  # while running, the button cancels rather than closes
    assert dialog.isVisible()
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=60_000)
    assert dialog.status_label.text() == "Cancelled. Nothing was written."
    assert dialog.last_error is None and dialog.outcome is None
    assert not (tmp_path / "exports" / "pirate-voice-merged-bf16").exists()
    assert dialog.cancel_button.text() == "Close" and dialog.export_button.isEnabled()
    dialog.cancel_button.click()
    assert not dialog.isVisible()


def test_closing_while_running_stops_first(qtbot, dialog, tmp_path):
    pick(dialog, "ollama")
    assert dialog.from_edit.isVisibleTo(dialog) and dialog.name_edit.text() == "pirate-voice-ollama"
    dialog.smoke_check = answers_something
    dialog.show()
    dialog.export_button.click()
    dialog.close()  # refused while running: it stops the export, then closes
    assert dialog.isVisible()
    qtbot.waitUntil(lambda: not dialog.busy() and not dialog.isVisible(), timeout=60_000)
    assert dialog.last_error is None and not (tmp_path / "exports" / "pirate-voice-ollama").exists()


def test_gguf_lora_export_is_read_back(qtbot, dialog, tmp_path):
    pytest.importorskip("studio.ml.export.gguf")
    pick(dialog, "gguf")
    assert [dialog.dtype_combo.itemText(i) for i in range(dialog.dtype_combo.count())] == ["f32", "f16", "bf16"]
    dialog.dtype_combo.setCurrentText("f16")
    assert dialog.name_edit.text() == "pirate-voice-f16.gguf"
    run(qtbot, dialog)
    assert dialog.last_error is None, dialog.status_label.text()
    assert (tmp_path / "exports" / "pirate-voice-f16.gguf").is_file()
    assert dialog.result_label.text().startswith("GGUF LoRA read back:")


def test_resize_makes_a_smaller_library_adapter(qtbot, dialog, studio_home, changes):
    pytest.importorskip("studio.ml.blend.resize")
    from studio.core.library.store import AdapterLibrary

    pick(dialog, "resize")
    assert not dialog.folder_row.isVisibleTo(dialog) and dialog.rank_spin.isVisibleTo(dialog)
    assert dialog.rank_spin.maximum() == 3 and dialog.name_edit.text() == "Pirate Voice r2"
    with qtbot.waitSignal(changes.changed, timeout=60_000) as created:
        run(qtbot, dialog)
    (made,) = created.args[0].adapters_added
    entry = AdapterLibrary(studio_home).get(made)
    assert entry.name == "Pirate Voice r2" and entry.manifest.rank == 2
    assert "rank 4 → 2" in dialog.result_label.text() and "energy kept" in dialog.result_label.text()


def test_gguf_model_merge_reports_the_smoke_test(qtbot, dialog, tmp_path):
    pytest.importorskip("studio.ml.export.gguf")
    pick(dialog, "gguf_model")
    assert dialog.name_edit.text() == "pirate-voice-merged-f16.gguf" and "Needs about" in dialog.space_label.text()
    dialog.smoke_check = answers_something
    run(qtbot, dialog)
    assert dialog.last_error is None, dialog.status_label.text()
    assert (tmp_path / "exports" / "pirate-voice-merged-f16.gguf").is_file()
    text = dialog.result_label.text()
    assert text.startswith("GGUF model read back:") and "Asked: What is the capital of France?" in text


def test_the_formats_module_needs_neither_qt_nor_torch():
    code = ("import sys, studio.gui.library.export_formats as f\n"
            "assert {x.key for x in f.available_formats()} >= {'merge', 'peft', 'zip', 'ollama'}\n"
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'torch'))], 'Qt or torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
