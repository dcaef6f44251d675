"""Record shapes: recognise what one JSON record or one CSV header looks like, and turn it into a Sample.

Shapes: OpenAI "messages", ShareGPT "conversations", Alpaca (instruction/input/output),
prompt/completion, question/answer, and {"text": ...} prose. A shape is decided here for a single
record; choosing one shape per file (by majority) is the scanner's job. Single-turn shapes become a
user turn and an assistant turn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from studio.core.dataset.samples import ROLES, Message, Sample

_SURROGATE = re.compile("[\ud800-\udfff]")  # what json.loads makes of an unpaired "\\ud800"
SHAPES = ("messages", "sharegpt", "alpaca", "prompt_completion", "qa", "text")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
# CSV/TSV header synonyms (lower-cased), in order of preference.
USER_COLUMNS = ("question", "q", "instruction", "prompt", "input", "query", "user", "human")
ANSWER_COLUMNS = ("answer", "a", "response", "completion", "output", "reply", "assistant", "gpt")
EXPECTED_COLUMNS = "question/answer, instruction/response, prompt/completion or input/output"


def detect_shape(record: Any) -> str | None:
    """The shape of one parsed JSON value, or None when it has none we know."""
    if not isinstance(record, Mapping):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "question" in record and "answer" in record:
        return "qa"
    if "text" in record:
        return "text"
    return None


def describe_unknown(record: Any) -> str:
    if isinstance(record, Mapping):
        keys = ", ".join(sorted(str(k) for k in record)[:8]) or "none"
        return f"unknown shape (keys: {keys})"
    return f"unknown shape (a JSON {type(record).__name__}, expected an object)"


def to_sample(shape: str, record: Mapping[str, Any], source: str) -> Sample | str:
    """Convert a record of a known shape; a string return is the reason it was rejected."""
    if shape == "messages":
        return _conversation(record.get("messages"), "role", "content", None, source)
    if shape == "sharegpt":
        return _conversation(record.get("conversations"), "from", "value", SHAREGPT_ROLES, source)
    if shape == "text":
        text = record.get("text")
        if not isinstance(text, str):
            return "'text' is not a string"
        if not text.strip():
            return "empty text"
        return Sample(kind="text", source=source, text=text)
    if shape == "alpaca":
        return single_turn(record.get("instruction"), record.get("output"), source,
                           extra=record.get("input"), system=record.get("system"), what="instruction")
    if shape == "prompt_completion":
        return single_turn(record.get("prompt"), record.get("completion"), source, what="prompt")
    if shape == "qa":
        return single_turn(record.get("question"), record.get("answer"), source, what="question")
    raise ValueError(f"unknown shape {shape!r}")


def invalid_text(sample: Sample) -> str | None:
    """Why a sample's text cannot be tokenized, or None. JSON can spell a lone UTF-16 surrogate
    ("\\ud800"), which is no character at all: tokenizers refuse it."""
    texts = [sample.text] if sample.kind == "text" else [m.content for m in sample.messages]
    for text in texts:
        found = _SURROGATE.search(text)  # (not text.encode(): a copy of every text just to look)
        if found:
            return (f"invalid character: a lone surrogate (\\u{ord(found.group()):04x} in the JSON) is not "
                    "text. Fix that escape (it needs its pair) or remove it.")
    return None


def single_turn(prompt: Any, answer: Any, source: str, *, extra: Any = None, system: Any = None,
                what: str = "prompt") -> Sample | str:
    """A user turn (prompt, plus `extra` context below it) and an assistant turn."""
    for name, value in ((what, prompt), ("answer", answer), ("input", extra), ("system", system)):
        if value is not None and not isinstance(value, str):
            return f"{name} is not a string"
    prompt, answer = (prompt or "").strip(), (answer or "").strip()
    if not prompt:
        return f"empty {what}"
    if not answer:
        return "empty assistant answer"
    user = f"{prompt}\n\n{extra.strip()}" if extra and extra.strip() else prompt
    messages = [Message("user", user), Message("assistant", answer)]
    if system and system.strip():
        messages.insert(0, Message("system", system.strip()))
    return Sample(kind="chat", source=source, messages=tuple(messages))


def _conversation(turns: Any, role_key: str, content_key: str, role_map: dict[str, str] | None,
                  source: str) -> Sample | str:
    if not isinstance(turns, list) or not turns:
        return "conversation is empty or not a list"
    messages: list[Message] = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            return f"message {number} lacks '{role_key}' or '{content_key}'"
        raw_role = str(turn[role_key]).strip().lower()
        role = role_map.get(raw_role) if role_map is not None else raw_role
        if role not in ROLES:
            return f"unknown role '{turn[role_key]}' in message {number}"
        content = _text_content(turn[content_key])
        if content is None:
            return f"message {number} has no text content"
        if role == "assistant" and not content.strip():
            return f"empty assistant answer (message {number})"
        messages.append(Message(role, content))
    if not any(m.role == "assistant" for m in messages):
        return "no assistant turn"
    return Sample(kind="chat", source=source, messages=tuple(messages))


def _text_content(value: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        parts = []
        for part in value:
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                return None
            parts.append(part["text"])
        return "".join(parts)
    return None


def csv_columns(header: list[str]) -> tuple[str, dict[str, int]] | None:
    """Map a CSV/TSV header to (shape name, {"user"|"answer"|"input"|"system": column index})."""
    names = [h.strip().lower().lstrip("\ufeff") for h in header]

    def find(options: tuple[str, ...], exclude: set[int]) -> int | None:
        for option in options:
            for index, name in enumerate(names):
                if name == option and index not in exclude:
                    return index
        return None

    columns: dict[str, int] = {}
    if "instruction" in names and "input" in names:  # Alpaca as a table: instruction + input + output
        columns["user"], columns["input"] = names.index("instruction"), names.index("input")
        answer = find(("output", "response", "answer", "completion"), set(columns.values()))
    else:
        user = find(USER_COLUMNS, set())
        if user is None:
            return None
        columns["user"] = user
        answer = find(ANSWER_COLUMNS, {user})
    if answer is None:
        return None
    columns["answer"] = answer
    if "system" in names:
        columns["system"] = names.index("system")
    return f"{names[columns['user']]}/{names[answer]}", columns
