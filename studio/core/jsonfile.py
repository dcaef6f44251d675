"""Reading a JSON file that users and other tools write: every way it can be unreadable is a StudioError.

Python's parser raises RecursionError on JSON nested some thousands deep (a hostile or broken file);
that is a message naming the file too, not a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError


def read_json(path: Path) -> Any:
    """The JSON value in `path`; StudioError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except RecursionError as err:
        raise StudioError(f"{path} is not usable: its JSON is nested too deeply.") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{path} is not valid JSON: {err}.") from err
