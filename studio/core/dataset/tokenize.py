"""Samples to token ids and labels with the base model's own tokenizer and chat template.

Chat: the conversation is rendered with `tokenizer.apply_chat_template`; the loss is taken on the
assistant answers only, each with the end-of-turn token that closes it (so the model learns to stop).
Assistant spans are found for any template by rendering the prefixes (messages[:i] with the
generation prompt, messages[:i+1] without) and mapping those character spans onto the tokens of the
full rendering (offsets of a fast tokenizer, else re-encoding the prefixes). A tokenizer without a
template gets a ChatML-like layout and a warning. Prose is cut into windows of at most seq_len tokens
on paragraph boundaries where possible, every token trained, EOS after the document's last token; it
is tokenized in bounded chunks, so a huge file costs its tokens and no more.
The first label of every sample is -100 (nothing can predict it), so packed samples never train
across a boundary.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from collections.abc import Iterator
from typing import Any

from studio.core.dataset.samples import IGNORE_INDEX, Message, Sample, TokenizedSample

log = logging.getLogger(__name__)

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
CHUNK_CHARS = 16_384  # the most text handed to the tokenizer in one piece
_BATCH_CHARS = 1 << 20  # pieces are tokenized together up to about this much text (or this many pieces)
_BATCH_PIECES = 512
MAX_CHARS_PER_TOKEN = 32  # a generous upper bound on the characters of one token
MIN_TOKENS_PER_MESSAGE = 2


def cut_conversation(sample: Sample, max_tokens: int) -> Sample | None:
    """The conversation cut where it certainly holds more than `max_tokens` tokens, or None if it may fit.

    Finding the answers renders every prefix of the conversation, which costs turns x length: a
    record of thousands of turns would take minutes for the first window's worth of tokens. No
    token spans more than MAX_CHARS_PER_TOKEN characters and every message costs at least
    MIN_TOKENS_PER_MESSAGE (its role marker), so what lies past that bound is never trained on.
    """
    bound = 0
    for index, message in enumerate(sample.messages):
        cost = MIN_TOKENS_PER_MESSAGE + -(-len(message.content) // MAX_CHARS_PER_TOKEN)
        if bound + cost > max_tokens:
            keep = max(0, (max_tokens - bound - MIN_TOKENS_PER_MESSAGE) * MAX_CHARS_PER_TOKEN) + MAX_CHARS_PER_TOKEN
            messages = (*sample.messages[:index], Message(message.role, message.content[:keep]))
            return dataclasses.replace(sample, messages=messages)
        bound += cost
    return None


def fallback_template(end_marker: str) -> str:
    return ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '"
            + end_marker + "' + '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class ChatRenderer:
    """Tokenizes samples for one tokenizer. `warning` is set when the tokenizer has no chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.template: str | None = None
        self.warning: str | None = None
        if not getattr(tokenizer, "chat_template", None):
            end = tokenizer.eos_token or "<|im_end|>"
            self.template = fallback_template(end.replace("'", "\\'"))
            self.warning = ("The base model's tokenizer has no chat template: conversations were laid out as "
                            f"'<|im_start|>role\\n...{end}' (ChatML-like). Chat with the adapter in the same layout.")
        self.end_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(token, "special", False):
                self.end_ids.add(token_id)
        if tokenizer.eos_token_id is not None:
            self.end_ids.add(tokenizer.eos_token_id)
        self.eos_id: int | None = tokenizer.eos_token_id
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.prefix_ids: list[int] = []  # e.g. BOS, when the tokenizer adds one to plain text
        if len(with_special) > len(plain) and with_special[len(with_special) - len(plain):] == plain:
            self.prefix_ids = list(with_special[: len(with_special) - len(plain)])

    # --- chat -------------------------------------------------------------------------------------

    def render_chat(self, sample: Sample) -> TokenizedSample | str:
        """Token ids with labels on assistant answers only; a string is the reason it failed."""
        msgs = [{"role": m.role, "content": m.content} for m in sample.messages]
        try:
            full = self._apply(msgs, add_generation_prompt=False)
        except Exception as err:  # jinja TemplateError, or a template's raise_exception()
            return f"the chat template refused this conversation ({_short(err)})"
        spans = self._assistant_spans(msgs, full)
        if spans is None:
            return "the chat template renders this conversation inconsistently (assistant turn not found)"
        ids, token_spans = self._tokens_for_spans(full, spans)
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in token_spans:
            end = self._through_end_of_turn(ids, start, end)
            labels[start:end] = ids[start:end]
        if ids:
            labels[0] = IGNORE_INDEX
        if all(label == IGNORE_INDEX for label in labels):
            return "no assistant tokens after rendering"
        return TokenizedSample(input_ids=ids, labels=labels, source=sample.source)

    def _apply(self, msgs: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if self.template is not None:
            kwargs["chat_template"] = self.template
        text = self.tokenizer.apply_chat_template(msgs, **kwargs)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected text")
        return text

    def _try_apply(self, msgs: list[dict[str, str]], add_generation_prompt: bool) -> str | None:
        try:
            return self._apply(msgs, add_generation_prompt=add_generation_prompt)
        except Exception:
            return None

    def _assistant_spans(self, msgs: list[dict[str, str]], full: str) -> list[tuple[int, int]] | None:
        """Character spans of `full` holding each assistant answer and the text that closes its turn."""
        spans: list[tuple[int, int]] = []
        cursor = 0
        for index, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            before = self._try_apply(msgs[:index], True) if index else None
            upto = self._try_apply(msgs[: index + 1], False)
            if (before is not None and upto is not None and upto.startswith(before) and full.startswith(upto)
                    and len(before) >= cursor):
                span = (len(before), len(upto))
            else:  # a template that renders the last turn differently: find the answer's text instead
                content = msg["content"].strip()
                at = full.find(content, cursor) if content else -1
                if at < 0:
                    return None
                end = at + len(content)
                if upto is not None and (k := upto.rfind(content)) >= 0:
                    closing = upto[k + len(content):]
                    if closing and full.startswith(closing, end):
                        end += len(closing)
                span = (at, end)
            spans.append(span)
            cursor = span[1]
        return spans

    def _tokens_for_spans(self, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
            token_spans = []
            first = 0
            for start, end in spans:  # spans and offsets both run forward: one pass, not tokens x turns
                while first < len(offsets) and offsets[first][1] <= start:
                    first += 1
                inside = []
                j = first
                while j < len(offsets) and offsets[j][0] < end:
                    a, b = offsets[j]
                    if b > a and b > start:
                        inside.append(j)
                    j += 1
                token_spans.append((inside[0], inside[-1] + 1) if inside else (0, 0))
            return ids, token_spans
        ids = list(tok(full, add_special_tokens=False)["input_ids"])

        def boundary(char_pos: int) -> int:
            prefix = tok(full[:char_pos], add_special_tokens=False)["input_ids"]
            n = 0
            while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
                n += 1
            return n

        return ids, [(boundary(start), boundary(end)) for start, end in spans]

    def _through_end_of_turn(self, ids: list[int], start: int, end: int) -> int:
        """Cut a span just after its last special token (the end-of-turn), dropping trailing newlines."""
        for j in range(end - 1, start - 1, -1):
            if ids[j] in self.end_ids:
                return j + 1
        return end

    # --- prose ------------------------------------------------------------------------------------

    def render_text(self, sample: Sample, seq_len: int) -> list[TokenizedSample]:
        """Windows of at most seq_len tokens, cut between paragraphs where possible, EOS at the end."""
        path = sample.source.rsplit(":", 1)[0]
        budget = max(1, seq_len - len(self.prefix_ids))
        windows: list[tuple[int, list[int]]] = []
        current: list[int] = []
        current_line = 0

        def add(line: int, ids: list[int], new_paragraph: bool) -> None:
            nonlocal current, current_line
            if new_paragraph and current and len(current) + len(ids) > budget:
                windows.append((current_line, current))
                current = []
            if not current:
                current_line = line
            pos = 0
            while len(current) + len(ids) - pos > budget:  # longer than a window: cut it (by index, no copies)
                room = budget - len(current)
                current.extend(ids[pos:pos + room])
                windows.append((current_line, current))
                pos, current, current_line = pos + room, [], line
            current.extend(ids[pos:])

        held: tuple[int, list[int], bool] | None = None  # one piece behind, so the last one gets the EOS
        for piece in self._prose_pieces(sample):
            if held is not None:
                add(*held)
            held = piece
        if held is None:
            return []
        if self.eos_id is not None:
            held[1].append(self.eos_id)
        add(*held)
        if current:
            windows.append((current_line, current))
        if len(windows) > 1 and len(windows[-1][1]) == 1:  # a lone EOS: give it one token of context
            (line, prev), (last_line, last) = windows[-2], windows[-1]
            windows[-2:] = [(line, prev[:-1]), (last_line, prev[-1:] + last)]
        out = []
        for line, ids in windows:
            if self.prefix_ids:
                ids = self.prefix_ids + ids
            labels = [IGNORE_INDEX, *ids[1:]]
            out.append(TokenizedSample(input_ids=ids, labels=labels, source=f"{path}:{line}"))
        return out

    def _prose_pieces(self, sample: Sample) -> Iterator[tuple[int, list[int], bool]]:
        """(line, token ids, starts a paragraph) for each paragraph, a long one in chunks, tokenized in batches.

        The tokenizer never sees more than CHUNK_CHARS at once: a whole 200 MB file in one call holds
        gigabytes of offsets and token strings inside the tokenizer.
        """
        batch: list[tuple[int, str, bool]] = []
        chars = 0
        for piece in _prose_chunks(sample):
            batch.append(piece)
            chars += len(piece[1])
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_PIECES:
                yield from self._encode_batch(batch)
                batch, chars = [], 0
        yield from self._encode_batch(batch)

    def _encode_batch(self, batch: list[tuple[int, str, bool]]) -> Iterator[tuple[int, list[int], bool]]:
        if not batch:
            return
        encoded = self.tokenizer([text for _, text, _ in batch], add_special_tokens=False)["input_ids"]
        for (line, _, new_paragraph), ids in zip(batch, encoded, strict=True):
            yield line, list(ids), new_paragraph


def _prose_chunks(sample: Sample) -> Iterator[tuple[int, str, bool]]:
    """(line, text, starts a paragraph): paragraphs with their separator, those over CHUNK_CHARS cut
    before a space or newline (so the cut does not change how words tokenize), blank ones skipped."""
    text = sample.text
    line = int(sample.source.rsplit(":", 1)[1])
    start = 0
    for match in itertools.chain(_PARAGRAPH_BREAK.finditer(text), (None,)):
        end = match.end() if match else len(text)
        first = True
        while start < end:
            cut = end if end - start <= CHUNK_CHARS else _cut_point(text, start, start + CHUNK_CHARS)
            chunk = text[start:cut]
            if chunk.strip():
                yield line, chunk, first
                first = False
            if sample.text_is_file:
                line += chunk.count("\n")
            start = cut


def _cut_point(text: str, start: int, limit: int) -> int:
    lowest = start + CHUNK_CHARS // 2
    at = max(text.rfind(" ", lowest, limit), text.rfind("\n", lowest, limit))
    return at if at > start else limit


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
