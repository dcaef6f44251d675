"""The Blend panel on a tiny real base: preview and save a blend (recipe in the manifest), remake it
from its recipe, refuse incompatible choices with the methods that would work, cancel, and survive
a failing job. Every test waits for the panel's workers to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_adapter


@pytest.fixture(scope="module")
def adapter_folders(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blend-panel")
    return {
        "alpha": make_tiny_adapter(tiny_base_dir, root / "alpha", rank=4, seed=1),
        "beta": make_tiny_adapter(tiny_base_dir, root / "beta", rank=4, seed=2),
        "wide": make_tiny_adapter(tiny_base_dir, root / "wide", rank=8, seed=3),
        "qk": make_tiny_adapter(tiny_base_dir, root / "qk", rank=4, seed=4, targets=("q_proj", "k_proj")),
    }


@pytest.fixture
def library(studio_home, tiny_base_dir, adapter_folders):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    lib = AdapterLibrary(studio_home)
    for name, folder in adapter_folders.items():
        lib.import_path(folder, name=name)
    return lib


@pytest.fixture
def panel(qtbot, studio_home, library, changes):
    from studio.gui.blend.panel import BlendPanel

    widget = BlendPanel(studio_home, changes)
    qtbot.addWidget(widget)
    widget.resize(1000, 640)
    qtbot.waitUntil(lambda: not widget.busy() and widget.parents.table.rowCount() == 4, timeout=20_000)
    yield widget
    widget.shutdown()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=60_000)
    assert widget.work.session is None


def ids(library) -> dict[str, str]:
    return {e.name: e.id for e in library.list()}


def test_preview_then_save_records_the_recipe(qtbot, panel, library, changes):
    panel.set_parents({"alpha": 1.0, "beta": -0.5})
    assert panel.chosen_weights() == {ids(library)["alpha"]: 1.0, ids(library)["beta"]: -0.5}
    assert panel.method_combo.currentData() == "exact"
    assert panel.check_label.text().startswith("✓")
    assert "the exact weighted sum of the updates" in panel.check_label.text()
    assert "Exact weighted sum" in panel.method_help.text()
    assert not panel.density_spin.isEnabled() and not panel.rank_spin.isEnabled()

    panel.prompt_edit.setText("Hello, how are you today?")
    panel.preview_button.click()
    assert panel.busy() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert panel.last_error is None, panel.status_label.text()
    assert "Blend ready (exact, rank 8" in panel.status_label.text()
    assert panel.answer_view.toPlainText()
    blended = panel.work.blended

    panel.name_edit.setText("alpha-minus-beta")
    panel.tags_edit.setText("blend, test")
    with qtbot.waitSignal(changes.changed, timeout=60_000) as created:
        panel.save_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=20_000)
    assert panel.work.blended is blended  # saved the previewed blend, not a new one
    (saved,) = created.args[0].adapters_added
    entry = library.get(saved)
    assert entry.name == "alpha-minus-beta" and entry.manifest.source == "blend"
    assert entry.manifest.tags == ["blend", "test"]
    recipe = entry.manifest.lineage.recipe
    assert recipe["parents"] == [ids(library)["alpha"], ids(library)["beta"]]
    assert recipe["weights"] == [1.0, -0.5] and recipe["method"] == "exact" and recipe["exact"] is True
    assert entry.manifest.rank == 8
    qtbot.waitUntil(lambda: panel.parents.table.rowCount() == 5, timeout=20_000)  # re-read from the notice

    # Remake from recipe: pick the saved blend, load its recipe into a cleared form.
    panel.set_parents({})
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("svd"))
    row = next(r for r in range(panel.parents.table.rowCount()) if panel.parents.table.item(r, 0).text() == entry.name)
    panel.parents.table.selectRow(row)
    assert panel.remake_button.isEnabled()
    panel.remake_button.click()
    assert panel.method_combo.currentData() == "exact"
    assert panel.chosen_weights() == {ids(library)["alpha"]: 1.0, ids(library)["beta"]: -0.5}
    assert panel.name_edit.text() == "alpha-minus-beta-remake"


def test_parents_chosen_before_the_list_loads(qtbot, studio_home, library, changes):
    from studio.gui.blend.panel import BlendPanel

    early = BlendPanel(studio_home, changes)
    qtbot.addWidget(early)
    early.set_parents({ids(library)["alpha"]: 0.5, "beta": 2.0, "gone": 1.0})
    qtbot.waitUntil(lambda: not early.reload.running, timeout=20_000)
    assert early.chosen_weights() == {ids(library)["alpha"]: 0.5, ids(library)["beta"]: 2.0}
    assert "Not in the library: gone" in early.status_label.text()
    assert early.name_edit.text() == "blend-alpha-beta" and early.preview_button.isEnabled()
    early.shutdown()


def test_svd_and_pruning_knobs_follow_the_method(panel):
    panel.set_parents({"alpha": 1.0, "beta": 1.0})
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("ties_svd"))
    assert panel.density_spin.isEnabled() and panel.rank_spin.isEnabled() and not panel.seed_spin.isEnabled()
    assert panel.rank_spin.value() == 4
    spec = panel.spec()
    assert spec.method == "ties_svd" and spec.rank == 4 and spec.density == pytest.approx(0.5)
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("dare_linear"))
    assert panel.seed_spin.isEnabled() and not panel.rank_spin.isEnabled()
    assert "random" in panel.method_help.text()
    # peft's linear/ties/dare mix A and B separately: never sold as the weighted sum (issue 6).
    for method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        panel.method_combo.setCurrentIndex(panel.method_combo.findData(method))
        assert "not the exact weighted sum" in panel.check_label.text(), method
        assert "sqrt" in panel.method_help.text() or "separately" in panel.method_help.text(), method
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("cat"))
    assert "✓ Can blend: rank 8, the exact weighted sum" in panel.check_label.text()


def test_incompatible_choices_are_refused_with_suggestions(panel):
    panel.set_parents({"alpha": 1.0, "wide": 1.0})
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("linear"))
    text = panel.check_label.text()
    assert text.startswith("✗") and "equal rank" in text and "exact" in text
    suggested = text.split("Use one of: ")[1].split(" (")[0].split(", ")
    assert "exact" in suggested and "svd" in suggested and "linear" not in suggested
    assert not panel.preview_button.isEnabled() and not panel.save_button.isEnabled()
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("svd"))
    assert panel.check_label.text().startswith("✓") and panel.preview_button.isEnabled()

    panel.set_parents({"alpha": 1.0, "qk": 1.0})
    assert "different modules" in panel.check_label.text() and not panel.preview_button.isEnabled()
    panel.set_parents({"alpha": 1.0})
    assert "at least two" in panel.check_label.text()
    panel.set_parents({"alpha": 1.0, "beta": 0.0})
    panel.parents.table.cellWidget(0, 1).setValue(0.0)
    assert "not all zero" in panel.check_label.text()


def test_cancel_stops_the_preview_and_the_panel_stays_usable(qtbot, panel, library):
    panel.set_parents({"alpha": 1.0, "beta": 1.0})
    panel.preview_button.click()
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert panel.status_label.text() == "Cancelled. Nothing was saved."
    assert panel.last_error is None and panel.answer_view.toPlainText() == ""
    assert len(library.list()) == 4
    assert panel.preview_button.isEnabled() and not panel.cancel_button.isEnabled()

    panel.preview_button.click()  # still usable: a full preview, then a cancelled re-blend
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert panel.answer_view.toPlainText() and panel.work.session is not None
    panel.parents.table.cellWidget(1, 1).setValue(0.25)
    assert panel.answer_view.styleSheet() == "color: gray"  # the answer is from the old recipe
    panel.preview_button.click()
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert panel.status_label.text() == "Cancelled. Nothing was saved." and panel.last_error is None
    assert panel.work.blended is None and panel.work.session is not None  # the loaded parents are kept


def test_the_work_module_needs_neither_qt_nor_torch():
    code = ("import sys, studio.gui.blend.work\n"
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'torch'))], 'Qt or torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_failing_blend_shows_an_error_and_the_panel_stays_usable(qtbot, panel, library):
    panel.set_parents({"alpha": 1.0, "beta": 1.0})
    (library.get("beta").path / "adapter_model.safetensors").unlink()  # vanishes after the check
    panel.preview_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    box = panel.last_error
    assert box is not None and box.isVisible() and "adapter_model.safetensors" in box.text()
    box.close()
    assert panel.status_label.text().startswith("Failed:")
    assert panel.preview_button.isEnabled() and panel.work.session is None
    panel.refresh()
    qtbot.waitUntil(lambda: not panel.reload.running, timeout=20_000)
    assert panel.chosen_weights() == {ids(library)["alpha"]: 1.0}  # beta is no longer usable
