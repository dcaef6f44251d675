"""The data types that flow through the dataset pipeline: parsed samples, tokenized samples, results.

A `Sample` is what a file reader understood of one record (a conversation or a piece of prose), with
the place it came from. A `TokenizedSample` is the same thing as token ids and labels for one base
model's tokenizer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from studio.core.dataset.report import DataReport

ROLES = ("system", "user", "assistant")
_WHITESPACE = re.compile(r"\s")
_HASH_STEP = 1 << 16
IGNORE_INDEX = -100  # label value for tokens that take no loss (torch's CrossEntropyLoss default)


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Sample:
    """One training example as read from the folder, before tokenization."""

    kind: Literal["chat", "text"]
    source: str  # "relative/path.jsonl:12"
    messages: tuple[Message, ...] = ()  # kind == "chat"
    text: str = ""  # kind == "text"
    text_is_file: bool = False  # the text is a whole .txt/.md file, so its lines are the file's lines

    def dedup_key(self) -> bytes:
        """Whitespace-normalised identity used to find exact duplicates: a digest, so a scan holds
        16 bytes per sample for it, not a second copy of every text."""
        digest = hashlib.blake2b(self.kind.encode(), digest_size=16)
        parts = [("", self.text)] if self.kind == "text" else [(m.role, m.content) for m in self.messages]
        for role, text in parts:
            digest.update(f"\x00{role}\x01".encode())
            _hash_normalized(digest, text)
        return digest.digest()


def _hash_normalized(digest: Any, text: str) -> None:
    """digest.update(" ".join(text.split())) in steps of about 64 kB, cut at whitespace: split() on a
    whole 60 MB file holds a string object per word, 20 times the file."""
    pos, first = 0, True
    while pos < len(text):
        end = pos + _HASH_STEP
        if end < len(text):
            space = _WHITESPACE.search(text, end)
            end = space.start() if space else len(text)
        words = text[pos:end].split()
        if words:
            digest.update((" " if not first else "").encode() + " ".join(words).encode("utf-8", "surrogatepass"))
            first = False
        pos = end


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    source: str  # "relative/path.jsonl:12"

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class ScanResult:
    """What `scan_folder` found: the usable samples and the report (without token statistics)."""

    samples: list[Sample]
    report: DataReport


@dataclass
class PreparedDataset:
    train: list[TokenizedSample]
    validation: list[TokenizedSample]
    report: DataReport
