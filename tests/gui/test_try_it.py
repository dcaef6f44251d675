"""The first-run "Try it" path on the real default model: the welcome page's button trains a small
adapter on the shipped sample dataset, the adapter lands in the library, and the comparison with the
base opens in the chat panel, which offers the new adapter (told by the app's notice of what changed, not
by a restart) and answers with both panes. A tiny number of steps keeps it short; learning itself is
proven by tests/e2e/test_train_e2e.py with the same settings and 60 steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from studio.core.library.store import AdapterLibrary


@pytest.mark.slow
def test_try_it_trains_on_the_sample_and_opens_the_comparison(qtbot, studio_home, default_base_dir: Path):
    from studio.core.dataset.scan import scan_folder
    from studio.core.train.demo import DEMO_ADAPTER_NAME, SAMPLE_DATASET
    from studio.gui.main_window import CHAT, MainWindow

    shutil.copytree(default_base_dir, studio_home.models / default_base_dir.name)
    window = MainWindow(studio_home)
    qtbot.addWidget(window)
    chat = window.chat_panel
    window.demo_steps = 3
    window.show()
    assert window.welcome is not None
    qtbot.mouseClick(window.welcome.try_button, Qt.MouseButton.LeftButton)
    assert window.welcome is None and window.train_panel.busy()

    qtbot.waitUntil(lambda: not window.pending_demo_run, timeout=300_000)
    entries = AdapterLibrary(studio_home).list()
    assert [e.name for e in entries] == [DEMO_ADAPTER_NAME]
    assert entries[0].manifest.metrics["steps"] == 3
    sample_count = scan_folder(SAMPLE_DATASET).report.totals()["samples"]
    assert entries[0].manifest.dataset["samples"] == sample_count  # every sample file was read
    assert window.sidebar.currentRow() == CHAT
    qtbot.waitUntil(lambda: [p.binding().ref for p in chat.panes] == [entries[0].id, "base"], timeout=30_000)
    assert chat.panes[0].display_name() == DEMO_ADAPTER_NAME
    chat.work.quant = "none"  # the CPU path without bitsandbytes
    chat.settings_bar.set_values({"temperature": 0.0, "max_new_tokens": 8})
    assert chat.ask("Who are you?")
    qtbot.waitUntil(lambda: not chat.busy(), timeout=120_000)
    assert all(p.last_finished is not None and p.last_finished.text for p in chat.panes), \
        [p.status.text() for p in chat.panes]
    qtbot.waitUntil(lambda: not window.train_panel.busy(), timeout=30_000)
    window.close()
