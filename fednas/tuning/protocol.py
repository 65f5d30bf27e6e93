"""The tuning protocol of the FedEx paper (Khodak et al. 2021, §5): the space, its sampling,
the starting points and the equal-budget accounting of random search and successive halving.

Numpy only. A configuration is a dict of scenario keys (``"retrain.lr"``, ...) to values;
``bench/fedex_protocol.py`` turns the configurations into federated runs.

- :data:`SPACE`: server lr / momentum and local lr / momentum / weight decay / epochs.
- :func:`sample_configs`: the starting point and ``n - 1`` seeded draws from the space, the
  local lr drawn around the starting point's (:data:`LR_SPAN` decades either way).
- :func:`poor_start`: the starting point with its local lr scaled (×0.1, ×10).
- :func:`equal_budget`: the total rounds ``n · rounds`` that random search spends, checked
  to be exactly what successive halving over the same ``n`` spends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fednas.errors import ConfigError
from fednas.tuning.halving import schedule


@dataclass(frozen=True)
class Axis:
    """One hyperparameter of the space: a scenario key and its range (``log``: log-uniform;
    ``integer``: uniform over the integers of [low, high])."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def check(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(f"{self.key}: need finite low < high (got {self.low}, {self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{self.key}: a log range needs low > 0 (got {self.low})")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high and (not self.integer or value == int(value))

    def sample(self, rng: np.random.Generator, low: float | None = None,
               high: float | None = None) -> float | int:
        """One draw from [low, high] (default: the whole axis), clipped into the axis."""
        lo = self.low if low is None else max(self.low, low)
        hi = self.high if high is None else min(self.high, high)
        if self.integer:
            return int(rng.integers(math.ceil(lo), math.floor(hi) + 1))
        if self.log:
            return float(np.clip(10.0 ** rng.uniform(math.log10(lo), math.log10(hi)),
                                 self.low, self.high))
        return float(rng.uniform(lo, hi))


#: the space every method searches (server-side keys first, then the local ones)
SPACE: tuple[Axis, ...] = (
    Axis("federation.server-lr", 0.5, 2.0, log=True),
    Axis("federation.server-momentum", 0.0, 0.5),
    Axis("retrain.lr", 3e-4, 3.0, log=True),
    Axis("retrain.momentum", 0.0, 0.95),
    Axis("retrain.weight-decay", 1e-5, 1e-2, log=True),
    Axis("federation.local-epochs", 1, 2, integer=True),
)
#: the local hyperparameters (what FedEx may tune inside a run)
LOCAL = ("retrain.lr", "retrain.momentum", "retrain.weight-decay", "federation.local-epochs")
#: the key the starting point anchors, and how far (decades) the draws may stray from it
ANCHOR = "retrain.lr"
LR_SPAN = 0.5


def check_start(space: Sequence[Axis], start: Mapping[str, Any]) -> None:
    """Every axis has a starting value inside its range (``ConfigError`` naming the key)."""
    for axis in space:
        axis.check()
        if axis.key not in start:
            raise ConfigError(f"{axis.key}: the starting point has no value")
        if not axis.contains(float(start[axis.key])):
            raise ConfigError(f"{axis.key}: starting value {start[axis.key]} is outside "
                              f"[{axis.low}, {axis.high}]")


def poor_start(start: Mapping[str, Any], factor: float, key: str = ANCHOR) -> dict[str, Any]:
    """``start`` with ``key`` (the local lr) multiplied by ``factor`` (e.g. 0.1 or 10)."""
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"poor start: the factor must be > 0 (got {factor})")
    return {**start, key: float(start[key]) * factor}


def sample_configs(space: Sequence[Axis], start: Mapping[str, Any], n: int,
                   rng: np.random.Generator, *, anchor: str = ANCHOR,
                   span: float = LR_SPAN) -> list[dict[str, Any]]:
    """The ``n`` configurations of one search: ``start`` itself and ``n - 1`` draws.

    Every axis is drawn from its whole range, except ``anchor``, drawn log-uniformly within
    ``span`` decades of the starting value (clipped into its range): the starting point is
    where the search looks for the local lr. The same ``rng`` state gives the same draws
    relative to any starting point, so good and poor starts are searched alike.
    """
    if n < 1:
        raise ConfigError(f"configs: need n >= 1 (got {n})")
    if span <= 0:
        raise ConfigError(f"span: must be > 0 decades (got {span})")
    check_start(space, start)
    configs = [{a.key: start[a.key] for a in space}]
    for _ in range(n - 1):
        config = {}
        for axis in space:
            if axis.key == anchor:
                centre = float(start[anchor])
                config[axis.key] = axis.sample(rng, centre * 10.0**-span, centre * 10.0**span)
            else:
                config[axis.key] = axis.sample(rng)
        configs.append(config)
    return configs


def sha_rounds(n: int, budget: int, eta: int) -> int:
    """The rounds successive halving over ``n`` candidates spends within ``budget``."""
    plan, used, before = schedule(n, budget, eta), 0, 0
    for survivors, rounds in plan:
        used += survivors * (rounds - before)
        before = rounds
    return used


def equal_budget(n: int, rounds: int, eta: int) -> int:
    """The total budget ``n · rounds`` (random search: ``n`` runs of ``rounds`` rounds);
    raises ``ConfigError`` unless successive halving over the same ``n`` candidates spends
    exactly as many (its rungs split the budget evenly, so ``rounds`` must be a multiple of
    the number of rungs, with ``n`` a power of ``eta``)."""
    if rounds < 1:
        raise ConfigError(f"rounds: need >= 1 (got {rounds})")
    budget = n * rounds
    used = sha_rounds(n, budget, eta)
    if used != budget:
        rungs = len(schedule(n, budget, eta))
        raise ConfigError(f"rounds: successive halving over {n} configs with eta {eta} would "
                          f"spend {used} of the {budget} rounds random search spends; take n "
                          f"a power of eta and rounds a multiple of its {rungs} rungs")
    return budget
