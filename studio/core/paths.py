"""Where the studio keeps what the user owns: the data directory and its fixed sub-folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from studio.core.errors import StudioError, disk_full_as_message

HOME_ENV = "LORA_STUDIO_HOME"
REPO_ROOT = Path(__file__).resolve().parents[2]
RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"  # inside the package: wheels carry it


@dataclass(frozen=True)
class DataDir:
    """The layout of `$LORA_STUDIO_HOME` (see DESIGN.md)."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def database(self) -> Path:
        return self.root / "studio.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> DataDir:
        for folder in (self.models, self.adapters, self.runs, self.trash, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def default_home() -> Path:
    """`$LORA_STUDIO_HOME` if set, else the platform's per-user data folder."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("LoRA Studio", "LoRA Studio"))


def data_dir(root: Path | str | None = None) -> DataDir:
    """The data directory (created if missing); a path that cannot be one raises StudioError."""
    # Absolute, so that what is recorded from it (a base under models/, a run's folder) means the same
    # from any working directory.
    data = DataDir(Path(root).expanduser().resolve() if root is not None else default_home())
    try:
        with disk_full_as_message(data.root, f"create the data directory {data.root}"):
            return data.ensure()
    except OSError as err:
        problem = "is a file, not a folder" if data.root.is_file() else f"cannot be used ({err.strerror or err})"
        raise StudioError(f"The data directory {data.root} {problem}.",
                          hint=f"Point --home or ${HOME_ENV} at a folder you can write to.") from err
