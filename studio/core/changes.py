"""What changed in what the user owns, said once so that every screen refreshes what it shows.

`Changes` is the notice (Anki's OpChanges idea): the adapters added, edited, deleted or restored,
the runs started, stopped or finished, votes cast, base models added, the trash changed. An
operation builds one from what it did; the GUI hands it to every panel at once.

Another process (the CLI) changes the same data directory without telling anyone, so
`DiskState.read(data)` takes a cheap look at it (folder names and file times, no manifest parsed)
and `after.changes_since(before)` says what a look later shows as a `Changes` of the same kind.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from studio.core.library.manifest import MANIFEST_NAME
from studio.core.paths import DataDir
from studio.core.train.run_dir import RunDir


@dataclass(frozen=True)
class Changes:
    """One notice of what changed. The id fields take any collection of ids and keep it as a frozenset."""

    adapters_added: Collection[str] = frozenset()
    adapters_edited: Collection[str] = frozenset()  # name, tags or notes (anything in the manifest)
    adapters_deleted: Collection[str] = frozenset()
    adapters_restored: Collection[str] = frozenset()
    runs_started: Collection[str] = frozenset()
    runs_stopped: Collection[str] = frozenset()  # stopped, paused or failed
    runs_finished: Collection[str] = frozenset()
    runs_updated: Collection[str] = frozenset()  # seen on disk: another process wrote to the run
    votes_cast: int = 0
    base_models_added: Collection[str] = frozenset()
    trash_changed: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(f.default, frozenset):
                object.__setattr__(self, f.name, frozenset(getattr(self, f.name)))

    @property
    def adapters(self) -> bool:
        """Whether the list of adapters or what it shows of one changed."""
        return bool(self.adapters_added or self.adapters_edited or self.adapters_deleted or self.adapters_restored)

    @property
    def runs(self) -> bool:
        return bool(self.runs_started or self.runs_stopped or self.runs_finished or self.runs_updated)

    @property
    def base_models(self) -> bool:
        return bool(self.base_models_added)

    @property
    def trash(self) -> bool:
        """The trash's list: a delete fills it, a restore or emptying it takes from it."""
        return self.trash_changed or bool(self.adapters_deleted or self.adapters_restored)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __or__(self, other: Changes) -> Changes:
        """Both notices as one."""
        merged = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            merged[f.name] = mine | theirs if isinstance(mine, frozenset) else (
                mine + theirs if isinstance(mine, int) and not isinstance(mine, bool) else mine or theirs)
        return Changes(**merged)

    def without(self, known: Changes) -> Changes:
        """This notice less what `known` already said. An id `known` names in any adapter (run) field is
        dropped from every adapter (run) field: a look at the disk reads the app's restore as an adapter
        added and its finished run as a run updated. The trash's change goes when `known` touched the trash."""
        adapters = frozenset().union(known.adapters_added, known.adapters_edited, known.adapters_deleted,
                                     known.adapters_restored)
        runs = frozenset().union(known.runs_started, known.runs_stopped, known.runs_finished, known.runs_updated)
        kept = {f.name: getattr(self, f.name) - (adapters if f.name.startswith("adapters_") else runs)
                for f in fields(self) if f.name.startswith(("adapters_", "runs_"))}
        return Changes(**kept, votes_cast=max(self.votes_cast - known.votes_cast, 0),
                       base_models_added=frozenset(self.base_models_added) - frozenset(known.base_models_added),
                       trash_changed=self.trash_changed and not known.trash)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return 0.0


def _children(folder: Path) -> list[Path]:
    """The entries of a data folder that its owner lists (dot-names are staging and temp folders)."""
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


@dataclass(frozen=True)
class DiskState:
    """The data directory at one moment, as far as the screens care: ids and file times."""

    adapters: Mapping[str, float] = field(default_factory=dict)  # id -> time of its manifest
    trash: frozenset[str] = frozenset()
    runs: Mapping[str, float] = field(default_factory=dict)  # id -> time of its event log (moves while it trains)
    models: frozenset[str] = frozenset()

    @classmethod
    def read(cls, data: DataDir) -> DiskState:
        """A few stat calls per adapter and run: cheap enough for the GUI thread on focus or a folder event."""
        return cls(adapters={p.name: _mtime(p / MANIFEST_NAME) for p in _children(data.adapters)},
                   trash=frozenset(p.name for p in _children(data.trash)),
                   runs={run.run_id: _mtime(run.metrics) for run in RunDir.all(data)},
                   models=frozenset(p.name for p in _children(data.models)))

    def changes_since(self, before: DiskState) -> Changes:
        """What happened between `before` and this look. A restore reads as an adapter added (and the trash
        changed): the trash's folder names are its own business."""
        adapters_before, runs_before = before.adapters, before.runs
        return Changes(
            adapters_added={a for a in self.adapters if a not in adapters_before},
            adapters_edited={a for a, t in self.adapters.items() if a in adapters_before and t != adapters_before[a]},
            adapters_deleted={a for a in adapters_before if a not in self.adapters},
            runs_started={r for r in self.runs if r not in runs_before},
            runs_updated={r for r, t in self.runs.items() if r in runs_before and t != runs_before[r]},
            base_models_added=self.models - before.models,
            trash_changed=self.trash != before.trash,
        )
