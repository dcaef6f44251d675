"""The records database: schema and migrations, votes that persist, sessions and messages, prompt
sets, concurrent writers, and the leaderboard per base."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from studio.core.chat.records import SCHEMA_VERSION, Records
from studio.core.errors import StudioError


def test_schema_version_and_migrations(tmp_path: Path):
    db = tmp_path / "studio.db"
    records = Records(db)
    assert records.schema_version == SCHEMA_VERSION >= 1
    versions = [v for v, _, _ in records.migrations()]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "schema_migrations", "sessions", "messages", "votes", "prompt_sets"} <= tables
    # Reopening applies nothing twice.
    again = Records(db)
    assert [v for v, _, _ in again.migrations()] == versions


def test_newer_schema_refused(tmp_path: Path):
    db = tmp_path / "studio.db"
    Records(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StudioError, match="newer"):
        Records(db)


def test_not_a_database_refused(tmp_path: Path):
    db = tmp_path / "studio.db"
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StudioError, match="not a usable SQLite"):
        Records(db)


def test_votes_persist_across_reopen(tmp_path: Path):
    db = tmp_path / "studio.db"
    records = Records(db)
    v = records.add_vote("fp1", "Capital of France?", "base", "geo", "b", blind=True, answer_a="Lyon",
                         answer_b="Paris", settings={"temperature": 0})
    records.add_vote("fp1", "2+2?", "geo", "math", "tie")
    records.add_vote("fp2", "hello", "x", "y", "both_bad")
    del records
    reopened = Records(db)
    all_votes = reopened.votes()
    assert [x.winner for x in all_votes] == ["b", "tie", "both_bad"]
    first = reopened.votes(base="fp1")[0]
    assert first == v
    assert first.blind is True and first.answer_b == "Paris" and first.settings == {"temperature": 0}
    assert [x.id for x in reopened.votes(adapter="geo")] == [1, 2]
    assert reopened.bases() == ["fp1", "fp2"]
    reopened.delete_vote(first.id)
    assert len(reopened.votes(base="fp1")) == 1


def test_bad_votes_refused(tmp_path: Path):
    records = Records(tmp_path / "studio.db")
    with pytest.raises(StudioError, match="Unknown vote"):
        records.add_vote("fp", "p", "x", "y", "x")
    with pytest.raises(StudioError, match="two different"):
        records.add_vote("fp", "p", "x", "x", "a")
    assert records.votes() == []


def test_leaderboard_per_base(tmp_path: Path):
    records = Records(tmp_path / "studio.db")
    for _ in range(8):
        records.add_vote("fp1", "p", "good", "base", "a")
    records.add_vote("fp1", "p", "good", "base", "b")
    for _ in range(5):
        records.add_vote("fp2", "p", "other", "base", "b")
    board = records.leaderboard("fp1", bootstrap_rounds=30)
    assert [r.adapter for r in board] == ["good", "base"]
    assert board[0].wins == 8 and board[0].votes == 9
    assert [r.adapter for r in records.leaderboard("fp2", bootstrap_rounds=0)] == ["base", "other"]
    assert records.leaderboard("nothing") == []


def test_sessions_and_messages(tmp_path: Path):
    db = tmp_path / "studio.db"
    records = Records(db)
    session = records.create_session("First chat", "fp1", panes=[{"adapter": "base"}, {"adapter": "geo"}],
                                     settings={"seed": 1})
    records.add_message(session.id, 0, "user", "Hi")
    records.add_message(session.id, 0, "assistant", "Hello!", adapter="base", meta={"tokens_per_second": 12.5})
    records.add_message(session.id, 1, "user", "Hi")
    records.add_message(session.id, 1, "assistant", "Bonjour", adapter="geo")
    records.update_session(session.id, title="Renamed")
    reopened = Records(db)
    loaded = reopened.session(session.id)
    assert loaded.title == "Renamed" and loaded.panes[1] == {"adapter": "geo"} and loaded.settings == {"seed": 1}
    assert reopened.conversation(session.id, 1) == [{"role": "user", "content": "Hi"},
                                                    {"role": "assistant", "content": "Bonjour"}]
    assert reopened.messages(session.id, 0)[1].meta == {"tokens_per_second": 12.5}
    assert len(reopened.messages(session.id)) == 4
    other = reopened.create_session("Second", "fp2")
    assert [s.id for s in reopened.sessions()][0] == other.id  # most recently updated first
    assert [s.id for s in reopened.sessions(base="fp1")] == [session.id]
    with pytest.raises(StudioError):
        reopened.add_message("missing", 0, "user", "x")
    with pytest.raises(StudioError):
        reopened.add_message(session.id, 0, "robot", "x")
    reopened.delete_session(session.id)
    assert reopened.messages(session.id) == []  # cascaded
    with pytest.raises(StudioError):
        reopened.session(session.id)


def test_prompt_sets(tmp_path: Path):
    records = Records(tmp_path / "studio.db")
    records.save_prompt_set("geo", ["Capital of France?", "  ", "Capital of Spain?"])
    assert records.prompt_set("geo").prompts == ["Capital of France?", "Capital of Spain?"]
    records.save_prompt_set("geo", ["Capital of Italy?"])  # replaces
    records.save_prompt_set("math", ["2+2?"])
    assert [p.name for p in records.prompt_sets()] == ["geo", "math"]
    assert records.prompt_set("geo").prompts == ["Capital of Italy?"]
    with pytest.raises(StudioError):
        records.save_prompt_set("empty", ["", " "])
    records.delete_prompt_set("geo")
    with pytest.raises(StudioError):
        records.prompt_set("geo")


def test_concurrent_writes_from_threads(tmp_path: Path):
    db = tmp_path / "studio.db"
    shared = Records(db)
    session = shared.create_session("busy", "fp")
    errors: list[BaseException] = []
    per_thread = 40

    def writer(name: str, records: Records) -> None:
        try:
            for i in range(per_thread):
                records.add_vote("fp", f"{name}-{i}", name, "base", "a" if i % 2 else "tie")
                records.add_message(session.id, 0, "user", f"{name}-{i}")
        except BaseException as err:  # reported below
            errors.append(err)

    # Two threads sharing one Records object, and a third with its own (another "process" view).
    threads = [threading.Thread(target=writer, args=("t1", shared)),
               threading.Thread(target=writer, args=("t2", shared)),
               threading.Thread(target=writer, args=("t3", Records(db)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    votes = Records(db).votes(base="fp")
    assert len(votes) == 3 * per_thread
    assert len({v.id for v in votes}) == len(votes)
    assert len(shared.messages(session.id)) == 3 * per_thread


def test_cli_votes_and_leaderboard(studio_home, capsys):
    import json

    from studio.cli.main import run

    records = Records(studio_home.database)
    for _ in range(6):
        records.add_vote("fp-one", "Capital of France?", "geo", "base", "a", blind=True)
    records.add_vote("fp-one", "2+2?", "geo", "base", "tie")
    records.add_vote("fp-two", "hi", "x", "y", "b")

    assert run(["votes", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["votes"]) == 8
    assert run(["votes", "--json", "--base", "fp-two"]) == 0  # not a model on disk: taken as a fingerprint
    assert [v["winner"] for v in json.loads(capsys.readouterr().out)["votes"]] == ["b"]
    assert run(["votes", "--adapter", "geo"]) == 0
    assert capsys.readouterr().out.count("Capital of France?") == 6

    assert run(["leaderboard", "--json"]) == 0
    boards = json.loads(capsys.readouterr().out)["leaderboards"]
    assert set(boards) == {"fp-one", "fp-two"}
    assert [r["adapter"] for r in boards["fp-one"]] == ["geo", "base"]
    assert boards["fp-one"][0]["wins"] == 6 and boards["fp-one"][0]["ties"] == 1
    assert run(["leaderboard", "--base", "fp-two"]) == 0
    text = capsys.readouterr().out
    assert "Base fp-two" in text and "y" in text and "fp-one" not in text
