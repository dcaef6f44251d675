"""`studio.json`: the studio's own manifest that sits beside peft's files in an adapter folder.

peft's `adapter_config.json` stays as peft wrote it, but for `base_model_name_or_path`, which names
the base so that it resolves anywhere (studio.core.basemodels); everything the studio adds (name,
base fingerprint, hyperparameters, dataset and metrics summaries, lineage, tags, notes) lives here.
Every field of a studio.json read from disk is type-checked, since users and other tools edit it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.core import atomic
from studio.core.errors import StudioError
from studio.core.jsonfile import read_json

MANIFEST_NAME = "studio.json"
SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Lineage:
    """Where an adapter came from: the adapters it was made from and how (blend recipe, continue)."""

    parents: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdapterManifest:
    id: str
    name: str
    base_model: str = ""
    base_fingerprint: str = ""
    method: str = "lora"  # lora | dora | rslora, with quantization in hyperparameters
    rank: int = 0
    alpha: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    source: str = "trained"  # trained | imported | blend | inferred
    chat_template_sha256: str = ""
    created: str = field(default_factory=now_iso)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterManifest:
        """A manifest from JSON that anyone may have edited: every field's type is checked.

        A wrong type raises StudioError naming the field, so one bad studio.json is reported as
        such instead of breaking whoever reads `tags` or `name` later.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "id" not in values or "name" not in values:
            raise StudioError("studio.json is missing its 'id' or 'name'.")
        for name, value in values.items():
            if name != "lineage":
                _check_field(name, value)
        lineage = values.get("lineage") or {}
        if not isinstance(lineage, dict):
            raise StudioError(f"studio.json: 'lineage' should be an object, not {lineage!r:.60}.")
        parents, recipe = lineage.get("parents", []), lineage.get("recipe", {})
        if not _is_text_list(parents) or not isinstance(recipe, dict):
            raise StudioError("studio.json: 'lineage' should hold 'parents' (a list of ids) and 'recipe' "
                              "(an object).")
        values["lineage"] = Lineage(parents=list(parents), recipe=dict(recipe))
        for name in _TEXT_FIELDS:
            if name in values:
                values[name] = clean_text(values[name])
        values["tags"] = [clean_text(t) for t in values.get("tags", [])]
        values["target_modules"] = list(values.get("target_modules", []))
        return cls(**values)


_TEXT_FIELDS = ("id", "name", "base_model", "base_fingerprint", "method", "notes", "source",
                "chat_template_sha256", "created")
_OBJECT_FIELDS = ("hyperparameters", "dataset", "metrics")


def clean_text(text: str) -> str:
    """`text` with lone surrogates (a file name that is not UTF-8, a bad JSON escape) replaced by U+FFFD.

    Such a string cannot be written as UTF-8, so it would fail every later save of the manifest.
    """
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_field(name: str, value: Any) -> None:
    """Raise StudioError when `value` is not of the JSON type the manifest's field `name` holds."""
    if name in _TEXT_FIELDS:
        ok, kind = isinstance(value, str), "text"
    elif name in _OBJECT_FIELDS:
        ok, kind = isinstance(value, dict), "an object"
    elif name in ("tags", "target_modules"):
        ok, kind = _is_text_list(value), "a list of text"
    elif name in ("rank", "schema_version"):
        ok, kind = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "a whole number"
    elif name == "alpha":
        ok, kind = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0), "a number"
    else:
        return
    if not ok:
        raise StudioError(f"studio.json: {name!r} should be {kind}, not {value!r:.60}.")


def read_manifest(folder: Path) -> AdapterManifest | None:
    """The folder's manifest, or None when it has none. Bad JSON raises StudioError."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise StudioError(f"{path} should hold a JSON object.")
    return AdapterManifest.from_dict(data)


def write_manifest(folder: Path, manifest: AdapterManifest) -> None:
    atomic.write_json(Path(folder) / MANIFEST_NAME, manifest.to_dict())
