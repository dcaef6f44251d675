"""The Library panel and its detail pane: edits go through the library, delete has undo, drop imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from studio.core.library.store import AdapterLibrary
from studio.core.train.events import Eval, Step
from tests.tiny_model import make_tiny_adapter


@pytest.fixture
def library_with_adapter(studio_home, tiny_base_dir: Path, tmp_path):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "adapter")
    library = AdapterLibrary(studio_home)
    entry = library.import_path(adapter, name="pirate-voice")
    return library, entry, adapter


def make_panel(qtbot, studio_home, changes=None):
    from studio.gui.changes import ChangeNotifier
    from studio.gui.library.panel import LibraryPanel

    panel = LibraryPanel(studio_home, changes or ChangeNotifier())
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.table.rowCount() == len(AdapterLibrary(studio_home).list()), timeout=10_000)
    return panel


def test_detail_pane_edits_name_tags_and_notes(qtbot, studio_home, library_with_adapter, monkeypatch):
    library, entry, _ = library_with_adapter
    panel = make_panel(qtbot, studio_home)
    assert panel.select(entry.id)
    detail = panel.detail
    assert detail.entry.id == entry.id and "pirate-voice" in detail.title.text()
    assert "tiny-llama" in detail.facts.text()

    from PySide6.QtWidgets import QInputDialog

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("sea shanty voice", True))
    with qtbot.waitSignal(panel.refreshed, timeout=10_000):
        detail.ask_rename()
    assert library.get(entry.id).name == "sea shanty voice"
    assert panel.table.item(0, 0).text() == "sea shanty voice"
    assert panel.selected_id() == entry.id  # the selection survives the reload

    detail.tags_edit.setText("pirate, fun")
    with qtbot.waitSignal(panel.refreshed, timeout=10_000):
        detail.save_tags()
    assert sorted(library.get(entry.id).manifest.tags) == ["fun", "pirate"]
    detail.notes_edit.setPlainText("Says arr a lot.")
    with qtbot.waitSignal(panel.refreshed, timeout=10_000):
        detail.save_notes()
    assert library.get(entry.id).manifest.notes == "Says arr a lot."


def test_rename_to_a_taken_name_is_refused_with_a_message(qtbot, studio_home, library_with_adapter, tmp_path,
                                                         tiny_base_dir, monkeypatch):
    library, entry, _ = library_with_adapter
    other = library.import_path(make_tiny_adapter(tiny_base_dir, tmp_path / "b", seed=1), name="other")
    panel = make_panel(qtbot, studio_home)
    panel.select(other.id)
    from PySide6.QtWidgets import QInputDialog, QMessageBox

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("pirate-voice", True))
    shown = []
    monkeypatch.setattr(QMessageBox, "open", lambda box: shown.append(box.text()))
    panel.detail.ask_rename()
    assert sorted(e.name for e in library.list()) == ["other", "pirate-voice"]
    assert len(shown) == 1 and "already called 'pirate-voice'" in shown[0]


def test_loss_thumbnail_from_the_run_metrics(qtbot, studio_home, library_with_adapter):
    library, entry, _ = library_with_adapter
    run_dir = studio_home.runs / "run-1"
    run_dir.mkdir(parents=True)
    events = [Step(step=i, max_steps=4, epoch=i / 4, loss=3.0 - i * 0.5, learning_rate=1e-3, grad_norm=1.0,
                   tokens_per_second=100.0, samples_per_second=1.0, mfu=None, eta_seconds=1.0, micro_batch_size=1)
              for i in range(1, 5)] + [Eval(step=4, eval_loss=1.5)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))

    def with_run(m):
        m.hyperparameters = {"run_id": "run-1", "quant": "none"}
        m.metrics = {"final_train_loss": 1.0, "best_eval_loss": 1.5, "best_step": 4, "steps": 4}

    library._update(entry.id, with_run)
    panel = make_panel(qtbot, studio_home)
    panel.select(entry.id)
    x, y = panel.detail.train_curve.getData()
    assert list(x) == [1, 2, 3, 4] and list(y) == [2.5, 2.0, 1.5, 1.0]
    assert list(panel.detail.eval_curve.getData()[1]) == [1.5]
    assert not panel.detail.plot.isHidden() and panel.detail.no_curve.isHidden()
    assert panel.table.item(0, 6).text() == "1.000"


def test_delete_then_undo_restores_the_adapter(qtbot, studio_home, library_with_adapter):
    library, entry, _ = library_with_adapter
    panel = make_panel(qtbot, studio_home)
    panel.select(entry.id)
    with qtbot.waitSignal(panel.refreshed, timeout=10_000) as blocker:
        panel.delete_selected()
    assert blocker.args == [0] and library.list() == []
    assert not panel.undo_bar.isHidden()
    with qtbot.waitSignal(panel.refreshed, timeout=10_000) as blocker:
        qtbot.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [1] and [e.id for e in library.list()] == [entry.id]
    assert panel.selected_id() == entry.id and panel.undo_bar.isHidden()
    panel.shutdown()


def test_the_trash_lists_deleted_adapters_restores_and_empties(qtbot, studio_home, library_with_adapter, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    library, entry, adapter = library_with_adapter
    second = library.import_path(adapter, name="sea shanty voice")
    panel = make_panel(qtbot, studio_home)
    for adapter_id in (entry.id, second.id):
        panel.select(adapter_id)
        with qtbot.waitSignal(panel.refreshed, timeout=10_000):
            panel.delete_selected()
    assert library.list() == []

    dialog = panel.open_trash()
    qtbot.addWidget(dialog)
    names = [dialog.table.item(row, 0).text() for row in range(dialog.table.rowCount())]
    assert sorted(names) == ["pirate-voice", "sea shanty voice"] and dialog.summary.text().startswith("2 adapter(s)")
    dialog.table.selectRow(names.index("pirate-voice"))
    with qtbot.waitSignal(panel.refreshed, timeout=10_000) as blocker:
        qtbot.mouseClick(dialog.restore_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [1] and [e.id for e in library.list()] == [entry.id] and panel.selected_id() == entry.id
    assert dialog.table.rowCount() == 1 and panel.undo_bar.isHidden()

    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.No)
    dialog.ask_empty()
    assert len(library.trash()) == 1  # asked, and the answer was no
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    dialog.ask_empty()
    assert library.trash() == [] and dialog.summary.text() == "The trash is empty."
    assert not dialog.restore_button.isEnabled() and not dialog.empty_button.isEnabled()
    dialog.grab().save(str(studio_home.root / "trash.png"))
    panel.shutdown()


def test_dropping_a_folder_imports_it(qtbot, studio_home, tiny_base_dir, tmp_path):
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "dropped-adapter")
    panel = make_panel(qtbot, studio_home)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(adapter))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(panel.imported, timeout=20_000) as blocker:
        panel.dropEvent(event)
    qtbot.waitUntil(lambda: panel.selected_id() == blocker.args[0], timeout=10_000)
    assert [e.id for e in AdapterLibrary(studio_home).list()] == [blocker.args[0]]


def test_a_broken_drop_is_refused_and_the_library_is_unchanged(qtbot, studio_home, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    junk = tmp_path / "not-an-adapter"
    junk.mkdir()
    (junk / "readme.txt").write_text("hello")
    panel = make_panel(qtbot, studio_home)
    shown = []
    monkeypatch.setattr(QMessageBox, "open", lambda box: shown.append((box.text(), box.informativeText())))
    panel.import_path(junk)
    qtbot.waitUntil(lambda: bool(shown), timeout=10_000)
    assert "adapter" in shown[0][0].lower() and shown[0][1]
    assert AdapterLibrary(studio_home).list() == []
