"""The notice of what changed, and what a look at the data directory says another process changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from studio.core.changes import Changes, DiskState
from studio.core.library.store import AdapterLibrary


def test_a_notice_says_what_changed_and_merges():
    nothing = Changes()
    assert not nothing and not nothing.adapters and not nothing.trash
    deleted = Changes(adapters_deleted={"a"})
    assert deleted.adapters and deleted.trash and not deleted.runs
    assert deleted.adapters_deleted == frozenset({"a"})  # any set given is kept frozen
    both = deleted | Changes(runs_finished=["r"], votes_cast=1) | Changes(votes_cast=2)
    assert both.adapters_deleted == {"a"} and both.runs_finished == {"r"} and both.votes_cast == 3
    assert Changes(trash_changed=True).trash and not Changes(trash_changed=True).adapters


def test_a_look_at_the_data_directory_tells_what_another_process_did(studio_home, tiny_base_dir: Path, tmp_path):
    from tests.tiny_model import make_tiny_adapter

    folder = make_tiny_adapter(tiny_base_dir, tmp_path / "adapter")
    library = AdapterLibrary(studio_home)
    before = DiskState.read(studio_home)
    assert not DiskState.read(studio_home).changes_since(before)

    kept = library.import_path(folder, name="kept")
    gone = library.import_path(folder, name="gone")
    (studio_home.runs / "20260101-000000-run").mkdir()
    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    added = DiskState.read(studio_home).changes_since(before)
    assert added.adapters_added == {kept.id, gone.id} and added.runs_started == {"20260101-000000-run"}
    assert added.base_models_added == {"tiny-llama"} and not added.adapters_edited and not added.trash

    middle = DiskState.read(studio_home)
    library.rename(kept.id, "renamed")
    library.delete(gone.id)
    (studio_home.runs / "20260101-000000-run" / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    later = DiskState.read(studio_home).changes_since(middle)
    assert later.adapters_edited == {kept.id} and later.adapters_deleted == {gone.id} and later.trash_changed
    assert later.runs_updated == {"20260101-000000-run"} and not later.adapters_added


def test_a_notice_less_what_the_app_said_keeps_only_the_news():
    """What a look at the disk reads the app's own operations as is dropped; what another process did stays."""
    on_disk = Changes(adapters_added={"restored", "from-cli"}, adapters_deleted={"cli-deleted"},
                      runs_started={"cli-run"}, runs_updated={"app-run"}, base_models_added={"m", "cli-m"},
                      trash_changed=True)
    app = Changes(adapters_restored={"restored"}, runs_finished={"app-run"}, base_models_added={"m"}, votes_cast=1)
    assert on_disk.without(app) == Changes(adapters_added={"from-cli"}, adapters_deleted={"cli-deleted"},
                                           runs_started={"cli-run"}, base_models_added={"cli-m"})
    assert not on_disk.without(on_disk) and Changes(votes_cast=2).without(Changes(votes_cast=1)).votes_cast == 1
    assert Changes(trash_changed=True).without(Changes(votes_cast=1)).trash_changed
