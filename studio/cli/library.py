"""CLI verbs for the adapter library: `list`, `show`, `import`, `export`, `rm`, `restore`, `trash`, `rename`, `tag`.

Thin front doors onto studio.core.library.store (and studio.ml.export for a smoke-tested export).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.cli.verb import AddParser, Output, VerbGroup, open_library, table, verb
from studio.core.checks import check_number
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train.estimator import format_bytes


def _entry_row(entry) -> list[str]:
    m = entry.manifest
    return [entry.id, m.name, m.base_model or "?", m.method, str(m.rank), format_bytes(entry.size_bytes),
            ",".join(m.tags)]


@verb("list", "list the adapters in the library")
def cmd_list(args: argparse.Namespace, data: DataDir) -> Output:
    library = open_library(data)
    entries = library.list()
    problems = library.problems()
    text = table([_entry_row(e) for e in entries], ["id", "name", "base", "method", "rank", "size", "tags"]) \
        if entries else "The library is empty. Import an adapter with `lora-studio import PATH`."
    warned = [(e.id, w) for e in entries for w in e.warnings]
    if warned:
        text += "\n\nWarnings:\n" + "\n".join(f"  {adapter_id}: {w}" for adapter_id, w in warned)
    if problems:
        text += "\n\nFolders that are not usable adapters:\n" + "\n".join(f"  {p}: {msg}" for p, msg in problems)
    return Output({"adapters": [e.to_dict() for e in entries],
                   "problems": [{"path": str(p), "message": msg} for p, msg in problems]}, text)


@verb("show", "show one adapter's manifest")
def cmd_show(args: argparse.Namespace, data: DataDir) -> Output:
    entry = open_library(data).get(args.adapter)
    body = entry.to_dict()
    return Output(body, json.dumps(body, indent=2, ensure_ascii=False))


@verb("import", "import an adapter folder or .zip into the library")
def cmd_import(args: argparse.Namespace, data: DataDir) -> Output:
    entry = open_library(data).import_path(Path(args.path), name=args.name)
    text = f"Imported {entry.manifest.name} as {entry.id}"
    if entry.warnings:
        text += "\n" + "\n".join(f"warning: {w}" for w in entry.warnings)
    return Output(entry.to_dict(), text)


@verb("export", "export an adapter (peft folder, .zip, Ollama bundle or GGUF LoRA), smoke-tested")
def cmd_export(args: argparse.Namespace, data: DataDir) -> Output:
    fmt = "zip" if args.zip else args.format
    if args.no_smoke_test and fmt != "gguf":
        if fmt == "ollama":
            raise StudioError("--no-smoke-test is for peft folders and zips; use `export-ollama` for Ollama.")
        dest = open_library(data).export(args.adapter, Path(args.dest), as_zip=fmt == "zip")
        return Output({"path": str(dest), "format": fmt, "smoke": None}, f"Exported to {dest} (not smoke-tested)")
    from studio.ml.export.library_export import export_adapter

    result = export_adapter(open_library(data), args.adapter, Path(args.dest), fmt=fmt, gguf_dtype=args.gguf_type)
    if result.smoke is None:  # GGUF: read back and checked, not run (llama.cpp is not part of the studio)
        return Output(result.to_dict(), f"GGUF LoRA ({args.gguf_type}) written to {result.path}; read back and "
                                        "checked. Use it with llama.cpp's --lora or Ollama's ADAPTER.")
    return Output(result.to_dict(), f"Exported to {result.path}; smoke test answered: "
                                    f"{result.smoke.to_dict().get('answer', '')!r}")


@verb("rm", "move an adapter to the trash (restore with `restore`)")
def cmd_rm(args: argparse.Namespace, data: DataDir) -> Output:
    trash_id = open_library(data).delete(args.adapter)
    return Output({"trash_id": trash_id}, f"Moved to the trash as {trash_id}. Undo: lora-studio restore {trash_id}")


def _trash_listing(library) -> Output:
    items = library.trash()
    rows = [[t.trash_id, t.name, t.deleted, format_bytes(t.size_bytes)] for t in items]
    return Output({"trash": [t.to_dict() for t in items]},
                  table(rows, ["trash id", "name", "deleted", "size"]) if rows else "The trash is empty.")


@verb("restore", "restore an adapter from the trash (no argument: list the trash)")
def cmd_restore(args: argparse.Namespace, data: DataDir) -> Output:
    library = open_library(data)
    if not args.trash_id:
        return _trash_listing(library)
    entry = library.restore(args.trash_id)
    return Output(entry.to_dict(), f"Restored {entry.manifest.name} as {entry.id}")


@verb("trash", "list the trash, or empty it for good (--empty)")
def cmd_trash(args: argparse.Namespace, data: DataDir) -> Output:
    library = open_library(data)
    if not args.empty:
        return _trash_listing(library)
    if args.older_than is not None:
        check_number("--older-than", args.older_than)
    removed = library.empty_trash(older_than_days=args.older_than)
    age = f" deleted more than {args.older_than:g} days ago" if args.older_than is not None else ""
    return Output({"removed": removed}, f"Deleted {removed} adapter(s){age} from the trash for good.")


@verb("rename", "rename an adapter")
def cmd_rename(args: argparse.Namespace, data: DataDir) -> Output:
    entry = open_library(data).rename(args.adapter, args.new_name)
    return Output(entry.to_dict(), f"Renamed {entry.id} to {entry.manifest.name}")


@verb("tag", "add or remove tags")
def cmd_tag(args: argparse.Namespace, data: DataDir) -> Output:
    entry = open_library(data).tag(args.adapter, add=args.add or (), remove=args.remove or ())
    return Output(entry.to_dict(), f"{entry.manifest.name}: tags {', '.join(entry.manifest.tags) or '(none)'}")


def _arguments(add: AddParser) -> None:
    add("show").add_argument("adapter", help="adapter id or name")
    p = add("import")
    p.add_argument("path", help="adapter folder or .zip")
    p.add_argument("--name", help="name in the library (default: from the adapter)")
    p = add("export")
    p.add_argument("adapter")
    p.add_argument("dest", help="destination folder, or .zip file with --zip")
    p.add_argument("--zip", action="store_true", help="same as --format zip")
    p.add_argument("--format", choices=["peft", "zip", "ollama", "gguf"], default="peft",
                   help="gguf: a GGUF LoRA for llama.cpp / LM Studio / Ollama (Llama-family bases; DEST is a "
                        ".gguf file or a folder). For a merged GGUF model use `merge --format gguf`.")
    p.add_argument("--gguf-type", choices=["f32", "f16", "bf16"], default="f32",
                   help="tensor type of a GGUF LoRA (default f32)")
    p.add_argument("--no-smoke-test", action="store_true",
                   help="skip loading the export back and asking it a probe prompt")
    add("rm").add_argument("adapter")
    add("restore").add_argument("trash_id", nargs="?")
    p = add("trash")
    p.add_argument("--empty", action="store_true", help="delete what is in the trash for good")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --empty: only what was deleted "
                                                                     "more than DAYS days ago")
    p = add("rename")
    p.add_argument("adapter")
    p.add_argument("new_name")
    p = add("tag")
    p.add_argument("adapter")
    p.add_argument("--add", nargs="*")
    p.add_argument("--remove", nargs="*")


GROUP = VerbGroup((cmd_list, cmd_show, cmd_import, cmd_export, cmd_rm, cmd_restore, cmd_trash, cmd_rename,
                   cmd_tag),
                  _arguments)
