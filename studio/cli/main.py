"""`lora-studio VERB ...`: the studio's verbs, headless.

Each verb is a thin front door onto studio.core / studio.ml: it parses arguments, calls one
function, and prints either human text or, with `--json`, exactly one JSON object on stdout.
Errors go to stderr with a non-zero exit code. Knows nothing about Qt.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.paths import DataDir, data_dir

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What a verb returns: the JSON object for --json and the text for people."""

    data: dict[str, Any]
    text: str
    exit_code: int = 0  # e.g. 130 for a training run the user stopped (the shell's code for Ctrl-C)


Verb = Callable[[argparse.Namespace, DataDir], Output]
VERBS: dict[str, tuple[Verb, str]] = {}


def verb(name: str, help_text: str) -> Callable[[Verb], Verb]:
    def register(func: Verb) -> Verb:
        VERBS[name] = (func, help_text)
        return func

    return register


def human_size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num_bytes) < 1024 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- base models and hardware


@verb("models", "list the base models: converted ones, the Hugging Face cache, a folder")
def cmd_models(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.basemodels import list_base_models

    if args.download:
        from studio.core.basemodels import download_base_model

        info = download_base_model(args.download, data, progress=lambda m: print(m, file=sys.stderr))
        return Output({"downloaded": info.to_dict()}, f"Downloaded {info.id} to {info.path}")
    if args.prepare_default:
        from studio.ml.base.default_model import ensure_default_model

        path = ensure_default_model(
            data, progress=lambda f, m: print(f"{f * 100:3.0f}% {m}", file=sys.stderr))
        return Output({"path": str(path)}, f"Default model ready in {path}")
    extra = [Path(args.folder)] if args.folder else []
    models = list_base_models(data, extra_folders=extra, include_hf_cache=not args.no_hf_cache)
    rows = [[m.id, m.source, m.architecture, f"{m.parameters / 1e6:.0f}M", m.fingerprint,
             "yes" if m.has_chat_template else "no"] for m in models]
    text = table(rows, ["id", "source", "architecture", "params", "fingerprint", "chat template"]) if rows \
        else "No base models yet. Run `lora-studio models --prepare-default` to convert SmolLM2-135M-Instruct."
    return Output({"models": [m.to_dict() for m in models]}, text)


@verb("doctor", "report the GPU, memory, libraries and what this machine can train")
def cmd_doctor(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.ml.base.hardware import doctor_report, format_doctor

    report = doctor_report()
    report["data_directory"] = str(data.root)
    return Output(report, format_doctor(report) + f"\nData directory: {data.root}")


# ---------------------------------------------------------------- the adapter library


def _library(data: DataDir):
    from studio.core.library.store import AdapterLibrary

    return AdapterLibrary(data)


def _entry_row(entry) -> list[str]:
    m = entry.manifest
    return [entry.id, m.name, m.base_model or "?", m.method, str(m.rank), human_size(entry.size_bytes),
            ",".join(m.tags)]


@verb("list", "list the adapters in the library")
def cmd_list(args: argparse.Namespace, data: DataDir) -> Output:
    library = _library(data)
    entries = library.list()
    problems = library.problems()
    text = table([_entry_row(e) for e in entries], ["id", "name", "base", "method", "rank", "size", "tags"]) \
        if entries else "The library is empty. Import an adapter with `lora-studio import PATH`."
    if problems:
        text += "\n\nFolders that are not usable adapters:\n" + "\n".join(f"  {p}: {msg}" for p, msg in problems)
    return Output({"adapters": [e.to_dict() for e in entries],
                   "problems": [{"path": str(p), "message": msg} for p, msg in problems]}, text)


@verb("show", "show one adapter's manifest")
def cmd_show(args: argparse.Namespace, data: DataDir) -> Output:
    entry = _library(data).get(args.adapter)
    body = entry.to_dict()
    return Output(body, json.dumps(body, indent=2, ensure_ascii=False))


@verb("import", "import an adapter folder or .zip into the library")
def cmd_import(args: argparse.Namespace, data: DataDir) -> Output:
    entry = _library(data).import_path(Path(args.path), name=args.name)
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
        dest = _library(data).export(args.adapter, Path(args.dest), as_zip=fmt == "zip")
        return Output({"path": str(dest), "format": fmt, "smoke": None}, f"Exported to {dest} (not smoke-tested)")
    from studio.ml.export.library_export import export_adapter

    result = export_adapter(_library(data), args.adapter, Path(args.dest), fmt=fmt, gguf_dtype=args.gguf_type)
    if result.smoke is None:  # GGUF: read back and checked, not run (llama.cpp is not part of the studio)
        return Output(result.to_dict(), f"GGUF LoRA ({args.gguf_type}) written to {result.path}; read back and "
                                        "checked. Use it with llama.cpp's --lora or Ollama's ADAPTER.")
    return Output(result.to_dict(), f"Exported to {result.path}; smoke test answered: "
                                    f"{result.smoke.to_dict().get('answer', '')!r}")


@verb("rm", "move an adapter to the trash (restore with `restore`)")
def cmd_rm(args: argparse.Namespace, data: DataDir) -> Output:
    trash_id = _library(data).delete(args.adapter)
    return Output({"trash_id": trash_id}, f"Moved to the trash as {trash_id}. Undo: lora-studio restore {trash_id}")


@verb("restore", "restore an adapter from the trash (no argument: list the trash)")
def cmd_restore(args: argparse.Namespace, data: DataDir) -> Output:
    library = _library(data)
    if not args.trash_id:
        items = library.trash()
        rows = [[t.trash_id, t.name, t.deleted] for t in items]
        return Output({"trash": [t.to_dict() for t in items]},
                      table(rows, ["trash id", "name", "deleted"]) if rows else "The trash is empty.")
    entry = library.restore(args.trash_id)
    return Output(entry.to_dict(), f"Restored {entry.manifest.name} as {entry.id}")


@verb("rename", "rename an adapter")
def cmd_rename(args: argparse.Namespace, data: DataDir) -> Output:
    entry = _library(data).rename(args.adapter, args.new_name)
    return Output(entry.to_dict(), f"Renamed {entry.id} to {entry.manifest.name}")


@verb("tag", "add or remove tags")
def cmd_tag(args: argparse.Namespace, data: DataDir) -> Output:
    entry = _library(data).tag(args.adapter, add=args.add or (), remove=args.remove or ())
    return Output(entry.to_dict(), f"{entry.manifest.name}: tags {', '.join(entry.manifest.tags) or '(none)'}")


@verb("install-shortcut", "add a desktop / start-menu entry with the icon")
def cmd_install_shortcut(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.shortcuts import install_shortcut

    paths = install_shortcut()
    return Output({"shortcuts": [str(p) for p in paths]}, "Added: " + ", ".join(str(p) for p in paths))


# ---------------------------------------------------------------- parser and main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-studio", description="LoRA Studio, headless. "
                                     "With no verb, the window opens.")
    parser.add_argument("--home", help="data directory (default: $LORA_STUDIO_HOME or the user data folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def add(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=VERBS[name][1], description=VERBS[name][1])
        p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        return p

    p = add("models")
    p.add_argument("--folder", help="also inspect this local model folder")
    p.add_argument("--no-hf-cache", action="store_true", help="skip the Hugging Face cache")
    p.add_argument("--download", metavar="REPO_ID", help="download a model from the Hugging Face Hub")
    p.add_argument("--prepare-default", action="store_true", help="convert the default model now")
    add("doctor")
    add("list")
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
    p = add("rename")
    p.add_argument("adapter")
    p.add_argument("new_name")
    p = add("tag")
    p.add_argument("adapter")
    p.add_argument("--add", nargs="*")
    p.add_argument("--remove", nargs="*")
    add("install-shortcut")
    for extra in EXTRA_PARSERS:
        extra(sub, add)
    return parser


# Modules that add verbs (training, data scan, estimate...) register a parser hook here.
EXTRA_PARSERS: list[Callable[[Any, Callable[[str], argparse.ArgumentParser]], None]] = []


def run(argv: list[str]) -> int:
    _load_verb_modules()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # bitsandbytes warns on every CPU run that it cannot fetch optional kernels from the hub.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not args.verb:
        parser.print_help()
        return 2
    func = VERBS[args.verb][0]
    try:
        data = data_dir(args.home) if args.home else data_dir()
        out = func(args, data)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(out.data, ensure_ascii=False, default=str))
    else:
        print(out.text)
    return out.exit_code


def _load_verb_modules() -> None:
    """Import the modules that register more verbs (kept out of this file to keep it short)."""
    import importlib

    for name in ("studio.cli_data", "studio.cli.train", "studio.cli.blend", "studio.cli.chat"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
