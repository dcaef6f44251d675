"""`studio.json`: the studio's own manifest that sits beside peft's files in an adapter folder.

peft's `adapter_config.json` stays exactly as peft wrote it; everything the studio adds (name,
base fingerprint, hyperparameters, dataset and metrics summaries, lineage, tags, notes) lives here.
Knows nothing about where adapters are stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.core import atomic
from studio.core.errors import StudioError

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
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        lineage = values.get("lineage") or {}
        values["lineage"] = Lineage(parents=list(lineage.get("parents", [])),
                                    recipe=dict(lineage.get("recipe", {})))
        if "id" not in values or "name" not in values:
            raise StudioError("studio.json is missing its 'id' or 'name'.")
        return cls(**values)


def read_manifest(folder: Path) -> AdapterManifest | None:
    """The folder's manifest, or None when it has none. Bad JSON raises StudioError."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{path} is not valid JSON: {err}.") from err
    if not isinstance(data, dict):
        raise StudioError(f"{path} should hold a JSON object.")
    return AdapterManifest.from_dict(data)


def write_manifest(folder: Path, manifest: AdapterManifest) -> None:
    atomic.write_json(Path(folder) / MANIFEST_NAME, manifest.to_dict())
