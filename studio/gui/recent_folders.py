"""The folders a file dialog last opened, remembered per purpose in QSettings.

Each dialog (training data, adapter import, base model folder, export target) starts where the user
last was for that purpose, across restarts.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

KEY_PREFIX = "folders/"


def last_folder(purpose: str) -> str:
    """The last folder used for `purpose`, or the home folder when none was or it is gone."""
    folder = QSettings().value(KEY_PREFIX + purpose, "", type=str)
    return folder if folder and Path(folder).is_dir() else str(Path.home())


def remember_folder(purpose: str, path: str | Path) -> None:
    """Remember `path` (a folder, or the folder of a file) for the next dialog of this purpose."""
    path = Path(path)
    QSettings().setValue(KEY_PREFIX + purpose, str(path if path.is_dir() else path.parent))
