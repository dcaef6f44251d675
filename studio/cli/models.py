"""CLI verbs for the base models and this machine: `models`, `doctor`, `install-shortcut`.

Thin front doors onto studio.core.basemodels, studio.ml.base (the default model, the hardware
report) and studio.core.shortcuts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.verb import AddParser, Output, VerbGroup, print_progress, table, verb
from studio.core.paths import DataDir


@verb("models", "list the base models: converted ones, the Hugging Face cache, a folder")
def cmd_models(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.basemodels import list_base_models

    if args.download:
        from studio.core.basemodels import download_base_model

        info = download_base_model(args.download, data, progress=print_progress)
        return Output({"downloaded": info.to_dict()}, f"Downloaded {info.id} to {info.path}")
    if args.prepare_default:
        from studio.ml.base.default_model import ensure_default_model

        path = ensure_default_model(data, progress=print_progress)
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


@verb("install-shortcut", "add a desktop / start-menu entry with the icon")
def cmd_install_shortcut(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.core.shortcuts import install_shortcut

    paths = install_shortcut()
    return Output({"shortcuts": [str(p) for p in paths]}, "Added: " + ", ".join(str(p) for p in paths))


def _arguments(add: AddParser) -> None:
    p = add("models")
    p.add_argument("--folder", help="also inspect this local model folder")
    p.add_argument("--no-hf-cache", action="store_true", help="skip the Hugging Face cache")
    p.add_argument("--download", metavar="REPO_ID", help="download a model from the Hugging Face Hub")
    p.add_argument("--prepare-default", action="store_true", help="convert the default model now")


GROUP = VerbGroup((cmd_models, cmd_doctor, cmd_install_shortcut), _arguments)
