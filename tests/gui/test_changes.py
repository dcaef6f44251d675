"""One app-wide notice of what changed: in the real main window on the tiny model and a real library, a
training run finished in the Train panel, an import, a blend saved and a delete each show up at once in
the Chat panel's adapter pickers, the Blend panel and the Library, with no restart and no refresh
button; "Compare with base" after the run reaches a comparison; and an adapter the CLI imports from
another process appears too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt

from studio.core.library.store import AdapterLibrary
from studio.core.paths import REPO_ROOT
from studio.core.train.config import TrainConfig
from tests.tiny_model import make_tiny_adapter

SHOWN_MS = 10_000  # "at once": a worker's re-read of the library, not a restart


@pytest.fixture(scope="module")
def adapter_folders(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("changes")
    return {name: make_tiny_adapter(tiny_base_dir, root / name, seed=seed)
            for seed, name in enumerate(("imported", "from-the-cli"), start=1)}


@pytest.fixture
def window(qtbot, studio_home, tiny_base_dir):
    from studio.gui.main_window import WELCOME_DONE_KEY, MainWindow
    from studio.gui.settings_dialog import BASE_MODEL_KEY

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    QSettings().setValue(WELCOME_DONE_KEY, True)
    QSettings().setValue(BASE_MODEL_KEY, "tiny-llama")
    main = MainWindow(studio_home)
    qtbot.addWidget(main)
    main.show()
    qtbot.waitUntil(lambda: not main.chat_panel.refreshing and main.chat_panel.base_id() == "tiny-llama",
                    timeout=SHOWN_MS)
    yield main
    qtbot.waitUntil(lambda: not any(panel.busy() for panel in main.panels()), timeout=60_000)
    main.close()


def shown_everywhere(window) -> dict[str, set[str]]:
    """The adapter ids each screen offers now: the chat panes' pickers, the blend parents, the library."""
    from studio.gui.chat.work import BASE

    chat = window.chat_panel
    pickers = [{pane.combo.itemData(i) for i in range(pane.combo.count())} - {BASE, "__blend__"}
               for pane in chat.panes]
    assert all(picker == pickers[0] for picker in pickers)
    parents = window.blend_panel.parents.table
    blend = {parents.item(row, 0).data(Qt.ItemDataRole.UserRole) for row in range(parents.rowCount()) if not parents.isRowHidden(row)}
    table = window.library_panel.table
    library = {table.item(row, 0).data(Qt.ItemDataRole.UserRole) for row in range(table.rowCount())}
    return {"chat": pickers[0], "prompt sets": {chat.prompt_sets.side_a.itemData(i)
                                                for i in range(chat.prompt_sets.side_a.count())} - {BASE},
            "blend": blend, "library": library}


def wait_shown(qtbot, window, expected: set[str]) -> None:
    qtbot.waitUntil(lambda: all(ids == expected for ids in shown_everywhere(window).values()), timeout=SHOWN_MS)


def test_every_change_shows_up_in_every_screen_at_once(qtbot, window, studio_home, adapter_folders, math_folder,
                                                        tmp_path):
    from studio.gui.main_window import CHAT

    # A run finished in the Train panel: its adapter is offered everywhere, and Compare with base works.
    train = window.train_panel
    config = TrainConfig(data_folder=str(math_folder), base="tiny-llama", adapter_name="math",
                         quant="none", rank=4, alpha=8.0, targets=["q_proj", "v_proj"], max_steps=2,
                         micro_batch_size=2, grad_accum=1, seq_len=64, eval_every=0, checkpoint_every=0,
                         sample_every=0, learning_rate=5e-3, device="cpu")
    with qtbot.waitSignal(train.run_finished, timeout=120_000) as done:
        train.start_run(config)
    result = done.args[0]
    assert result.status == "finished", result.message
    trained = result.adapter_id
    wait_shown(qtbot, window, {trained})
    assert window.train_panel.browser.run(result.run_id).status == "finished"
    train.compare_button.click()
    assert window.stack.currentIndex() == CHAT
    qtbot.waitUntil(lambda: [p.binding().ref for p in window.chat_panel.panes] == [trained, "base"], timeout=SHOWN_MS)

    # An import from the Library panel.
    library = window.library_panel
    with qtbot.waitSignal(library.imported, timeout=SHOWN_MS) as imported:
        library.import_path(adapter_folders["imported"])
    other = imported.args[0]
    wait_shown(qtbot, window, {trained, other})

    # A blend of the two saved in the Blend panel.
    blend = window.blend_panel
    blend.set_parents({trained: 1.0, other: 0.5})
    blend.name_edit.setText("math and more")
    assert blend.save_button.isEnabled(), blend.check_label.text()
    blend.save_button.click()
    qtbot.waitUntil(lambda: not blend.busy(), timeout=60_000)
    assert blend.last_error is None, blend.status_label.text()
    blended = AdapterLibrary(studio_home).get("math and more").id
    wait_shown(qtbot, window, {trained, other, blended})

    # A delete in the Library: gone from every picker (and in the trash's list).
    assert library.select(other)
    library.delete_selected()
    wait_shown(qtbot, window, {trained, blended})

    # The CLI imports an adapter from another process while the window is open.
    env = {**os.environ, "LORA_STUDIO_HOME": str(studio_home.root), "PYTHONPATH": str(REPO_ROOT)}
    done_cli = subprocess.run([sys.executable, "-m", "studio", "import", str(adapter_folders["from-the-cli"])],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done_cli.returncode == 0, done_cli.stderr
    from_cli = {e.id for e in AdapterLibrary(studio_home).list()} - {trained, blended}
    assert len(from_cli) == 1
    wait_shown(qtbot, window, {trained, blended, *from_cli})


def test_the_cli_renaming_or_tagging_an_adapter_shows_while_the_app_stays_inactive(qtbot, qapp, window,
                                                                                   studio_home, adapter_folders):
    """A rename or a tag rewrites the manifest inside the adapter's own folder: the watch covers each
    adapter folder too, so the window follows without waiting to become the active application."""
    entry = AdapterLibrary(studio_home).import_path(adapter_folders["imported"], name="before")  # seen by the watch
    qtbot.waitUntil(lambda: window.library_panel.table.rowCount() == 1, timeout=SHOWN_MS)
    notices = []
    window.changes.changed.connect(notices.append)
    AdapterLibrary(studio_home).rename(entry.id, "after")  # what `lora-studio rename` does
    qtbot.waitUntil(lambda: window.library_panel.table.item(0, 0).text() == "after", timeout=SHOWN_MS)
    qtbot.waitUntil(lambda: window.chat_panel.panes[0].names.get(entry.id) == "after", timeout=SHOWN_MS)
    assert [(n.adapters_edited, n.adapters_added) for n in notices] == [({entry.id}, frozenset())]  # once
    AdapterLibrary(studio_home).tag(entry.id, add=["from-cli"])  # what `lora-studio tag` does
    qtbot.waitUntil(lambda: len(notices) == 2, timeout=SHOWN_MS)
    assert notices[1].adapters_edited == {entry.id}


def test_the_cli_renaming_an_adapter_shows_when_the_app_is_active_again(qtbot, qapp, window, studio_home,
                                                                        adapter_folders):
    """Where folder events do not arrive (a network drive), the window looks again when the application
    becomes active (the user comes back from the terminal)."""
    entry = AdapterLibrary(studio_home).import_path(adapter_folders["imported"], name="before")  # seen by the watch
    qtbot.waitUntil(lambda: window.library_panel.table.rowCount() == 1, timeout=SHOWN_MS)
    window.watcher.fs.removePaths(window.watcher.fs.directories())  # no folder events from here on
    notices = []
    window.changes.changed.connect(notices.append)
    AdapterLibrary(studio_home).rename(entry.id, "after")
    qapp.applicationStateChanged.emit(Qt.ApplicationState.ApplicationActive)
    qtbot.waitUntil(lambda: window.library_panel.table.item(0, 0).text() == "after", timeout=SHOWN_MS)
    assert [(n.adapters_edited, n.adapters_added) for n in notices] == [({entry.id}, frozenset())]  # once


def test_a_cli_change_is_announced_when_the_app_announces_something_else_first(qtbot, studio_home, adapter_folders):
    """The CLI deletes an adapter and, before the folder event's debounce ends, the user votes: the vote's
    notice must not swallow the delete (the library would list the adapter for good)."""
    from studio.core.changes import Changes
    from studio.gui.changes import ChangeNotifier, DataDirWatcher

    library = AdapterLibrary(studio_home)
    gone = library.import_path(adapter_folders["imported"], name="x")
    own = library.import_path(adapter_folders["imported"], name="mine")
    notifier = ChangeNotifier()
    watcher = DataDirWatcher(studio_home, notifier)
    notices: list[Changes] = []
    notifier.changed.connect(notices.append)
    library.delete(gone.id)  # what `lora-studio delete` does in another process
    notifier.announce(Changes(votes_cast=1))  # no event loop ran: the debounce has not fired
    library.delete(own.id)  # the app's own delete, announced: no news when the folder event comes
    notifier.announce(Changes(adapters_deleted={own.id}))
    qtbot.waitUntil(lambda: len(notices) == 3, timeout=SHOWN_MS)
    assert notices[2] == Changes(adapters_deleted={gone.id}, trash_changed=True)
    qtbot.wait(2 * 300)  # the folder events of both deletes end in no further notice
    assert len(notices) == 3 and not watcher.look()
    watcher.stop()
