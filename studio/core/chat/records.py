"""The studio's SQLite records: chat sessions and their messages, A/B votes, prompt sets.

`Records(db_path)` opens (or creates) `studio.db` in WAL mode and brings its schema up to date by
applying the numbered migrations it has not seen yet (each in one transaction, recorded in the
`schema_migrations` table, with `schema_version` in the `meta` table). Every call opens its own
short-lived connection, and writes from this process are serialised by a lock, so one Records
object can be shared by the GUI thread and workers. `leaderboard(base)` turns the votes of one
base model into ratings (studio.core.chat.ratings).

Plain sqlite3.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.core.chat.ratings import WINNERS, Rating, rate
from studio.core.errors import StudioError, disk_full_as_message, disk_full_error

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "sessions, messages, votes, prompt sets", """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            base TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            panes TEXT NOT NULL DEFAULT '[]',
            settings TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            pane INTEGER NOT NULL DEFAULT 0,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            adapter TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX messages_by_session ON messages(session_id, pane, id);
        CREATE TABLE votes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            base TEXT NOT NULL,
            prompt TEXT NOT NULL,
            adapter_a TEXT NOT NULL,
            adapter_b TEXT NOT NULL,
            winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
            blind INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL,
            session_id TEXT,
            answer_a TEXT NOT NULL DEFAULT '',
            answer_b TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX votes_by_base ON votes(base);
        CREATE TABLE prompt_sets (
            name TEXT PRIMARY KEY,
            prompts TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
    """),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Session:
    id: str
    title: str
    base: str
    created: str
    updated: str
    panes: list[dict[str, Any]] = field(default_factory=list)  # e.g. [{"adapter": "base"}, {"adapter": "x"}]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MessageRecord:
    id: int
    session_id: str
    pane: int
    role: str
    content: str
    adapter: str
    created: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Vote:
    id: int
    base: str  # the base model's fingerprint (or id)
    prompt: str
    adapter_a: str
    adapter_b: str
    winner: str  # a | b | tie | both_bad
    blind: bool
    created: str
    session_id: str | None = None
    answer_a: str = ""
    answer_b: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: list[str]
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_full(err: BaseException) -> bool:
    """SQLite's 'database or disk is full' (SQLITE_FULL), raised for a full disk or quota."""
    return isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class Records:
    """The records database. Thread-safe: one connection per call, writes serialised."""

    def __init__(self, db_path: Path | str) -> None:
        self.path = Path(db_path)
        self._write_lock = threading.Lock()
        created = not self.path.exists()
        try:
            with disk_full_as_message(self.path.parent, "create the records database"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._migrate()
        except BaseException as err:
            if created:  # a database that could not even be set up is removed, not left as a 0-byte file
                for leftover in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            if _is_full(err) or _is_full(err.__cause__):  # also under the 'not usable' StudioError
                raise disk_full_error(self.path.parent, "create the records database" if created
                                      else f"update {self.path.name}") from err
            raise

    # ------------------------------------------------------------ connections and schema

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as err:
            raise StudioError(f"The records database {self.path} could not be opened: {err}.") from err
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: no corruption on a crash, far fewer fsyncs
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StudioError(f"{self.path} is not a usable SQLite database: {err}.",
                              hint="Move it aside; the studio creates a fresh one.") from err
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
        with self._write_lock, self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._write_lock, self._connect() as conn:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)")
            except sqlite3.DatabaseError as err:
                raise StudioError(f"{self.path} is not a usable SQLite database: {err}.",
                                  hint="Move it aside; the studio creates a fresh one.") from err
            current = self._version(conn)
            if current > SCHEMA_VERSION:
                raise StudioError(f"{self.path} was written by a newer LoRA Studio (schema {current}, "
                                  f"this one knows {SCHEMA_VERSION}).", hint="Update LoRA Studio.")
            for version, name, script in MIGRATIONS:
                # BEGIN IMMEDIATE takes the write lock first, so two processes opening a fresh
                # database cannot both apply the same migration.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                        conn.execute("COMMIT")
                        continue
                    for statement in (s.strip() for s in script.split(";")):
                        if statement:
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                                 (version, name, _now()))
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                                 (str(version),))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    @property
    def schema_version(self) -> int:
        with self._connect() as conn:
            return self._version(conn)

    def migrations(self) -> list[tuple[int, str, str]]:
        """(version, name, applied time) of every applied migration."""
        with self._connect() as conn:
            return [tuple(r) for r in conn.execute("SELECT version, name, applied FROM schema_migrations "
                                                   "ORDER BY version")]

    # ------------------------------------------------------------ sessions and messages

    def create_session(self, title: str = "", base: str = "", panes: Sequence[dict[str, Any]] = (),
                       settings: dict[str, Any] | None = None) -> Session:
        now = _now()
        session = Session(uuid.uuid4().hex[:12], title, base, now, now, [dict(p) for p in panes], dict(settings or {}))
        with self._write() as conn:
            conn.execute("INSERT INTO sessions (id, title, base, created, updated, panes, settings) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (session.id, title, base, now, now, json.dumps(session.panes), json.dumps(session.settings)))
        return session

    def update_session(self, session_id: str, *, title: str | None = None,
                       panes: Sequence[dict[str, Any]] | None = None,
                       settings: dict[str, Any] | None = None) -> Session:
        self.session(session_id)
        with self._write() as conn:
            if title is not None:
                conn.execute("UPDATE sessions SET title = ? WHERE id = ?", (title, session_id))
            if panes is not None:
                conn.execute("UPDATE sessions SET panes = ? WHERE id = ?", (json.dumps(list(panes)), session_id))
            if settings is not None:
                conn.execute("UPDATE sessions SET settings = ? WHERE id = ?", (json.dumps(settings), session_id))
            conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (_now(), session_id))
        return self.session(session_id)

    def session(self, session_id: str) -> Session:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise StudioError(f"No chat session {session_id!r} is saved.")
        return _session(row)

    def sessions(self, base: str | None = None) -> list[Session]:
        """Saved sessions, most recently updated first."""
        query, args = "SELECT * FROM sessions", ()
        if base is not None:
            query, args = query + " WHERE base = ?", (base,)
        with self._connect() as conn:
            return [_session(r) for r in conn.execute(query + " ORDER BY updated DESC, rowid DESC", args)]

    def delete_session(self, session_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def add_message(self, session_id: str, pane: int, role: str, content: str, adapter: str = "",
                    meta: dict[str, Any] | None = None) -> MessageRecord:
        if role not in ("system", "user", "assistant"):
            raise StudioError(f"Unknown message role {role!r}.")
        now = _now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                raise StudioError(f"No chat session {session_id!r} is saved.")
            cursor = conn.execute("INSERT INTO messages (session_id, pane, role, content, adapter, created, meta) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (session_id, int(pane), role, content, adapter, now, json.dumps(meta or {})))
            conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
        return MessageRecord(int(cursor.lastrowid), session_id, int(pane), role, content, adapter, now, dict(meta or {}))

    def messages(self, session_id: str, pane: int | None = None) -> list[MessageRecord]:
        query, args = "SELECT * FROM messages WHERE session_id = ?", [session_id]
        if pane is not None:
            query += " AND pane = ?"
            args.append(int(pane))
        with self._connect() as conn:
            return [_message(r) for r in conn.execute(query + " ORDER BY id", args)]

    def conversation(self, session_id: str, pane: int) -> list[dict[str, str]]:
        """One pane's conversation as the chat engine takes it: [{role, content}, ...]."""
        return [{"role": m.role, "content": m.content} for m in self.messages(session_id, pane)]

    # ------------------------------------------------------------ votes

    def add_vote(self, base: str, prompt: str, adapter_a: str, adapter_b: str, winner: str, *, blind: bool = False,
                 session_id: str | None = None, answer_a: str = "", answer_b: str = "",
                 settings: dict[str, Any] | None = None) -> Vote:
        if winner not in WINNERS:
            raise StudioError(f"Unknown vote {winner!r}.", hint=f"Vote one of: {', '.join(WINNERS)}.")
        if not adapter_a or not adapter_b or adapter_a == adapter_b:
            raise StudioError("A vote compares two different adapters (or an adapter and the base).")
        now = _now()
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO votes (base, prompt, adapter_a, adapter_b, winner, blind, created, session_id, "
                "answer_a, answer_b, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (base, prompt, adapter_a, adapter_b, winner, int(bool(blind)), now, session_id, answer_a, answer_b,
                 json.dumps(settings or {})))
        return Vote(int(cursor.lastrowid), base, prompt, adapter_a, adapter_b, winner, bool(blind), now, session_id,
                    answer_a, answer_b, dict(settings or {}))

    def votes(self, base: str | None = None, adapter: str | None = None) -> list[Vote]:
        """Votes in the order they were cast, optionally of one base and/or involving one adapter."""
        query, args = "SELECT * FROM votes WHERE 1 = 1", []
        if base is not None:
            query += " AND base = ?"
            args.append(base)
        if adapter is not None:
            query += " AND (adapter_a = ? OR adapter_b = ?)"
            args += [adapter, adapter]
        with self._connect() as conn:
            return [_vote(r) for r in conn.execute(query + " ORDER BY id", args)]

    def delete_vote(self, vote_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM votes WHERE id = ?", (int(vote_id),))

    def bases(self) -> list[str]:
        """The bases that have votes."""
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT base FROM votes ORDER BY base")]

    def leaderboard(self, base: str, *, prior: float = 1.0, bootstrap_rounds: int = 200) -> list[Rating]:
        """Ratings of the adapters (and "base") from the votes cast on this base model, best first."""
        return rate(self.votes(base=base), prior=prior, bootstrap_rounds=bootstrap_rounds)

    # ------------------------------------------------------------ prompt sets

    def save_prompt_set(self, name: str, prompts: Sequence[str]) -> PromptSet:
        """Create or replace a named list of test prompts."""
        prompts = [p for p in (str(p).strip() for p in prompts) if p]
        if not name.strip():
            raise StudioError("A prompt set needs a name.")
        if not prompts:
            raise StudioError(f"Prompt set {name!r} has no prompts.", hint="Add at least one non-empty prompt.")
        now = _now()
        with self._write() as conn:
            conn.execute("INSERT INTO prompt_sets (name, prompts, created, updated) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET prompts = excluded.prompts, updated = excluded.updated",
                         (name, json.dumps(prompts), now, now))
        return self.prompt_set(name)

    def prompt_set(self, name: str) -> PromptSet:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM prompt_sets WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StudioError(f"No prompt set called {name!r}.")
        return PromptSet(row["name"], json.loads(row["prompts"]), row["created"], row["updated"])

    def prompt_sets(self) -> list[PromptSet]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM prompt_sets ORDER BY name").fetchall()
        return [PromptSet(r["name"], json.loads(r["prompts"]), r["created"], r["updated"]) for r in rows]

    def delete_prompt_set(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM prompt_sets WHERE name = ?", (name,))


def _session(row: sqlite3.Row) -> Session:
    return Session(row["id"], row["title"], row["base"], row["created"], row["updated"], json.loads(row["panes"]),
                   json.loads(row["settings"]))


def _message(row: sqlite3.Row) -> MessageRecord:
    return MessageRecord(row["id"], row["session_id"], row["pane"], row["role"], row["content"], row["adapter"],
                         row["created"], json.loads(row["meta"]))


def _vote(row: sqlite3.Row) -> Vote:
    return Vote(row["id"], row["base"], row["prompt"], row["adapter_a"], row["adapter_b"], row["winner"],
                bool(row["blind"]), row["created"], row["session_id"], row["answer_a"], row["answer_b"],
                json.loads(row["settings"]))
