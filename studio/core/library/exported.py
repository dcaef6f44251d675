"""What leaves the machine: the exported form of an adapter's files, naming no path of the user's.

Inside the library an adapter records its base by what finds it from any working directory (often
the base's absolute folder) and its dataset by its absolute folder, and peft's README.md model card
names the base by the path it was loaded from. An export (peft folder, .zip, Ollama bundle) is made
to be shared, so `ExportNaming` rewrites the text it carries: the base by its hub id where it has
one, else its folder's name (studio.core.basemodels.export_name); the adapter's other known folders
(dataset, library, data directory, home) by their names; and any other absolute path by its last
part. Merged models and GGUF files hold weights, configs and names only (tests/hostile/test_exports.py
searches every export for the user's folders).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.library.adapter_folder import CONFIG_NAME, adapter_base, base_claims, read_adapter_config
from studio.core.library.manifest import AdapterManifest
from studio.core.paths import DataDir

log = logging.getLogger(__name__)

# An absolute path where a word starts: POSIX (/a), home (~/a), a drive (C:\a) or a share (\\host\a);
# it runs to the next space, quote or bracket. "https://host/a" and "a/b" are not paths.
_ABSOLUTE = re.compile(r"""(?P<lead>^|[\s"'`(\[{=:,])(?P<path>(?:~|[A-Za-z]:)?[/\\](?![/\\\s])[^\s"'`<>|,;)\]}]+"""
                       r"""|\\\\[^\\\s"'`]+\\[^\s"'`<>|,;)\]}]*)""")


# adapter_config.json fields that name modules (by name or regex): copied as they are.
_MODULE_PATTERN_FIELDS = frozenset({"target_modules", "exclude_modules", "modules_to_save", "rank_pattern",
                                    "alpha_pattern", "layers_pattern", "layers_to_transform", "target_parameters",
                                    "trainable_token_indices"})

_PATH_ENDS = r"(?=$|[/\\\s\"'`,;:)\]}])"  # a known folder, not the start of a longer name


def _last_part(path: str) -> str:
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


@dataclass(frozen=True)
class ExportNaming:
    """How one adapter's export names its base and rewrites the paths in what it carries."""

    base_name: str
    known: tuple[tuple[str, str], ...] = ()  # (a folder of the user's, what the export says instead)

    def text(self, text: str) -> str:
        """`text` with the known folders replaced by their names and any other absolute path by its last part."""
        for path, name in sorted(self.known, key=lambda pair: -len(pair[0])):
            text = re.sub(re.escape(path) + _PATH_ENDS, lambda _m, name=name: name, text)
        return _ABSOLUTE.sub(lambda m: m["lead"] + _last_part(m["path"]), text)

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it (keys too) rewritten by `text`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def manifest(self, manifest: AdapterManifest) -> str:
        """The studio.json an export carries."""
        data = self.value(manifest.to_dict())
        data["base_model"] = self.base_name
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def extra_file(self, path: Path) -> bytes:
        """A small text file shipped with the adapter (README.md, LICENSE) rewritten by `text`; bytes
        that are not UTF-8 pass through as they are."""
        text = Path(path).read_bytes().decode("utf-8", "surrogateescape")
        return self.text(text).encode("utf-8", "surrogateescape")

    def adapter_config(self, folder: Path) -> str:
        """The folder's adapter_config.json naming the base by `base_name` (how plain peft's
        AutoPeftModel finds it); everything else as peft wrote it, less any path. Module names and
        patterns are regexes, never paths: rewritten, `(\\d+)` would lose its backslash."""
        raw = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
        config = {key: value if key in _MODULE_PATTERN_FIELDS else self.value(value) for key, value in raw.items()}
        config["base_model_name_or_path"] = self.base_name
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _is_path(ref: str) -> bool:
    return bool(_ABSOLUTE.fullmatch(ref)) or ref.startswith(".") or "\\" in ref or ref.count("/") > 1


def export_naming(data: DataDir, folder: Path, manifest: AdapterManifest) -> ExportNaming:
    """The naming of an export of the adapter in `folder`: its base found through the one resolver;
    a base that is not here is named as the adapter records it, by its last part if that is a path."""
    claims = base_claims(manifest, read_adapter_config(folder, repr(manifest.name or folder.name)))
    paths = [claim for claim in claims if _is_path(claim)]
    try:
        base = adapter_base(data, folder, manifest)
        base_name = base.export_name
        paths.append(str(base.path))
    except StudioError as err:
        log.warning("Exporting %s naming its base as it records it: %s", folder.name, err)
        first = claims[0] if claims else ""
        base_name = _last_part(first) if _is_path(first) else first
    known = [(path, base_name) for path in paths]
    dataset = manifest.dataset.get("folder")
    if isinstance(dataset, str) and _is_path(dataset):
        known.append((dataset, _last_part(dataset)))
    for path, name in ((folder, folder.name), (data.root, data.root.name), (Path.home(), "~")):
        known += [(str(path), name), (str(Path(path).resolve()), name)]
    return ExportNaming(base_name=base_name, known=tuple(dict(p for p in known if len(p[0]) > 1).items()))
