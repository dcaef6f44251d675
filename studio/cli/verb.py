"""What a CLI verb is: the `Verb` record, the `Output` it returns, and the group a verb module exports.

A verb module (library, models, train, blend, chat) makes each verb with `@verb(name, help)`, which
turns the function into a `Verb` record and registers nothing, and exports one `GROUP = VerbGroup(...)`
naming its verbs and the hook that declares their arguments. `studio.cli.registry` collects the
groups. Also here: the helpers several verb groups share (a text table, the adapter library, a long
job's progress on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.core.paths import DataDir
from studio.core.progress import StageProgress, describe_progress

if TYPE_CHECKING:
    from studio.core.library.store import AdapterLibrary


@dataclass(frozen=True)
class Output:
    """What a verb returns: the JSON object for --json and the text for people."""

    data: dict[str, Any]
    text: str
    exit_code: int = 0  # e.g. 130 for a training run the user stopped (the shell's code for Ctrl-C)


Handler = Callable[[argparse.Namespace, DataDir], Output]
# The hook of a group gets the subparser of one of its verbs by name (the parser made it already,
# with --json) and adds that verb's arguments.
AddParser = Callable[[str], argparse.ArgumentParser]


@dataclass(frozen=True)
class Verb:
    """One `lora-studio NAME`: the one-line help and the function that runs it."""

    name: str
    help: str
    run: Handler


def verb(name: str, help_text: str) -> Callable[[Handler], Verb]:
    """`@verb("list", "...")` makes the function below a Verb; its module lists it in its GROUP."""

    def make(func: Handler) -> Verb:
        return Verb(name, help_text, func)

    return make


@dataclass(frozen=True)
class VerbGroup:
    """The verbs of one module, in the order `--help` lists them, and the hook for their arguments."""

    verbs: tuple[Verb, ...]
    add_arguments: Callable[[AddParser], None]


def print_progress(event: StageProgress) -> None:
    """A long job's progress, one line each on stderr (stdout is for the result)."""
    print(describe_progress(event), file=sys.stderr, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns, two spaces apart, under a header line."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def open_library(data: DataDir) -> AdapterLibrary:
    """The adapter library of the data directory (imported when a verb needs it, not for --help)."""
    from studio.core.library.store import AdapterLibrary

    return AdapterLibrary(data)
