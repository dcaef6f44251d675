"""The Chat panel on a tiny real base with real adapters: panes stream one prompt at once (a live
blend among them), a blind vote lands in studio.db and on the leaderboard, blind labels are
shuffled by the injected random generator, transcripts export as Markdown and JSON, a prompt set
runs and is voted pairwise, sessions reopen, Stop all and shutdown end generation. Every test
waits for the panel's workers to end."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from studio.core.progress import StageProgress
from tests.tiny_model import make_tiny_adapter

SEED = 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def printable_base(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base with the embedding rows of tokens that decode to no printable text (lone UTF-8
    bytes) zeroed: its random answers are then text, which streams piece by piece instead of being
    held back as incomplete characters until the end."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_base_dir, tmp_path_factory.mktemp("printable") / "tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    unprintable = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    tensors = load_file(folder / "model.safetensors")
    tensors["model.embed_tokens.weight"][unprintable] = 0.0  # tied: their logits become 0
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def adapter_folders(printable_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-panel")
    return {name: make_tiny_adapter(printable_base, root / name, seed=seed)
            for seed, name in enumerate(("alpha", "beta"), start=1)}


@pytest.fixture
def library(studio_home, printable_base, adapter_folders):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(printable_base, studio_home.models / "tiny-llama")
    lib = AdapterLibrary(studio_home)
    return {name: lib.import_path(folder, name=name).id for name, folder in adapter_folders.items()}


def make_panel(qtbot, studio_home, seed: int = SEED, changes=None):
    from studio.gui.changes import ChangeNotifier
    from studio.gui.chat.panel import ChatPanel

    panel = ChatPanel(studio_home, changes or ChangeNotifier(), rng=random.Random(seed))
    panel.work.quant = "none"
    qtbot.addWidget(panel)
    panel.resize(1200, 760)
    qtbot.waitUntil(lambda: not panel.busy() and bool(panel.entries), timeout=20_000)
    panel.settings_bar.set_values({"temperature": 0.0, "max_new_tokens": 16, "seed": 3})
    return panel


def close(qtbot, panel) -> None:
    panel.shutdown()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert panel.work.engine is None and not panel.flush_timer.isActive()


@pytest.fixture
def panel(qtbot, studio_home, library):
    widget = make_panel(qtbot, studio_home)
    yield widget
    close(qtbot, widget)


def ask_and_wait(qtbot, panel, prompt: str) -> None:
    assert panel.ask(prompt)
    assert panel.busy() and panel.stop_button.isEnabled() and not panel.send_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert all(p.last_finished is not None for p in panel.panes), [p.status.text() for p in panel.panes]


def test_panes_stream_one_prompt_at_once(qtbot, panel, library):
    panel.open_comparison([library["alpha"], "base"])
    assert panel.base_id() == "tiny-llama"
    assert [p.binding().ref for p in panel.panes] == [library["alpha"], "base"]
    blend = panel.add_pane()
    blend.combo.setCurrentIndex(blend.combo.findData("__blend__"))
    blend.set_binding(blend.binding().__class__("blend", {library["alpha"]: 0.5, library["beta"]: 1.5}))
    assert blend.binding().weights == {library["alpha"]: 0.5, library["beta"]: 1.5}
    with qtbot.waitSignal(panel.blend_requested) as requested:
        blend.open_blend_button.click()
    assert requested.args[0] == {library["alpha"]: 0.5, library["beta"]: 1.5}

    finished: list[int] = []
    panel.answer_finished.connect(finished.append)
    ask_and_wait(qtbot, panel, "Hello there, how are you?")
    assert sorted(finished) == [0, 1, 2]
    for pane in panel.panes:
        done = pane.last_finished
        assert done.tokens > 1 and pane.pieces > 1  # many token events, not one block at the end
        assert done.text and done.text in pane.view.toPlainText()
        assert "tok/s" in pane.status.text()
        assert pane.conversation[-2:] == [{"role": "user", "content": "Hello there, how are you?"},
                                          {"role": "assistant", "content": done.text}]
    assert panel.panes[2].last_finished.adapter == "__pane2__"  # the live blend, nothing written
    assert len(panel.work.engine.loaded_adapters) == 2
    assert panel.panes[0].last_finished.text != panel.panes[1].last_finished.text
    assert not panel.vote_bar.buttons["A"].isEnabled()  # three panes: no A/B vote


def test_blind_vote_is_recorded_and_ranked(qtbot, panel, library, studio_home, tmp_path):
    from studio.core.chat.records import Records

    panel.open_comparison([library["alpha"], library["beta"]], blind=True)
    assert panel.blind and len(panel.panes) == 2 and not panel.add_button.isEnabled()
    assert [p.title.text() for p in panel.panes] == ["<b>A</b>", "<b>B</b>"]
    assert not panel.panes[0].combo.isVisibleTo(panel)
    ask_and_wait(qtbot, panel, "Which is better?")
    assert panel.vote_bar.buttons["A"].isEnabled()

    hidden_md = panel.transcript("md")
    assert "alpha" not in hidden_md and "beta" not in hidden_md and "Which is better?" in hidden_md
    md_path = panel.export_transcript(tmp_path / "chat.md")
    assert md_path.read_text() == hidden_md

    a_ref = panel.assignment["A"]
    panel.vote_bar.buttons["A"].click()
    votes = Records(studio_home.database).votes()
    assert len(votes) == 1
    vote = votes[0]
    assert vote.blind and vote.winner == "a" and vote.adapter_a == a_ref and vote.prompt == "Which is better?"
    assert vote.answer_a == panel.panes[0].last_finished.text
    assert vote.base == panel.work.engine.fingerprint
    a_name = "alpha" if a_ref == library["alpha"] else "beta"
    assert a_name in panel.panes[0].title.text()  # revealed
    assert f"A was {a_name}" in panel.vote_bar.result.text()
    assert not panel.vote_bar.buttons["A"].isEnabled()  # one vote per answer

    data = json.loads(panel.export_transcript(tmp_path / "chat.json").read_text())
    assert [p["adapter"] for p in data["panes"]] == [panel.assignment["A"], panel.assignment["B"]]
    assert data["panes"][0]["messages"][0] == {"role": "user", "content": "Which is better?"}
    assert data["panes"][1]["messages"][1]["content"] == panel.panes[1].last_finished.text

    panel.tabs.setCurrentWidget(panel.leaderboard)
    qtbot.waitUntil(lambda: not panel.leaderboard.busy() and panel.leaderboard.table.rowCount() == 2,
                    timeout=20_000)
    board = panel.leaderboard
    assert board.table.item(0, 1).text() == a_name and board.ratings[0].wins == 1
    assert board.table.item(0, 6).text() == "1" and board.base_combo.currentText() == "tiny-llama"


def test_blind_labels_are_shuffled_by_the_injected_rng(qtbot, panel, library):
    from studio.core.chat.ratings import blind_assignment

    pair = [library["alpha"], library["beta"]]
    panel.open_comparison(pair, blind=True)
    orders = [tuple(p.binding().ref for p in panel.panes)]
    for _ in range(11):
        panel.new_chat(reshuffle=True)
        orders.append(tuple(p.binding().ref for p in panel.panes))
    assert set(orders) == {tuple(pair), tuple(reversed(pair))}  # both ways round happen

    twin = random.Random(SEED)  # the same seed gives the same draws
    expected, current = [], pair
    for _ in range(12):
        drawn = blind_assignment(current, twin)
        current = [drawn["A"], drawn["B"]]
        expected.append(tuple(current))
    assert orders == expected


def test_prompt_set_runs_and_is_voted_pairwise(qtbot, panel, library, studio_home):
    from studio.core.chat.records import Records

    records = Records(studio_home.database)
    view = panel.prompt_sets
    panel.tabs.setCurrentWidget(view)
    view.set_combo.setEditText("smoke")
    view.prompts_edit.setPlainText("First question?\n\nSecond question?\nThird question?\n")
    view.save_button.click()
    assert records.prompt_set("smoke").prompts == ["First question?", "Second question?", "Third question?"]
    view.prompts_edit.clear()
    view.load_set("smoke")
    assert view.prompts() == ["First question?", "Second question?", "Third question?"]

    view.choose_sides(library["alpha"], library["beta"])
    view.run_button.click()
    assert panel.busy()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert [r.prompt for r in view.results] == view.prompts() and view.current == 0
    assert all(set(r.answers) == {library["alpha"], library["beta"]} for r in view.results)
    assert view.view_titles["A"].text() == "<b>A</b>"  # blind until voted
    for choice in ("A", "tie", "both_bad"):
        view.vote_buttons[choice].click()
    votes = records.votes()
    assert [v.winner for v in votes] == [
        "a" if view.results[0].assignment["A"] == votes[0].adapter_a else "b", "tie", "both_bad"]
    assert all(v.blind and {v.adapter_a, v.adapter_b} == {library["alpha"], library["beta"]} for v in votes)
    assert [v.prompt for v in votes] == view.prompts()
    assert not view.vote_buttons["A"].isEnabled() and "you voted: Both bad." in view.reveal.text()
    qtbot.waitUntil(lambda: not panel.leaderboard.busy() and len(panel.leaderboard.ratings) == 2, timeout=20_000)


def test_session_is_saved_and_reopened(qtbot, panel, library, studio_home):
    panel.open_comparison([library["beta"], "base"])
    ask_and_wait(qtbot, panel, "Tell me a story.")
    ask_and_wait(qtbot, panel, "And then?")  # a follow-up: each pane answers its own history
    conversations = [list(p.conversation) for p in panel.panes]
    assert [len(c) for c in conversations] == [4, 4]
    assert conversations[0][2] == {"role": "user", "content": "And then?"}
    session_id = panel.session_id

    other = make_panel(qtbot, studio_home)
    try:
        other.tabs.setCurrentWidget(other.sessions)
        assert other.sessions.list.count() == 1
        assert "Tell me a story." in other.sessions.list.item(0).text()
        other.open_session(session_id)
        assert [p.conversation for p in other.panes] == conversations
        assert [p.binding().ref for p in other.panes] == [library["beta"], "base"]
        assert conversations[0][3]["content"] in other.panes[0].view.toPlainText()
        assert other.settings_bar.values()["max_new_tokens"] == 16
        ask_and_wait(qtbot, other, "One more?")
        assert len(other.panes[1].conversation) == 6
    finally:
        close(qtbot, other)


def test_stop_all_and_shutdown_end_generation(qtbot, panel, library):
    panel.open_comparison([library["alpha"], library["beta"]])
    panel.settings_bar.set_values({"temperature": 1.0, "max_new_tokens": 400, "seed": 1})
    assert panel.ask("Go on forever.")
    qtbot.waitUntil(lambda: any(p.pieces > 0 for p in panel.panes), timeout=60_000)
    panel.stop_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert {p.last_finished.stop_reason for p in panel.panes} == {"stopped"}
    assert all(p.last_finished.tokens < 400 for p in panel.panes)
    assert panel.send_button.isEnabled() and not panel.flush_timer.isActive()

    assert panel.ask("Again, forever.")
    qtbot.waitUntil(lambda: any(p.pieces > 0 for p in panel.panes), timeout=60_000)
    panel.shutdown()  # stops the answers, waits for the worker, frees the model
    assert panel.work.engine is None
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)


def test_bases_the_adapters_record_outside_models_are_offered_by_their_ids(studio_home, tiny_base_dir, tmp_path,
                                                                          monkeypatch):
    """An adapter on a Hugging Face cache model can be chatted with: its base is listed by its repo id."""
    from huggingface_hub import constants

    from studio.core.basemodels import inspect_base_model
    from studio.core.library.manifest import AdapterManifest
    from studio.core.library.store import AdapterLibrary
    from studio.gui.chat.compare import fits
    from studio.gui.chat.panel import scan
    from tests.tiny_model import make_hf_cache

    cache = tmp_path / "hf-cache"
    make_hf_cache(cache, "someone/tiny-chat", tiny_base_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    made = make_tiny_adapter(tiny_base_dir, tmp_path / "made", base_name="someone/tiny-chat")
    AdapterLibrary(studio_home).add_new(made, AdapterManifest(id="", name="cached", base_model="someone/tiny-chat"))
    entries, bases, base_of = scan(studio_home)
    fingerprint = inspect_base_model(tiny_base_dir).fingerprint
    assert ("someone/tiny-chat", fingerprint) in bases
    assert [e.name for e in entries if fits(e, "someone/tiny-chat", fingerprint, base_of)] == ["cached"]


def test_an_adapter_without_a_fingerprint_is_offered_for_the_base_it_names_only(studio_home, tiny_base_dir, tmp_path):
    """Two bases with the same folder name under different owners: an adapter that records one of them (by
    id or by its folder's path) and no fingerprint is offered for that one, not for its namesake; one whose
    base is not here is offered for no base but the exact id it records."""
    import dataclasses
    import shutil

    from studio.core.library.manifest import AdapterManifest, write_manifest
    from studio.core.library.store import AdapterLibrary
    from studio.gui.chat.compare import fits
    from studio.gui.chat.panel import scan

    for owner in ("orgA", "orgB"):
        shutil.copytree(tiny_base_dir, studio_home.models / f"{owner}--Llama-3-8B")
    library = AdapterLibrary(studio_home)
    recorded = {"by id": "orgA/Llama-3-8B", "by path": str(studio_home.models / "orgA--Llama-3-8B"),
                "elsewhere": "orgC/Llama-3-8B"}
    for name, base in recorded.items():
        made = make_tiny_adapter(tiny_base_dir, tmp_path / name, base_name=base)
        entry = library.add_new(made, AdapterManifest(id="", name=name, base_model=base))
        write_manifest(entry.path, dataclasses.replace(entry.manifest, base_fingerprint=""))  # an older studio's
    entries, bases, base_of = scan(studio_home)
    assert len(entries) == 3 and all(not e.manifest.base_fingerprint for e in entries)
    offered = {b: sorted(e.name for e in entries if fits(e, b, f, base_of)) for b, f in bases}
    assert offered["orgA/Llama-3-8B"] == ["by id", "by path"] and offered["orgB/Llama-3-8B"] == []
    assert "orgC/Llama-3-8B" not in offered and [e.name for e in entries if fits(e, "orgC/Llama-3-8B", "", base_of)] \
        == ["elsewhere"]


def test_the_default_models_first_conversion_shows_its_progress(studio_home, tiny_base_dir, monkeypatch):
    """The first chat with the default base converts it (~20 s): the status line says so as it goes."""
    from studio.core.basemodels import DEFAULT_BASE_ID
    from studio.gui.chat.work import ChatWork, EngineLoading
    from studio.ml.base import default_model

    def convert(data, progress=None):  # the conversion itself: tests/e2e/test_default_model.py
        progress(StageProgress("convert", 0.25, "Dequantizing the weights…"))
        return tiny_base_dir

    monkeypatch.setattr(default_model, "ensure_default_model", convert)
    seen: list = []
    assert ChatWork(studio_home).base(DEFAULT_BASE_ID, seen.append).path == tiny_base_dir
    assert seen == [EngineLoading(DEFAULT_BASE_ID, "Preparing the default model (first use only, 25%): "
                                                   "Dequantizing the weights…")]


def test_a_pane_whose_adapter_is_deleted_says_it_now_answers_with_the_base(qtbot, studio_home, library):
    from studio.core.changes import Changes
    from studio.core.library.store import AdapterLibrary
    from studio.gui.changes import ChangeNotifier

    changes = ChangeNotifier()
    panel = make_panel(qtbot, studio_home, changes=changes)
    panel.open_comparison([library["alpha"], "base"])
    qtbot.waitUntil(lambda: panel.panes[0].binding().ref == library["alpha"], timeout=20_000)
    AdapterLibrary(studio_home).delete(library["alpha"])
    changes.announce(Changes(adapters_deleted=frozenset({library["alpha"]})))
    qtbot.waitUntil(lambda: library["alpha"] not in {ref for _, ref in panel.choices()}, timeout=20_000)
    assert panel.panes[0].binding().ref == "base"
    assert "alpha left the library" in panel.status.text() and "base model" in panel.status.text()
    close(qtbot, panel)
