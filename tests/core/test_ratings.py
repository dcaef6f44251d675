"""Rating maths: Bradley-Terry on known inputs, ties count half, intervals shrink with more votes,
Wilson intervals, and blind labels that really are random."""

from __future__ import annotations

import math
import random

import pytest

from studio.core.chat.ratings import (
    Outcome,
    blind_assignment,
    bradley_terry,
    elo,
    outcomes_of,
    rate,
    wilson_interval,
    winner_code,
)


def votes(a: str, b: str, *, a_wins: int = 0, b_wins: int = 0, ties: int = 0, both_bad: int = 0) -> list[tuple]:
    return ([(a, b, "a")] * a_wins + [(a, b, "b")] * b_wins + [(a, b, "tie")] * ties
            + [(a, b, "both_bad")] * both_bad)


def test_two_adapters_known_ratio():
    # Maximum likelihood for two players: strength ratio = wins ratio.
    s = bradley_terry(outcomes_of(votes("x", "y", a_wins=3, b_wins=1)), prior=0)
    assert s["x"] / s["y"] == pytest.approx(3.0, rel=1e-6)
    assert math.sqrt(s["x"] * s["y"]) == pytest.approx(1.0, rel=1e-6)  # geometric mean 1
    assert elo(s["x"]) - elo(s["y"]) == pytest.approx(400 * math.log10(3), rel=1e-6)


def test_ties_count_half():
    # 1 win for x and 2 ties: x scores 2, y scores 1 -> ratio 2. "both bad" is a tie too.
    s = bradley_terry(outcomes_of(votes("x", "y", a_wins=1, ties=2)), prior=0)
    assert s["x"] / s["y"] == pytest.approx(2.0, rel=1e-6)
    s2 = bradley_terry(outcomes_of(votes("x", "y", a_wins=1, ties=1, both_bad=1)), prior=0)
    assert s2["x"] / s2["y"] == pytest.approx(2.0, rel=1e-6)
    # Swapping sides (x as adapter_b) gives the same result.
    s3 = bradley_terry(outcomes_of(votes("y", "x", b_wins=1, ties=2)), prior=0)
    assert s3["x"] / s3["y"] == pytest.approx(2.0, rel=1e-6)


def test_three_adapters_known_mle():
    # A chain with a cycle: the MLE satisfies, for each player, score = sum_j n_ij p_i / (p_i + p_j).
    outcomes = outcomes_of(votes("a", "b", a_wins=6, b_wins=2) + votes("b", "c", a_wins=5, b_wins=3)
                           + votes("a", "c", a_wins=4, b_wins=1))
    s = bradley_terry(outcomes, prior=0)
    games = {("a", "b"): 8, ("b", "c"): 8, ("a", "c"): 5}
    scores = {"a": 10, "b": 7, "c": 4}
    for name in "abc":
        expected = sum(n * s[name] / (s[name] + s[other])
                       for pair, n in games.items() if name in pair for other in pair if other != name)
        assert expected == pytest.approx(scores[name], rel=1e-6)
    assert s["a"] > s["b"] > s["c"]


def test_clearly_better_adapter_ranks_first():
    rng = random.Random(1)
    outcomes = []
    for _ in range(60):
        pair = rng.sample(["good", "meh", "bad"], 2)
        rank = {"good": 0, "meh": 1, "bad": 2}
        better_is_a = rank[pair[0]] < rank[pair[1]]
        win = "a" if (better_is_a == (rng.random() < 0.85)) else "b"
        outcomes.append((pair[0], pair[1], win))
    board = rate(outcomes, bootstrap_rounds=50)
    assert [r.adapter for r in board] == ["good", "meh", "bad"]
    assert [r.rank for r in board] == [1, 2, 3]
    assert board[0].win_rate > 0.7 and board[-1].win_rate < 0.3
    assert sum(r.votes for r in board) == 2 * len(outcomes)
    for r in board:
        assert r.ci_low <= r.rating <= r.ci_high
        assert 0 <= r.win_rate_low <= r.win_rate <= r.win_rate_high <= 1


def test_prior_keeps_unbeaten_finite():
    board = rate(votes("x", "y", a_wins=5), bootstrap_rounds=20)
    assert all(math.isfinite(r.rating) for r in board)
    assert board[0].adapter == "x" and board[0].wins == 5 and board[1].losses == 5


def test_intervals_shrink_with_more_votes():
    few = rate(votes("x", "y", a_wins=6, b_wins=4), bootstrap_rounds=300)
    many = rate(votes("x", "y", a_wins=60, b_wins=40), bootstrap_rounds=300)

    def width(board, name):
        r = next(r for r in board if r.adapter == name)
        return r.ci_high - r.ci_low, r.win_rate_high - r.win_rate_low

    for name in "xy":
        (bt_few, wr_few), (bt_many, wr_many) = width(few, name), width(many, name)
        assert bt_many < bt_few / 2
        assert wr_many < wr_few / 2


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)


def test_counts_and_both_bad():
    board = {r.adapter: r for r in rate(votes("x", "y", a_wins=2, b_wins=1, ties=1, both_bad=1),
                                        bootstrap_rounds=0)}
    x = board["x"]
    assert (x.wins, x.losses, x.ties, x.both_bad, x.votes) == (2, 1, 2, 1, 5)
    assert x.win_rate == pytest.approx(3 / 5)
    assert x.ci_low == x.ci_high == x.rating  # no bootstrap asked


def test_bad_winner_refused_and_self_votes_ignored():
    with pytest.raises(ValueError):
        outcomes_of([("x", "y", "x")])
    assert outcomes_of([("x", "x", "a")]) == []
    assert outcomes_of([Outcome("x", "y", "tie")]) == [Outcome("x", "y", "tie")]
    assert rate([]) == []


def test_blind_labels_are_randomised():
    firsts = {blind_assignment(["p", "q"], random.Random(seed))["A"] for seed in range(40)}
    assert firsts == {"p", "q"}
    counts = {"p": 0, "q": 0}
    rng = random.Random(7)
    for _ in range(400):
        counts[blind_assignment(["p", "q"], rng)["A"]] += 1
    assert 150 < counts["p"] < 250
    # Unseeded (system randomness) still labels every adapter exactly once.
    assignment = blind_assignment(["p", "q", "r"])
    assert sorted(assignment) == ["A", "B", "C"] and sorted(assignment.values()) == ["p", "q", "r"]


def test_winner_code_maps_blind_choice_back():
    assignment = {"A": "q", "B": "p"}
    assert winner_code("A", assignment, "p", "q") == "b"
    assert winner_code("B", assignment, "p", "q") == "a"
    assert winner_code("tie", assignment, "p", "q") == "tie"
    with pytest.raises(ValueError):
        winner_code("C", assignment, "p", "q")
