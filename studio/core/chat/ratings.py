"""Ratings from A/B votes: Bradley-Terry strengths, win rates, confidence intervals, blind labels.

`rate(outcomes)` fits a Bradley-Terry model by Hunter's MM iterations. A tie (and "both bad") counts
half a win to each side. A small prior (`prior` virtual games, half won, against a fixed reference of
strength 1) keeps every strength finite when an adapter has never won or never lost; `prior=0`
gives the plain maximum-likelihood fit. Ratings are shown on the Elo scale
(1000 + 400·log10(strength)) with a bootstrap percentile interval (votes resampled with
replacement, seeded, so the same votes always give the same interval), and win rates carry a
Wilson score interval. `blind_assignment` randomises which adapter is shown as A and which as B.

Pure Python; studio.core.chat.records hands it the outcomes.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

WINNERS = ("a", "b", "tie", "both_bad")
ELO_BASE = 1000.0
ELO_SCALE = 400.0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Outcome:
    adapter_a: str
    adapter_b: str
    winner: str  # a | b | tie | both_bad


@dataclass(frozen=True)
class Rating:
    adapter: str
    rank: int
    rating: float  # Elo scale: 1000 + 400 * log10(strength)
    ci_low: float  # 95% bootstrap interval of the rating (equal to rating when not computed)
    ci_high: float
    strength: float  # the Bradley-Terry strength
    votes: int
    wins: int
    losses: int
    ties: int  # including "both bad"
    both_bad: int
    win_rate: float  # (wins + ties / 2) / votes
    win_rate_low: float  # 95% Wilson interval
    win_rate_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcomes_of(votes: Iterable[Any]) -> list[Outcome]:
    """Outcomes from objects with adapter_a / adapter_b / winner (e.g. records.Vote) or 3-tuples."""
    out = []
    for vote in votes:
        a, b, w = (vote if isinstance(vote, tuple) else (vote.adapter_a, vote.adapter_b, vote.winner))
        if w not in WINNERS:
            raise ValueError(f"unknown winner {w!r}; expected one of {WINNERS}")
        if a != b:
            out.append(Outcome(str(a), str(b), w))
    return out


def _tally(outcomes: Sequence[Outcome]) -> tuple[dict[str, float], dict[tuple[str, str], int]]:
    """Score (wins + half ties) of each adapter, and the number of games of each pair."""
    score: dict[str, float] = defaultdict(float)
    games: dict[tuple[str, str], int] = defaultdict(int)
    for o in outcomes:
        pair = (o.adapter_a, o.adapter_b) if o.adapter_a < o.adapter_b else (o.adapter_b, o.adapter_a)
        games[pair] += 1
        score[o.adapter_a] += 1.0 if o.winner == "a" else 0.0 if o.winner == "b" else 0.5
        score[o.adapter_b] += 1.0 if o.winner == "b" else 0.0 if o.winner == "a" else 0.5
    return score, games


def bradley_terry(outcomes: Sequence[Outcome], *, prior: float = 1.0, max_iter: int = 10_000,
                  tol: float = 1e-10) -> dict[str, float]:
    """Bradley-Terry strengths by MM iterations (Hunter 2004). With `prior=0` the strengths are
    normalised to a geometric mean of 1; an adapter that never scored then gets a tiny strength."""
    score, games = _tally(outcomes)
    names = sorted({n for pair in games for n in pair})
    if not names:
        return {}
    opponents: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (x, y), n in games.items():
        opponents[x].append((y, n))
        opponents[y].append((x, n))
    strength = dict.fromkeys(names, 1.0)
    floor = 1e-12
    for _ in range(max_iter):
        new = {}
        for name in names:
            denominator = sum(n / (strength[name] + strength[o]) for o, n in opponents[name])
            denominator += prior / (strength[name] + 1.0)
            new[name] = max((score[name] + prior / 2) / denominator, floor)
        if prior == 0:
            mean_log = sum(math.log(v) for v in new.values()) / len(new)
            new = {k: max(v / math.exp(mean_log), floor) for k, v in new.items()}
        change = max(abs(math.log(new[k]) - math.log(strength[k])) for k in names)
        strength = new
        if change < tol:
            break
    return strength


def elo(strength: float) -> float:
    return ELO_BASE + ELO_SCALE * math.log10(strength)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def bootstrap_intervals(outcomes: Sequence[Outcome], *, rounds: int = 200, seed: int = 0, prior: float = 1.0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each adapter's Elo-scale rating over `rounds` resamples of the votes."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    n = len(outcomes)
    for _ in range(rounds):
        resample = [outcomes[rng.randrange(n)] for _ in range(n)]
        for name, s in bradley_terry(resample, prior=prior, max_iter=500, tol=1e-7).items():
            samples[name].append(elo(s))
    tail = (1 - level) / 2
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (_percentile(values, tail), _percentile(values, 1 - tail))
    return out


def rate(votes: Iterable[Any], *, prior: float = 1.0, bootstrap_rounds: int = 200, seed: int = 0) -> list[Rating]:
    """The leaderboard: one Rating per adapter, best first (ties broken by name)."""
    outcomes = outcomes_of(votes)
    strengths = bradley_terry(outcomes, prior=prior)
    intervals = bootstrap_intervals(outcomes, rounds=bootstrap_rounds, seed=seed, prior=prior) \
        if bootstrap_rounds > 0 and outcomes else {}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
    for o in outcomes:
        for me, side in ((o.adapter_a, "a"), (o.adapter_b, "b")):
            c = counts[me]
            if o.winner in ("tie", "both_bad"):
                c["ties"] += 1
                c["both_bad"] += o.winner == "both_bad"
            else:
                c["wins" if o.winner == side else "losses"] += 1
    ordered = sorted(strengths, key=lambda k: (-strengths[k], k))
    ratings = []
    for rank, name in enumerate(ordered, start=1):
        c = counts[name]
        votes_n = c["wins"] + c["losses"] + c["ties"]
        score = c["wins"] + c["ties"] / 2
        value = elo(strengths[name])
        low, high = intervals.get(name, (value, value))
        wl, wh = wilson_interval(score, votes_n)
        ratings.append(Rating(adapter=name, rank=rank, rating=value, ci_low=min(low, value), ci_high=max(high, value),
                              strength=strengths[name], votes=votes_n, wins=c["wins"], losses=c["losses"],
                              ties=c["ties"], both_bad=c["both_bad"], win_rate=score / votes_n if votes_n else 0.0,
                              win_rate_low=wl, win_rate_high=wh))
    return ratings


def blind_assignment(adapters: Sequence[str], rng: random.Random | None = None) -> dict[str, str]:
    """Label -> adapter for a blind comparison: the adapters in random order as A, B, C, D."""
    if len(adapters) > 26:
        raise ValueError("at most 26 panes can be labelled")
    order = list(adapters)
    (rng or random.SystemRandom()).shuffle(order)
    return {chr(ord("A") + i): adapter for i, adapter in enumerate(order)}


def winner_code(choice: str, assignment: dict[str, str], adapter_a: str, adapter_b: str) -> str:
    """Turn a blind choice ("A", "B", "tie", "both_bad") into the stored a|b|tie|both_bad code
    relative to (adapter_a, adapter_b)."""
    if choice in ("tie", "both_bad"):
        return choice
    if choice not in assignment:
        raise ValueError(f"unknown choice {choice!r}")
    picked = assignment[choice]
    if picked == adapter_a:
        return "a"
    if picked == adapter_b:
        return "b"
    raise ValueError(f"{picked!r} is neither {adapter_a!r} nor {adapter_b!r}")
