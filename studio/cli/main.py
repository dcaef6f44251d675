"""`lora-studio VERB ...`: the parser, the dispatch to a verb and the handling of its errors.

Each verb (see studio.cli.registry) is a thin front door onto studio.core / studio.ml: it parses
arguments, calls one function, and prints either human text or, with `--json`, exactly one JSON
object on stdout. Errors go to stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from studio.cli.registry import GROUPS, VERBS
from studio.cli.verb import VerbGroup
from studio.core.errors import StudioError
from studio.core.leftovers import remove_leftovers
from studio.core.paths import data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-studio", description="LoRA Studio, headless. "
                                     "With no verb, the window opens.")
    parser.add_argument("--home", help="data directory (default: $LORA_STUDIO_HOME or the user data folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for group in GROUPS:
        _add_group(sub, group)
    return parser


def _add_group(sub: argparse._SubParsersAction, group: VerbGroup) -> None:
    parsers: dict[str, argparse.ArgumentParser] = {}
    for v in group.verbs:
        p = sub.add_parser(v.name, help=v.help, description=v.help)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        parsers[v.name] = p
    group.add_arguments(parsers.__getitem__)  # a name outside the group is a KeyError, at once


def run(argv: list[str]) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (kept by Python as lone surrogates) is printed escaped, not a crash.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
    try:
        from studio.ml.base.threads import apply_thread_share

        apply_thread_share()  # $LORA_STUDIO_TORCH_THREADS, else half the cores (torch is not imported here)
        data = data_dir(args.home) if args.home else data_dir()
        remove_leftovers(data)
        out = VERBS[args.verb].run(args, data)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    if args.json:
        print(json.dumps(out.data, ensure_ascii=False, default=str))
    else:
        print(out.text)
    return out.exit_code
