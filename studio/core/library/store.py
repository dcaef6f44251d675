"""The adapter library: the folders under `$LORA_STUDIO_HOME/adapters`, their manifests and the trash.

The folder is the source of truth: whatever sits in `adapters/<id>/` (even a plain peft adapter
copied in by hand) is listed, with a manifest inferred when it has no studio.json. Imports (a folder,
or a .zip unpacked by `archive.extract_zip_safely`) and new adapters from training or blending are validated in full
in a hidden staging folder and renamed into place, so a refusal leaves the library untouched.
Choosing a free name and landing the folder under it happen under the library's name lock (an OS
lock in the data directory), so processes adding adapters at once never pick the same name.
Deletion moves folders to `trash/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock

from studio.core import atomic, scratch
from studio.core.basemodels import locate_base
from studio.core.errors import StudioError, disk_full_as_message, disk_full_error, is_disk_full
from studio.core.library.adapter_folder import (
    CONFIG_NAME,
    EXTRA_FILES,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    BaseLookup,
    check_finite_weights,
    check_weights_present,
    default_base_lookup,
    extra_file_limit,
    find_adapter_root,
    importable_files,
    inspect_adapter,
    read_adapter_config,
)
from studio.core.library.archive import extract_zip_safely
from studio.core.library.exported import export_naming
from studio.core.library.manifest import (
    MANIFEST_NAME,
    AdapterManifest,
    clean_text,
    now_iso,
    read_manifest,
    write_manifest,
)
from studio.core.paths import DataDir

log = logging.getLogger(__name__)

TRASH_RECORD = "trash.json"
NAMES_LOCK = ".library-names.lock"  # in the data directory: held while a name is chosen and its folder lands


@dataclass
class AdapterEntry:
    id: str
    path: Path
    manifest: AdapterManifest
    size_bytes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.manifest.name, "path": str(self.path), "size_bytes": self.size_bytes,
                "warnings": list(self.warnings), "manifest": self.manifest.to_dict()}


@dataclass
class TrashEntry:
    trash_id: str
    path: Path
    original_id: str
    name: str
    deleted: str  # ISO time in UTC
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "adapter"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _check_id(adapter_id: str, what: str = "adapter id") -> str:
    if not adapter_id or adapter_id.startswith(".") or any(c in adapter_id for c in "/\\") or "\0" in adapter_id:
        raise StudioError(f"{adapter_id!r} is not a valid {what}.", hint="Use the id shown by `lora-studio list`.")
    return adapter_id


def _wanted_from_zip(info: zipfile.ZipInfo) -> bool:
    """Only what an import may copy is unpacked (pickles too, to refuse them by name)."""
    base = info.filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if base in (CONFIG_NAME, WEIGHTS_NAME) or base.lower().endswith(PICKLE_SUFFIXES):
        return True
    return base in (MANIFEST_NAME, *EXTRA_FILES) and info.file_size <= extra_file_limit(base)


# ---------------------------------------------------------------- the library


class AdapterLibrary:
    """The adapters in one data directory. Every method re-reads the folders; nothing is cached."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        data.adapters.mkdir(parents=True, exist_ok=True)
        data.trash.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ reading

    def _folders(self) -> list[Path]:
        return sorted(p for p in self.data.adapters.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _entry(self, folder: Path, lookup: BaseLookup | None = None) -> AdapterEntry:
        info = inspect_adapter(folder, lookup or default_base_lookup(self.data), data=self.data,
                               label=repr(folder.name))
        return AdapterEntry(id=folder.name, path=folder, manifest=info.manifest, size_bytes=folder_size(folder),
                            warnings=info.warnings)

    def _scan(self) -> tuple[list[AdapterEntry], list[tuple[Path, str]]]:
        lookup = default_base_lookup(self.data)
        entries: list[AdapterEntry] = []
        problems: list[tuple[Path, str]] = []
        for folder in self._folders():
            try:
                entries.append(self._entry(folder, lookup))
            except StudioError as err:
                problems.append((folder, str(err)))
            except OSError as err:
                problems.append((folder, f"could not be read: {err}"))
            except Exception as err:  # noqa: BLE001 - one folder anyone may have edited never hides the others
                log.warning("Adapter folder %s could not be read", folder, exc_info=True)
                problems.append((folder, f"could not be read ({type(err).__name__}: {err})"))
        entries.sort(key=lambda e: (e.manifest.name.casefold(), e.id))
        return entries, problems

    def list(self) -> list[AdapterEntry]:
        """Every usable adapter, sorted by name. Broken folders go to `problems()` instead."""
        return self._scan()[0]

    def problems(self) -> list[tuple[Path, str]]:
        """(folder, message) for each folder in adapters/ that is not a usable adapter."""
        return self._scan()[1]

    def get(self, id_or_name: str) -> AdapterEntry:
        """An adapter by id, else by its unique name (exact, then ignoring case)."""
        folder = self.data.adapters / id_or_name
        if id_or_name and not id_or_name.startswith(".") and "/" not in id_or_name and folder.is_dir():
            return self._entry(folder)
        entries = self.list()
        matches = [e for e in entries if e.manifest.name == id_or_name] or \
                  [e for e in entries if e.manifest.name.casefold() == id_or_name.casefold()]
        if not matches:
            raise StudioError(f"No adapter called {id_or_name!r} is in the library.",
                              hint="Run `lora-studio list` to see the adapters' ids and names.")
        if len(matches) > 1:
            raise StudioError(f"Several adapters are called {id_or_name!r}: "
                              f"{', '.join(e.id for e in matches)}.", hint="Use the id instead of the name.")
        return matches[0]

    def _unique_name(self, name: str, *, besides: str | None = None) -> str:
        """`name`, or `name (2)`, `name (3)`, ... when another adapter (not `besides`) is called that."""
        taken = {e.manifest.name for e in self.list() if e.id != besides}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name} ({n})", n + 1
        return candidate

    def _new_id(self, name: str) -> str:
        while True:
            candidate = f"{slugify(name)}-{secrets.token_hex(3)}"
            if not (self.data.adapters / candidate).exists():
                return candidate

    # ------------------------------------------------------------ adding

    def _scratch(self) -> contextlib.AbstractContextManager[Path]:
        return scratch.work_dir(self.data.adapters, "import")

    @contextlib.contextmanager
    def _names_held(self) -> Iterator[None]:
        """Hold the library's name lock: choosing a free name and landing the folder under it is one
        step for every process, so two imports with the same name at once get two different names."""
        lock = filelock.FileLock(self.data.root / NAMES_LOCK, thread_local=False)  # waits its turn
        with lock:
            yield

    def import_path(self, src: Path | str, name: str | None = None) -> AdapterEntry:
        """Import an adapter folder or .zip; validated in full before anything lands in the library."""
        src = Path(src).expanduser()
        if src.is_dir():
            return self._land(src, name=name, default_name=src.name, move=False)
        if src.is_file() and (src.suffix.lower() == ".zip" or zipfile.is_zipfile(src)):
            with self._scratch() as scratch:
                extract_zip_safely(src, scratch, keep=_wanted_from_zip)
                folder = find_adapter_root(scratch, src.name)
                return self._land(folder, name=name, default_name=src.stem if folder == scratch else folder.name,
                                  move=True, label=repr(src.name))
        if not src.exists():
            raise StudioError(f"{src} does not exist.")
        raise StudioError(f"{src.name} is neither an adapter folder nor a .zip of one.",
                          hint="Pick the folder that holds adapter_config.json and adapter_model.safetensors.")

    def add_new(self, folder: Path | str, manifest: AdapterManifest, *, move: bool = False) -> AdapterEntry:
        """Add an adapter that training or blending just saved (peft files), under `manifest`.

        The manifest's id is used when set (refused if taken), else one is made from its name.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise StudioError(f"{folder} is not a folder.")
        if manifest.id:
            _check_id(manifest.id)
            if (self.data.adapters / manifest.id).exists():
                raise StudioError(f"An adapter with id {manifest.id!r} already exists.")
        return self._land(folder, name=None, default_name=manifest.name or folder.name, move=move, manifest=manifest)

    def _land(self, src: Path, *, name: str | None, default_name: str, move: bool,
              manifest: AdapterManifest | None = None, label: str | None = None) -> AdapterEntry:
        label = label or repr(src.name)
        read_adapter_config(src, label)  # the plainest message first: not an adapter at all
        check_weights_present(src, label)  # pickles are refused before anything is copied
        existing = None
        with contextlib.suppress(StudioError, TypeError, ValueError):
            existing = read_manifest(src)
        chosen = clean_text(name or (manifest.name if manifest else "") or (existing.name if existing else "")
                            or default_name).strip()
        try:
            with self._names_held():
                display = self._unique_name(chosen or "adapter")
                new_id = (manifest.id if manifest and manifest.id else "") or self._new_id(display)
                final = self.data.adapters / new_id
                with atomic.staging_dir(final) as stage:
                    for item in importable_files(src, label):
                        (os.replace if move else shutil.copy2)(item, stage / item.name)
                    info = inspect_adapter(stage, default_base_lookup(self.data), data=self.data, label=label)
                    check_finite_weights(stage, info.tensors, label)  # reads every weight: at import only
                    kept = dataclasses.replace(manifest) if manifest else info.manifest
                    if manifest is None and info.inferred:
                        kept.source = "imported"
                    kept.id, kept.name = new_id, display
                    config = info.config
                    kept.base_model = kept.base_model or str(config.get("base_model_name_or_path") or "")
                    found = locate_base(self.data, kept.base_model) if kept.base_model else None
                    if found is not None:  # recorded by what finds it from anywhere, not as the adapter named it
                        kept.base_model = found.id
                    kept.base_fingerprint = kept.base_fingerprint or info.base_fingerprint
                    kept.rank = kept.rank or int(config["r"])
                    kept.alpha = kept.alpha or float(config.get("lora_alpha", 8))
                    kept.target_modules = kept.target_modules or info.manifest.target_modules
                    write_manifest(stage, kept)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(self.data.adapters, f"add {label} to the library") from err
            raise StudioError(f"Could not add {label} to the library: {err}.",
                              hint="Check the folder's permissions.") from err
        log.info("Added adapter %s (%s)", new_id, display)
        entry = self._entry(final)
        # What was repaired on the way in (a studio.json that could not be used) is said once, here.
        entry.warnings = list(dict.fromkeys([*info.warnings, *entry.warnings]))
        return entry

    # ------------------------------------------------------------ exporting

    def export(self, id_or_name: str, dest: Path | str, as_zip: bool = False) -> Path:
        """Write a plain peft folder (or a .zip of one) that loads without the studio. Returns its path."""
        entry = self.get(id_or_name)
        dest = Path(dest).expanduser()
        stem = slugify(entry.manifest.name)
        if as_zip:
            target = dest / f"{stem}.zip" if dest.is_dir() else \
                (dest if dest.suffix.lower() == ".zip" else dest.with_name(dest.name + ".zip"))
        else:
            target = dest / stem if dest.is_dir() else dest
        if target.exists():
            raise StudioError(f"{target} already exists.", hint="Choose another destination, or remove it first.")
        # What an import would take, so a file or link put into the folder by hand never ships; every
        # file but the weights is rewritten so that no path of the user's leaves the machine.
        naming = export_naming(self.data, entry.path, entry.manifest)
        files = importable_files(entry.path, repr(entry.id))
        weights = [p for p in files if p.name == WEIGHTS_NAME]
        written = {MANIFEST_NAME: naming.manifest(entry.manifest).encode(),
                   CONFIG_NAME: naming.adapter_config(entry.path).encode(),
                   **{p.name: naming.extra_file(p) for p in files if p.name in EXTRA_FILES}}
        try:
            if not as_zip:
                with atomic.staging_dir(target) as stage:
                    for item in weights:
                        shutil.copy2(item, stage / item.name)
                    for name, data in written.items():
                        atomic.write_bytes(stage / name, data)
                return target
            with atomic.open_for_write(target) as handle, zipfile.ZipFile(handle, "w") as archive:
                for item in weights:
                    archive.write(item, f"{stem}/{item.name}", compress_type=zipfile.ZIP_STORED)
                for name, data in written.items():
                    archive.writestr(f"{stem}/{name}", data, zipfile.ZIP_DEFLATED)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(target.parent, f"export {entry.manifest.name!r}") from err
            raise StudioError(f"Could not export {entry.manifest.name!r} to {target}: {err}.",
                              hint="Check the free disk space and that the destination is writable.") from err
        return target

    # ------------------------------------------------------------ editing the manifest

    def _update(self, id_or_name: str, change) -> AdapterEntry:
        entry = self.get(id_or_name)
        change(entry.manifest)
        with disk_full_as_message(entry.path, f"save the changes to {entry.manifest.name!r}"):
            write_manifest(entry.path, entry.manifest)  # atomic: a full disk leaves the old studio.json
        return self._entry(entry.path)

    def rename(self, id_or_name: str, new_name: str) -> AdapterEntry:
        new_name = new_name.strip()
        if not new_name:
            raise StudioError("An adapter's name cannot be empty.")
        with self._names_held():
            entry = self.get(id_or_name)
            clash = [e.id for e in self.list() if e.manifest.name == new_name and e.id != entry.id]
            if clash:
                raise StudioError(f"Another adapter ({clash[0]}) is already called {new_name!r}.",
                                  hint="Pick a different name.")
            return self._update(entry.id, lambda m: setattr(m, "name", new_name))

    def tag(self, id_or_name: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> AdapterEntry:
        add_list = [t.strip() for t in add if t.strip()]
        drop = {t.strip() for t in remove}

        def change(m: AdapterManifest) -> None:
            m.tags = [t for t in dict.fromkeys([*m.tags, *add_list]) if t not in drop]

        return self._update(id_or_name, change)

    def set_notes(self, id_or_name: str, text: str) -> AdapterEntry:
        return self._update(id_or_name, lambda m: setattr(m, "notes", text))

    # ------------------------------------------------------------ trash

    def delete(self, id_or_name: str) -> str:
        """Move an adapter (even a broken folder, by id) to the trash. Returns the trash id."""
        folder = self.data.adapters / id_or_name
        if not (id_or_name and not id_or_name.startswith(".") and "/" not in id_or_name and folder.is_dir()):
            folder = self.get(id_or_name).path
        name = folder.name
        with contextlib.suppress(StudioError, TypeError, ValueError):
            name = (read_manifest(folder) or AdapterManifest(id=name, name=name)).name
        trash_id = f"{folder.name}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        holder = self.data.trash / trash_id
        try:
            with disk_full_as_message(self.data.trash, f"move {name!r} to the trash"):
                holder.mkdir(parents=True)
                atomic.write_json(holder / TRASH_RECORD, {"schema_version": 1, "trash_id": trash_id,
                                                          "original_id": folder.name, "name": name,
                                                          "deleted": now_iso()})
                try:
                    os.replace(folder, holder / "adapter")
                except OSError as err:
                    if is_disk_full(err):
                        raise
                    shutil.move(str(folder), str(holder / "adapter"))  # another file system: copy, then delete
        except BaseException:
            if folder.is_dir():  # the adapter is still where it was: no half-made trash entry stays behind
                shutil.rmtree(holder, ignore_errors=True)
            raise
        log.info("Moved %s to the trash as %s", folder.name, trash_id)
        return trash_id

    def _trash_record(self, holder: Path) -> dict[str, Any]:
        try:
            record = json.loads((holder / TRASH_RECORD).read_text(encoding="utf-8"))
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def trash(self) -> list[TrashEntry]:
        """What is in the trash, newest first (incomplete leftovers are skipped)."""
        items = []
        for holder in sorted(p for p in self.data.trash.iterdir() if p.is_dir() and not p.name.startswith(".")):
            record = self._trash_record(holder)
            if not (holder / "adapter").is_dir() or not record.get("original_id"):
                continue
            items.append(TrashEntry(trash_id=holder.name, path=holder / "adapter",
                                    original_id=str(record["original_id"]), name=str(record.get("name", "")),
                                    deleted=str(record.get("deleted", "")), size_bytes=folder_size(holder)))
        return sorted(items, key=lambda t: t.deleted, reverse=True)

    def restore(self, trash_id: str) -> AdapterEntry:
        """Put a trashed adapter back under its original id."""
        holder = self.data.trash / _check_id(trash_id, "trash id")
        record = self._trash_record(holder) if holder.is_dir() else {}
        original = str(record.get("original_id") or "")
        if not original or not (holder / "adapter").is_dir():
            raise StudioError(f"Nothing called {trash_id!r} is in the trash.",
                              hint="Run `lora-studio restore` without an argument to list the trash.")
        final = self.data.adapters / _check_id(original)
        with self._names_held():  # the name it comes back under may have been taken since the delete
            if final.exists():
                raise StudioError(f"Cannot restore {trash_id!r}: an adapter with the same id ({original}) is "
                                  "already in the library.", hint=f"Delete or export {original} first, then restore.")
            os.replace(holder / "adapter", final)
            shutil.rmtree(holder, ignore_errors=True)
            try:
                entry = self._entry(final)
            except StudioError as err:
                raise StudioError(f"Restored {original}, but it is not a usable adapter: {err}") from err
            unique = self._unique_name(entry.manifest.name, besides=entry.id)
            if unique != entry.manifest.name:
                log.info("Restoring %s as %r: its name is taken", original, unique)
                entry = self._update(entry.id, lambda m: setattr(m, "name", unique))
            return entry

    def empty_trash(self, older_than_days: float | None = None) -> int:
        """Delete trashed adapters for good (only those older than N days if given). Returns how many."""
        now = datetime.now(timezone.utc)
        removed = 0
        for leftover in self.data.trash.glob(".*.deleting"):  # an emptying that was cut short
            shutil.rmtree(leftover, ignore_errors=True)
        for holder in [p for p in self.data.trash.iterdir() if p.is_dir() and not p.name.startswith(".")]:
            if older_than_days is not None:
                try:
                    age = (now - datetime.fromisoformat(str(self._trash_record(holder).get("deleted"))))
                except (ValueError, TypeError):
                    age = now - datetime.fromtimestamp(holder.stat().st_mtime, timezone.utc)
                if age.total_seconds() < older_than_days * 86400:
                    continue
            doomed = holder.with_name(f".{holder.name}.deleting")
            os.replace(holder, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed += 1
        return removed
