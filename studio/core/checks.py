"""The checks of a user's value, one rule each, that every front door shares (TrainConfig, estimate, scan, chat).

Each raises StudioError naming the field, so `--alpha nan` or `"seq_len": 0` in a config file read
the same wherever they are given. NaN and the infinities are never numbers here.
"""

from __future__ import annotations

import math
from typing import Any

from studio.core.errors import StudioError

MIN_SEQ_LEN = 16


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise StudioError(f"{name} {value!r} is not supported.", hint=f"Use one of: {', '.join(allowed)}.")


def check_positive(name: str, value: Any) -> None:
    """A whole number, 1 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise StudioError(f"{name} must be a positive whole number, not {value!r}.")


def check_whole(name: str, value: Any) -> None:
    """A whole number, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StudioError(f"{name} must be a whole number, 0 or more, not {value!r}.")


def check_number(name: str, value: Any) -> None:
    """A finite int or float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StudioError(f"{name} must be a number, not {value!r}.")


def check_seq_len(name: str, value: Any) -> None:
    """A sequence length in tokens that a model can train or count on."""
    check_positive(name, value)
    if value < MIN_SEQ_LEN:
        raise StudioError(f"{name} {value} is too short.", hint="Use 256 to 4096 tokens.")


def check_fits_positions(name: str, value: int, base_config: dict[str, Any], base_label: str) -> None:
    """A sequence length no longer than the positions the base model was built for (when it says)."""
    limit = next((base_config[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                  if isinstance(base_config.get(k), int) and base_config[k] > 0), None)
    if limit is not None and value > limit:
        raise StudioError(f"{name} {value} is longer than the {limit} positions base model {base_label} has.",
                          hint=f"Use at most {limit} tokens.")
