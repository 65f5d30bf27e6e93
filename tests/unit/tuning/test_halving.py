"""Successive halving: budget respected, survivors shrink by eta, the best arm is found."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fednas.errors import ConfigError
from fednas.tuning.halving import schedule, successive_halving


def test_schedule_shares_the_budget_and_shrinks_by_eta():
    plan = schedule(9, 90, 3)
    assert [s for s, _ in plan] == [9, 3, 1]
    rounds = [r for _, r in plan]
    assert rounds == sorted(rounds) and rounds[0] >= 1
    used = sum(s * (r - (plan[k - 1][1] if k else 0)) for k, (s, r) in enumerate(plan))
    assert used <= 90
    with pytest.raises(ConfigError, match="halving.budget"):
        schedule(9, 5, 3)
    with pytest.raises(ConfigError, match="halving.eta"):
        schedule(4, 100, 1)


def test_finds_the_best_arm_within_budget_and_continues_runs():
    rng = np.random.default_rng(0)
    quality = [0.9, 0.5, 0.2, 0.7, 0.35, 0.8, 0.6, 0.95, 0.4]  # loss floor per candidate
    progress: dict[int, list[int]] = {}

    def advance(i: int, q: float, rounds: int) -> float:
        progress.setdefault(i, []).append(rounds)
        return q + 1.0 / rounds + 0.01 * rng.standard_normal()

    result = successive_halving(quality, advance, budget=120, eta=3)
    assert result.best == 2 and result.best_candidate == 0.2
    assert result.rounds_used <= 120
    assert all(r == sorted(r) and len(set(r)) == len(r) for r in progress.values())
    assert [len(r.candidates) for r in result.rungs] == [9, 3, 1]


def test_diverged_candidates_rank_last_and_maximize():
    scores = [math.nan, 0.3, 0.9]
    result = successive_halving(scores, lambda i, s, r: s, budget=30, eta=2, maximize=True)
    assert result.best == 2
    result = successive_halving(scores, lambda i, s, r: s, budget=30, eta=2)
    assert result.best == 1
