"""Successive halving (Karnin et al. 2013; Jamieson & Talwalkar 2016) with a fixed round budget.

Used to tune server-side hyperparameters over several federated runs (e.g. FedEx's η0 or a
server lr): every candidate starts, the best ``1/eta`` continue with more rounds, and so on,
while the total number of rounds spent never exceeds ``budget``. The runs themselves are
abstract: ``advance(i, candidate, rounds)`` must bring candidate ``i`` to ``rounds`` rounds in
total (continuing where it stopped) and return its validation score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fednas.errors import ConfigError

T = TypeVar("T")


@dataclass
class Rung:
    """One rung: which candidates ran, to how many rounds in total, and their scores."""

    index: int
    candidates: list[int]
    rounds: int
    scores: dict[int, float]


@dataclass
class HalvingResult(Generic[T]):
    """Outcome of :func:`successive_halving`."""

    best: int
    best_candidate: T
    rungs: list[Rung] = field(default_factory=list)
    rounds_used: int = 0


def schedule(n: int, budget: int, eta: int) -> list[tuple[int, int]]:
    """``(survivors, cumulative rounds)`` per rung: each rung gets ``budget / rungs`` rounds,
    shared equally by its survivors."""
    if n < 1:
        raise ConfigError("halving: need at least one candidate")
    if eta < 2:
        raise ConfigError(f"halving.eta: must be >= 2 (got {eta})")
    rungs = math.floor(math.log(n, eta) + 1e-9) + 1 if n > 1 else 1
    plan, total, used = [], 0, 0
    for k in range(rungs):
        survivors = max(1, math.ceil(n / eta**k))
        extra = budget // (rungs * survivors)
        if extra < 1:
            raise ConfigError(f"halving.budget: {budget} rounds cannot give each of {survivors} "
                              f"candidates of rung {k} a round; allowed: >= "
                              f"{rungs * max(math.ceil(n / eta**j) for j in range(rungs))}")
        total += extra
        used += extra * survivors
        plan.append((survivors, total))
    assert used <= budget
    return plan


def _rank(score: float, i: int, maximize: bool) -> tuple[float, int]:
    """Sort key: best first, ties by index, non-finite scores last."""
    if not math.isfinite(score):
        return (math.inf, i)
    return (-score if maximize else score, i)


def successive_halving(candidates: Sequence[T], advance: Callable[[int, T, int], float], *,
                       budget: int, eta: int = 3, maximize: bool = False) -> HalvingResult[T]:
    """Run successive halving; lower scores are better unless ``maximize``.

    Ties keep the earlier candidate. Non-finite scores rank last.
    """
    plan = schedule(len(candidates), budget, eta)
    alive = list(range(len(candidates)))
    done = dict.fromkeys(alive, 0)
    result: HalvingResult[T] = HalvingResult(best=0, best_candidate=candidates[0])
    for k, (survivors, rounds) in enumerate(plan):
        alive = alive[:survivors]
        scores = {}
        for i in alive:
            scores[i] = float(advance(i, candidates[i], rounds))
            result.rounds_used += rounds - done[i]
            done[i] = rounds
        result.rungs.append(Rung(k, list(alive), rounds, scores))
        alive = sorted(alive, key=lambda i, sc=scores: _rank(sc[i], i, maximize))
        keep = max(1, math.ceil(len(alive) / eta))
        if k + 1 < len(plan):
            alive = alive[:max(keep, plan[k + 1][0])]
    result.best = alive[0]
    result.best_candidate = candidates[result.best]
    return result
