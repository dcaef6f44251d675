"""The layout of one training run's folder, runs/<run-id>/, in one place: `RunDir`.

```
runs/<run-id>/
  config.json                  the TrainConfig the run trains (rewritten when OOM halves the batch)
  metrics.jsonl                every event of the run, one JSON object a line
  checkpoints/checkpoint-<step>/   transformers' checkpoint folders, each vouched for by
      studio-complete.json         the studio's completeness marker (studio.core.train.checkpoints)
  running.lock                 the OS lock a live trainer holds (studio.core.train.run_lock)
  running.json                 who holds it (pid, host, start time), for messages
```

Every other module asks a RunDir for these paths instead of spelling them out. A run id is the name
of a folder in runs/ and nothing else: `RunDir.of` refuses a path (absolute, with separators, `..`)
so no verb can train, read or copy a run folder outside the data directory. A new run's folder
appears whole (`RunDir.create`: staged with its config, then renamed). Plain Python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core import atomic
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train.events import Event, read_events

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_NAME = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR: the Trainer names its folders so
MARKER_NAME = "studio-complete.json"
LOCK_NAME = "running.lock"
HOLDER_NAME = "running.json"
_STEP = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass(frozen=True)
class RunDir:
    """One run folder. `RunDir.of(data, run_id)` for a run in the data directory."""

    path: Path

    @classmethod
    def of(cls, data: DataDir, run_id: str) -> RunDir:
        """The folder of run `run_id` in the data directory; StudioError when `run_id` is not a run id."""
        return cls(data.runs / check_run_id(data, run_id))

    @classmethod
    def existing(cls, data: DataDir, run_id: str) -> RunDir:
        """The run `run_id`, or StudioError when the data directory has no such run."""
        run = cls.of(data, run_id)
        if not run.config.is_file():
            raise StudioError(f"There is no training run {run_id!r}.", hint=_list_hint(data))
        return run

    @classmethod
    def create(cls, data: DataDir, run_id: str, config: dict[str, Any]) -> RunDir:
        """A new run folder holding `config`: staged and renamed into place, so a kill leaves none half-made."""
        run = cls.of(data, run_id)
        with atomic.staging_dir(run.path) as stage:
            atomic.write_json(stage / CONFIG_NAME, config)
        return run

    @staticmethod
    def all(data: DataDir) -> list[RunDir]:
        """Every run folder in runs/, newest first (run ids start with their start time). Hidden folders
        are not runs: a run folder being created (RunDir.create) is one until it is renamed."""
        if not data.runs.is_dir():
            return []
        return [RunDir(folder) for folder in sorted(data.runs.iterdir(), reverse=True)
                if folder.is_dir() and not folder.name.startswith(".")]

    @property
    def run_id(self) -> str:
        return self.path.name

    # ------------------------------------------------------------ files

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def holder_file(self) -> Path:
        return self.path / HOLDER_NAME

    def read_config(self) -> dict[str, Any] | None:
        """config.json as a dict; None when it is missing or unreadable."""
        try:
            data = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_config(self, config: dict[str, Any]) -> None:
        atomic.write_json(self.config, config)

    def events(self) -> list[Event]:
        """Every event in metrics.jsonl (none when there is no file yet)."""
        return read_events(self.metrics)

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_NAME

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoint_folders(self) -> list[Path]:
        """Every checkpoint-<step> folder, complete or not, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and step_of(p) is not None]
        return sorted(found, key=lambda p: step_of(p) or 0)


def check_run_id(data: DataDir, run_id: str) -> str:
    """`run_id` when it names a folder directly in runs/; StudioError for a path or a hidden name."""
    plain = (isinstance(run_id, str) and run_id not in ("", ".", "..") and not run_id.startswith(".")
             and not any(c in run_id for c in "/\\:\0") and Path(run_id).name == run_id)
    if not plain:
        raise StudioError(f"There is no training run {run_id!r}: a run id is the name of a folder in "
                          f"{data.runs}, never a path.", hint=_list_hint(data))
    return run_id


def _list_hint(data: DataDir) -> str:
    return f"The Runs tab and `lora-studio runs` list the runs (folders in {data.runs})."


def step_of(checkpoint: Path | str) -> int | None:
    """The step a checkpoint folder is for (None for a folder that is not one)."""
    match = _STEP.match(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def marker_of(checkpoint: Path) -> Path:
    """The completeness marker inside a checkpoint folder."""
    return checkpoint / MARKER_NAME
