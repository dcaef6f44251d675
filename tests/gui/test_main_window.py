"""The first window: it opens offscreen, lists the real library, and shows before torch is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_window_lists_library_and_switches_panels(qtbot, studio_home, tiny_base_dir: Path, tmp_path):
    from studio.gui.main_window import MainWindow
    from tests.tiny_model import make_tiny_adapter

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "adapter")
    from studio.core.library.store import AdapterLibrary

    AdapterLibrary(studio_home).import_path(adapter, name="pirate-voice")
    window = MainWindow(studio_home)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.library_panel.refreshed, timeout=10_000) as blocker:
        window.library_panel.refresh()
    assert blocker.args == [1]
    table = window.library_panel.table
    assert table.item(0, 0).text() == "pirate-voice"
    window.sidebar.setCurrentRow(3)
    assert window.stack.currentIndex() == 3
    qtbot.waitUntil(lambda: window.device_label.text() != "Device: detecting…", timeout=60_000)
    assert "CPU" in window.device_label.text() or "GPU" in window.device_label.text() or \
        "NVIDIA" in window.device_label.text()


def test_window_shows_before_torch_is_imported(studio_home, tmp_path):
    code = (
        "import sys\n"
        "from studio.gui.app import make_app\n"
        "from studio.core.paths import data_dir\n"
        "from studio.gui.main_window import MainWindow\n"
        "app = make_app([])\n"
        "window = MainWindow(data_dir())\n"
        "window.show()\n"
        "app.processEvents()\n"
        "print('visible', window.isVisible(), 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen",
                                 "XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert "visible True False" in result.stdout, result.stdout + result.stderr


def test_welcome_appears_on_first_start_only(qtbot, studio_home):
    from studio.gui.main_window import MainWindow

    first = MainWindow(studio_home)
    qtbot.addWidget(first)
    assert first.welcome is not None
    first.show()
    qtbot.waitExposed(first)
    assert first.root_stack.currentWidget() is first.welcome
    first.welcome.dismissed.emit()
    assert first.welcome is None and first.stack.currentIndex() == 0
    assert first.root_stack.currentIndex() == 0
    second = MainWindow(studio_home)
    qtbot.addWidget(second)
    assert second.welcome is None
    # Later, the File menu brings the page back: the route to a bigger base model (folder, cache, download).
    menu_action = next(action for action in second.menuBar().actions()[0].menu().actions()
                       if action.text().startswith("&Base model"))
    second.show()
    qtbot.waitExposed(second)
    menu_action.trigger()
    assert second.welcome is not None and second.root_stack.currentWidget() is second.welcome
    # its probes run now too (the window's first show is past): the machine report and the cache list
    qtbot.waitUntil(lambda: "…" not in second.welcome.machine_label.text(), timeout=60_000)
    second.welcome.base_model_chosen.emit("/models/Qwen2.5-7B-Instruct")
    assert second.base_label.text() == "Base: /models/Qwen2.5-7B-Instruct"


def test_settings_change_the_base_label_and_the_theme_goes_back_to_the_system_look(qtbot, studio_home, monkeypatch):
    from PySide6.QtWidgets import QApplication, QDialog

    from studio.gui.main_window import MainWindow
    from studio.gui.settings_dialog import SettingsDialog, apply_theme

    app = QApplication.instance()
    style, window_colour = app.style().name(), app.palette().window().color().name()
    window = MainWindow(studio_home)
    qtbot.addWidget(window)

    def accept_with_a_new_base(dialog: SettingsDialog) -> int:
        dialog.base_edit.setText("my-base")
        dialog.theme_combo.setCurrentText("dark")
        dialog.accept()
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(SettingsDialog, "exec", accept_with_a_new_base)
    window.open_settings()
    assert window.base_label.text() == "Base: my-base"
    assert app.palette().window().color().name() == "#2b2b2e"
    apply_theme(app, "system")
    assert (app.style().name(), app.palette().window().color().name()) == (style, window_colour)


def _drop(widget, path: Path) -> None:
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)


def test_drops_on_the_window_import_adapters_and_train_on_data_folders(qtbot, studio_home, tiny_base_dir, tmp_path):
    from PySide6.QtCore import QSettings

    from studio.gui.main_window import CHAT, LIBRARY, TRAIN, WELCOME_DONE_KEY, MainWindow
    from studio.gui.settings_dialog import BASE_MODEL_KEY
    from tests.tiny_model import make_tiny_adapter

    QSettings().setValue(WELCOME_DONE_KEY, True)
    QSettings().setValue(BASE_MODEL_KEY, "tiny-llama")  # the wizard renders samples with its tokenizer
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    adapter = make_tiny_adapter(tiny_base_dir, tmp_path / "dropped-adapter")
    data_folder = tmp_path / "notes"
    data_folder.mkdir()
    (data_folder / "faq.txt").write_text("Some text to learn from.\n" * 20)

    window = MainWindow(studio_home)
    qtbot.addWidget(window)
    window.show()
    window.show_panel(CHAT)
    with qtbot.waitSignal(window.library_panel.imported, timeout=30_000):
        _drop(window, adapter)
    assert window.stack.currentIndex() == LIBRARY
    qtbot.waitUntil(lambda: window.library_panel.table.rowCount() == 1, timeout=10_000)  # refreshed in a job

    _drop(window, data_folder)
    assert window.stack.currentIndex() == TRAIN
    wizard = window.train_panel.wizard
    assert wizard is not None and wizard.data_page.folder == data_folder
    qtbot.waitUntil(lambda: wizard.data_page.scan is not None, timeout=30_000)  # the scan of the dropped folder
    assert wizard.data_page.scan.report.totals()["samples"] > 0
    qtbot.waitUntil(lambda: "Loading" not in wizard.data_page.sample_label.text(), timeout=30_000)
    wizard.reject()
    window.close()


def test_about_names_the_versions_without_importing_torch(studio_home):
    code = ("import sys; from studio.core.paths import data_dir; from studio.gui.main_window import about_text; "
            "text = about_text(data_dir()); assert 'torch 2.' in text and 'peft ' in text, text; "
            "assert 'torch' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
