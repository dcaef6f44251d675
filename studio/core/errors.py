"""The studio's user-facing error: a message that says what was wrong and what to do."""

from __future__ import annotations


class StudioError(Exception):
    """An error meant for the user. `str(err)` is complete, plain-language advice."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip())
