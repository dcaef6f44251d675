"""CLI verbs for chatting and comparing: `chat`, `compare`, `votes`, `leaderboard`.

Thin front doors onto studio.ml.chat.engine and studio.core.chat.records. `chat` without `--prompt` is
an interactive terminal chat (lines from stdin until end of input or `/exit`; `/reset` starts over).
Heavy imports (torch, transformers) happen inside the verbs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from studio.cli.verb import AddParser, Output, VerbGroup, print_progress, table, verb
from studio.core.errors import StudioError
from studio.core.paths import DataDir

BASE = "base"


def _library(data: DataDir):
    from studio.core.library.store import AdapterLibrary

    return AdapterLibrary(data)


def _settings(args: argparse.Namespace):
    from studio.ml.chat.generation import GenerationSettings

    defaults = GenerationSettings()
    return GenerationSettings(
        system_prompt=args.system or "",
        temperature=defaults.temperature if args.temperature is None else args.temperature,
        top_p=defaults.top_p if args.top_p is None else args.top_p,
        top_k=defaults.top_k if args.top_k is None else args.top_k,
        max_new_tokens=defaults.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
        repetition_penalty=defaults.repetition_penalty if args.repetition_penalty is None
        else args.repetition_penalty,
        seed=args.seed,
    ).check()


def _base(args: argparse.Namespace, data: DataDir, adapters: list[str]):
    """--base when given; else the base the first adapter records, when it is here; else the default model."""
    from studio.ml.base.default_model import resolve_base

    base = args.base
    named = [a for a in adapters if a != BASE]
    if not base and named:
        from studio.core.library.adapter_folder import adapter_base

        entry = _library(data).get(named[0])
        try:
            base = adapter_base(data, entry.path, entry.manifest).id
        except StudioError:
            base = None  # the default then, which refuses the adapter by name if it does not fit
    return resolve_base(data, base, progress=print_progress)[0]


def _engine(args: argparse.Namespace, data: DataDir, adapters: list[str]):
    from studio.ml.chat.engine import ChatEngine

    base = _base(args, data, adapters)
    if args.verbose:
        print(f"Loading {base.id}…", file=sys.stderr)
    return ChatEngine(base, quant=args.quant, library=_library(data))


def _base_dict(engine) -> dict[str, Any]:
    return {"id": engine.base_info.id, "path": str(engine.base_folder), "fingerprint": engine.fingerprint,
            "quant": engine.quant, "device": engine.device}


def _collect(events) -> dict[int, dict[str, Any]]:
    """Per pane: its Finished event, warnings, trimming and whether it ran batched."""
    from studio.ml.chat.generation import Finished, Started, TemplateWarning, Trimmed

    panes: dict[int, dict[str, Any]] = {}
    for pane, event in events:
        slot = panes.setdefault(pane, {"warnings": [], "trimmed": 0, "batched": False})
        if isinstance(event, Started):
            slot["batched"] = event.batched
            slot["prompt_tokens"] = event.prompt_tokens
        elif isinstance(event, TemplateWarning):
            slot["warnings"].append(event.message)
        elif isinstance(event, Trimmed):
            slot["trimmed"] = event.n_dropped_turns
        elif isinstance(event, Finished):
            slot["finished"] = event
    return panes


def _answer_dict(label: str, slot: dict[str, Any]) -> dict[str, Any]:
    finished = slot["finished"]
    return {"adapter": label, "adapter_id": finished.adapter, "text": finished.text, "tokens": finished.tokens,
            "tokens_per_second": round(finished.tokens_per_second, 2), "seconds": round(finished.seconds, 3),
            "stop_reason": finished.stop_reason, "prompt_tokens": slot.get("prompt_tokens", 0),
            "trimmed_turns": slot["trimmed"], "warnings": slot["warnings"]}


@verb("chat", "chat with the base model or an adapter (interactive without --prompt)")
def cmd_chat(args: argparse.Namespace, data: DataDir) -> Output:
    adapter = args.adapter or BASE
    settings = _settings(args)
    engine = _engine(args, data, [adapter])
    if args.prompt is None:
        return _interactive(engine, adapter, settings, as_json=args.json)
    slot = _collect(engine.stream_many([[{"role": "user", "content": args.prompt}]], [adapter], settings))[0]
    answer = _answer_dict(adapter, slot)
    body = {"prompt": args.prompt, "base": _base_dict(engine), "settings": settings.to_dict(), **answer}
    text = "\n".join([*(f"warning: {w}" for w in answer["warnings"]), answer["text"]])
    return Output(body, text)


def _interactive(engine, adapter: str, settings, *, as_json: bool) -> Output:
    from studio.ml.chat.generation import Finished, TemplateWarning, Token, Trimmed

    history: list[dict[str, str]] = []
    turns = 0
    tty = sys.stdin.isatty()
    if tty:
        print(f"Chatting with {adapter} on {engine.base_info.id}. /reset starts over, /exit quits.", file=sys.stderr)
    while True:
        if tty:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        finished = None
        for event in engine.stream(history, adapter, settings):
            if isinstance(event, Token) and not as_json:
                print(event.text, end="", flush=True)
            elif isinstance(event, (TemplateWarning, Trimmed)):
                note = event.message if isinstance(event, TemplateWarning) else \
                    f"(left out the {event.n_dropped_turns} oldest messages to fit the context)"
                print(note, file=sys.stderr)
            elif isinstance(event, Finished):
                finished = event
        assert finished is not None
        history.append({"role": "assistant", "content": finished.text})
        turns += 1
        if as_json:
            print(json.dumps({"turn": turns, "prompt": line, **finished.to_dict()}, ensure_ascii=False), flush=True)
        else:
            print(flush=True)
    return Output({"turns": turns, "adapter": adapter, "base": _base_dict(engine)}, f"({turns} turns)")


@verb("compare", "ask two adapters (or an adapter and `base`) the same prompt, side by side")
def cmd_compare(args: argparse.Namespace, data: DataDir) -> Output:
    if args.a == args.b:
        raise StudioError("Compare two different adapters (or an adapter and `base`).")
    settings = _settings(args)
    engine = _engine(args, data, [args.a, args.b])
    messages = [{"role": "user", "content": args.prompt}]
    panes = _collect(engine.stream_many([messages], [args.a, args.b], settings, batch=not args.no_batch))
    answers = [_answer_dict(label, panes[i]) for i, label in enumerate((args.a, args.b))]
    body = {"prompt": args.prompt, "base": _base_dict(engine), "settings": settings.to_dict(),
            "batched": all(panes[i]["batched"] for i in panes), "answers": answers}
    blocks = []
    for a in answers:
        head = f"== {a['adapter']} ({a['tokens']} tokens, {a['tokens_per_second']:.1f} tok/s, {a['stop_reason']})"
        blocks.append("\n".join([head, *(f"warning: {w}" for w in a["warnings"]), a["text"]]))
    return Output(body, "\n\n".join(blocks))


def _records(data: DataDir):
    from studio.core.chat.records import Records

    return Records(data.database)


def _fingerprint(data: DataDir, base: str | None) -> str | None:
    if not base:
        return None
    from studio.core.basemodels import resolve_base_model

    try:
        return resolve_base_model(data, base).fingerprint
    except StudioError:
        return base  # votes may be keyed by a base id or a fingerprint that is no longer on disk


@verb("votes", "list the A/B votes (optionally of one base or adapter)")
def cmd_votes(args: argparse.Namespace, data: DataDir) -> Output:
    votes = _records(data).votes(base=_fingerprint(data, args.base), adapter=args.adapter)
    rows = [[str(v.id), v.created[:19], v.adapter_a, v.adapter_b, v.winner, "yes" if v.blind else "no",
             v.prompt[:40]] for v in votes]
    text = table(rows, ["id", "when", "A", "B", "winner", "blind", "prompt"]) if rows else "No votes yet."
    return Output({"votes": [v.to_dict() for v in votes]}, text)


@verb("leaderboard", "rank adapters from the A/B votes (Bradley-Terry), per base model")
def cmd_leaderboard(args: argparse.Namespace, data: DataDir) -> Output:
    records = _records(data)
    wanted = _fingerprint(data, args.base)
    bases = [wanted] if wanted else records.bases()
    boards = {b: records.leaderboard(b) for b in bases}
    parts = []
    for base, ratings in boards.items():
        rows = [[str(r.rank), r.adapter, f"{r.rating:.0f}", f"{r.ci_low:.0f}–{r.ci_high:.0f}",
                 f"{r.win_rate * 100:.0f}%", str(r.votes)] for r in ratings]
        parts.append(f"Base {base}:\n" + (table(rows, ["#", "adapter", "rating", "95% CI", "win rate", "votes"])
                                          if rows else "  no votes"))
    return Output({"leaderboards": {b: [r.to_dict() for r in rs] for b, rs in boards.items()}},
                  "\n\n".join(parts) or "No votes yet.")


def _generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base model id or folder (default: the adapter's base, else the default model)")
    p.add_argument("--quant", choices=["auto", "4bit", "none"], default="auto",
                   help="auto: 4-bit on CUDA, full precision on a CPU")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 for greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)


def _add_parsers(add: AddParser) -> None:
    p = add("chat")
    p.add_argument("--adapter", help="adapter id or name (default: the base model alone)")
    p.add_argument("--prompt", help="one question; without it, chat interactively")
    _generation_options(p)
    p = add("compare")
    p.add_argument("a", help="adapter id or name, or `base`")
    p.add_argument("b", help="adapter id or name, or `base`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--no-batch", action="store_true", help="answer one after the other instead of in one batch")
    _generation_options(p)
    p = add("votes")
    p.add_argument("--base", help="only votes on this base model (id, folder or fingerprint)")
    p.add_argument("--adapter", help="only votes involving this adapter")
    add("leaderboard").add_argument("--base", help="one base model (id, folder or fingerprint)")


GROUP = VerbGroup((cmd_chat, cmd_compare, cmd_votes, cmd_leaderboard), _add_parsers)
