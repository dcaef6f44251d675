"""Chat generation pieces: settings, typed events, prompts that fit the context, stop ids, streaming.

`GenerationSettings` and the event dataclasses (`Started`, `Token`, `Trimmed`, `TemplateWarning`,
`Finished`) are what a caller (the GUI's worker, the CLI) sees. The rest is the machinery the chat
engine drives `model.generate` with: `render_prompt` trims a conversation from its oldest turns to
fit the context window, `stop_ids`/`end_of_turn_token` are the one rule for where an answer ends
(the export smoke test and training samples use it too), `safe_pad_id` picks a pad id that is never
mistaken for a stop, `RowStreamer` turns the token ids of a (possibly
batched) `generate` into per-row text deltas, and `StopRequested` cancels it.

Importing this module does not import torch (the GUI may build settings on its own thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from studio.core.checks import check_number, check_positive, check_whole
from studio.core.errors import StudioError
from studio.ml.base.loading import chat_template_text

log = logging.getLogger(__name__)

# End-of-turn markers of common chat templates (ChatML, Llama 3, Gemma, Phi-3), most specific first.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eom_id|>", "<|endoftext|>")
STOP_REASONS = ("eos", "max_tokens", "stopped")

Message = Mapping[str, str]


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample an answer. `temperature == 0` means greedy (top-p / top-k are then unused)."""

    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def check(self) -> GenerationSettings:
        """Raise StudioError naming the first value out of range; return self."""
        for name in ("temperature", "top_p", "repetition_penalty"):
            check_number(name, getattr(self, name))
        check_whole("top_k", self.top_k)
        check_positive("max_new_tokens", self.max_new_tokens)
        if self.seed is not None:
            check_whole("seed", self.seed)
        if self.temperature < 0:
            raise StudioError(f"Temperature {self.temperature} is negative.", hint="Use 0 (greedy) to 2.")
        if not 0 < self.top_p <= 1:
            raise StudioError(f"Top-p {self.top_p} is outside (0, 1].", hint="Use e.g. 0.95, or 1 to turn it off.")
        if self.top_k < 0:
            raise StudioError(f"Top-k {self.top_k} is negative.", hint="Use e.g. 50, or 0 to turn it off.")
        if self.max_new_tokens < 1:
            raise StudioError("Max new tokens must be at least 1.")
        if self.repetition_penalty <= 0:
            raise StudioError(f"Repetition penalty {self.repetition_penalty} must be positive.",
                              hint="1.0 means no penalty; 1.1 is a mild one.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def generate_kwargs(self) -> dict[str, Any]:
        """The sampling part of a transformers GenerationConfig."""
        if self.greedy:
            return {"do_sample": False, "repetition_penalty": float(self.repetition_penalty)}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": int(self.top_k), "repetition_penalty": float(self.repetition_penalty)}


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Started:
    """Generation of one answer began. `batched`: it shares one `generate` call with other panes."""

    adapter: str
    prompt_tokens: int
    batched: bool


@dataclass(frozen=True)
class Token:
    """New text of the answer (a decoded piece; the pieces concatenate to `Finished.text`)."""

    text: str


@dataclass(frozen=True)
class Trimmed:
    """The oldest turns were left out so the conversation fits the context window."""

    n_dropped_turns: int  # messages left out (a user turn and its answer go together)
    prompt_tokens: int
    context_tokens: int


@dataclass(frozen=True)
class TemplateWarning:
    """The adapter was trained with a chat template other than the one used now."""

    adapter: str
    message: str


@dataclass(frozen=True)
class Finished:
    """The answer is complete. `stop_reason`: eos (end of turn), max_tokens, or stopped (cancelled)."""

    text: str
    tokens: int  # new tokens, not counting the end-of-turn token
    tokens_per_second: float  # new tokens / seconds from the start of generate (prefill included)
    stop_reason: str
    seconds: float = 0.0
    adapter: str = ""  # "base", an adapter id or a live blend's name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ChatEvent = Started | Token | Trimmed | TemplateWarning | Finished


# ---------------------------------------------------------------- templates and prompts


def normalize_messages(messages: Sequence[Message], system_prompt: str = "") -> list[dict[str, str]]:
    """Plain {role, content} dicts; `system_prompt` (when given) replaces any system message."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise StudioError(f"Message {i + 1} should have a role (system, user or assistant) and text content.")
        out.append({"role": role, "content": content})
    if system_prompt:
        out = [{"role": "system", "content": system_prompt}] + [m for m in out if m["role"] != "system"]
    if not any(m["role"] == "user" for m in out):
        raise StudioError("The conversation has no user message to answer.")
    return out


def apply_template(tokenizer, messages: list[dict[str, str]], template: str | None) -> str:
    """The prompt text, ending with the assistant's turn opening. Templates that refuse a system
    role get the system prompt folded into the first user message."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if template:
        kwargs["chat_template"] = template
    elif not chat_template_text(tokenizer):
        # No chat template at all: a plain transcript is the best guess.
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as err:  # jinja's TemplateError: e.g. "System role not supported"
        if not messages or messages[0]["role"] != "system":
            raise StudioError(f"The chat template could not render this conversation: {err}.") from err
        system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        first_user = next(m for m in rest if m["role"] == "user")
        first_user["content"] = f"{system}\n\n{first_user['content']}"
        return tokenizer.apply_chat_template(rest, **kwargs)


@dataclass(frozen=True)
class Prompt:
    text: str
    input_ids: list[int]
    dropped: int  # messages left out to fit


def render_prompt(tokenizer, messages: list[dict[str, str]], template: str | None, context_tokens: int,
                  max_new_tokens: int) -> Prompt:
    """Render the conversation, leaving out the oldest turns (never the system prompt or the newest
    user message) until prompt + `max_new_tokens` fit in `context_tokens`."""
    budget = context_tokens - max_new_tokens
    if budget < 1:
        raise StudioError(f"Max new tokens ({max_new_tokens}) leaves no room for the prompt in this model's "
                          f"context of {context_tokens} tokens.", hint="Lower max new tokens.")
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    while True:
        text = apply_template(tokenizer, system + turns, template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return Prompt(text=text, input_ids=list(ids), dropped=dropped)
        if len(turns) <= 1:
            raise StudioError(f"The message is too long: the prompt takes {len(ids)} tokens but only {budget} fit "
                              f"with {max_new_tokens} new tokens in the model's context of {context_tokens}.",
                              hint="Shorten the message or the system prompt, or lower max new tokens.")
        # Drop the oldest turn, and any answers left orphaned at the front, so a user turn leads.
        turns = turns[1:]
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
            dropped += 1


# ---------------------------------------------------------------- stop and pad ids


def end_of_turn_token(tokenizer, template: str | None = None) -> str:
    """The token that closes an assistant turn: the first end-of-turn marker the chat template writes
    (default: the tokenizer's template), else EOS. It is always one of `stop_ids`."""
    template = chat_template_text(tokenizer) if template is None else template
    vocab = tokenizer.get_vocab()
    for marker in END_OF_TURN_MARKERS:
        if marker in template and marker in vocab:
            return marker
    if tokenizer.eos_token is None:
        raise StudioError("This tokenizer has neither an end-of-turn token nor an EOS token, so an "
                          "answer can never end.", hint="Use a chat model with a chat template.")
    return tokenizer.eos_token


def stop_ids(tokenizer, *, template: str | None = None, generation_config: Any = None) -> list[int]:
    """The ids that end an answer, for chat, samples, previews and exports alike: EOS, every
    end-of-turn marker the chat template writes, and the generation config's EOS."""
    vocab = tokenizer.get_vocab()
    template = chat_template_text(tokenizer) if template is None else template
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in [value] if isinstance(value, int) else list(value or []):
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    add(tokenizer.eos_token_id)
    for marker in END_OF_TURN_MARKERS:
        if marker in template and marker in vocab:
            add(vocab[marker])
    add(getattr(generation_config, "eos_token_id", None))
    if not ids:
        raise StudioError("This model has neither an EOS token nor an end-of-turn token, so answers could not end.",
                          hint="Use a chat model with a chat template.")
    return ids


def safe_pad_id(tokenizer, stops: Sequence[int]) -> int:
    """A pad id that is not a stop id (models whose pad token *is* EOS get another special token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id,
                      *tokenizer.all_special_ids):
        if candidate is not None and candidate not in stops:
            return int(candidate)
    return next(i for i in range(len(tokenizer)) if i not in stops)


# ---------------------------------------------------------------- streaming


class IncrementalDecoder:
    """Token ids in, new text out; holds back incomplete UTF-8 so every piece is printable."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            piece = now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.pieces.append(piece)
            return piece
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        piece = now[len(before):] if len(now) > len(before) else ""
        self.prefix = self.read = len(self.ids)
        if piece:
            self.pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self.pieces)


Emit = Callable[[int, ChatEvent], None]


class RowStreamer:
    """A transformers streamer (`put`/`end`) for a batch: each row's tokens become that pane's events.

    Row r reports as pane `panes[r]` with adapter label `labels[r]`. A row finishes at its first stop
    id (`eos`), after `max_new_tokens` (`max_tokens`), or when generate ends early (`stopped`).
    """

    def __init__(self, tokenizer, panes: Sequence[int], labels: Sequence[str], stops: Sequence[int],
                 max_new_tokens: int, emit: Emit, cancelled: Callable[[], bool]) -> None:
        self.panes, self.labels, self.stops = list(panes), list(labels), set(stops)
        self.max_new_tokens = max_new_tokens
        self.emit, self.cancelled = emit, cancelled
        self.decoders = [IncrementalDecoder(tokenizer) for _ in self.panes]
        self.counts = [0] * len(self.panes)
        self.done = [False] * len(self.panes)
        self.prompt_seen = False
        self.started = time.perf_counter()

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt ids
            self.prompt_seen = True
            self.started = time.perf_counter()
            return
        tokens = value.reshape(-1).tolist()
        for row, token in enumerate(tokens):
            if self.done[row]:
                continue
            if token in self.stops:
                self._finish(row, "eos")
                continue
            self.counts[row] += 1
            piece = self.decoders[row].push(int(token))
            if piece:
                self.emit(self.panes[row], Token(piece))
            if self.counts[row] >= self.max_new_tokens:
                self._finish(row, "max_tokens")

    def end(self) -> None:
        for row in range(len(self.panes)):
            if not self.done[row]:
                self._finish(row, "stopped" if self.cancelled() else "max_tokens")

    def _finish(self, row: int, reason: str) -> None:
        self.done[row] = True
        piece = self.decoders[row].flush()
        if piece:
            self.emit(self.panes[row], Token(piece))
        seconds = max(time.perf_counter() - self.started, 1e-9)
        n = self.counts[row]
        self.emit(self.panes[row], Finished(text=self.decoders[row].text, tokens=n, tokens_per_second=n / seconds,
                                            stop_reason=reason, seconds=seconds, adapter=self.labels[row]))


class StopRequested:
    """A stopping criterion: every row stops once `should_stop()` (or the engine's cancel) says so."""

    def __init__(self, *checks: Callable[[], bool] | None) -> None:
        self.checks = [c for c in checks if c is not None]
        self.triggered = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if not self.triggered and any(check() for check in self.checks):
            self.triggered = True
        return torch.full((input_ids.shape[0],), self.triggered, dtype=torch.bool, device=input_ids.device)
