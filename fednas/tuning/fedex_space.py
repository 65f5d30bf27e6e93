"""FedEx's configuration space: hyperparameter ranges and the candidate configurations.

:class:`HPRange` is one local hyperparameter's range (linear or log, real or integer);
:func:`centre_and_perturbations` builds joint-mode candidates (a centre and random
perturbations of it, as the FedEx reference does) and :func:`product_grid` the per-
hyperparameter values of product mode. :class:`fednas.tuning.fedex.FedEx` keeps its distribution
over these. Range errors name the ``fedex.*`` key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fednas.errors import ConfigError


@dataclass(frozen=True)
class HPRange:
    """Range of one local hyperparameter (``log``: sampled in log space; ``integer``: rounded)."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` naming ``fedex.ranges.<name>`` for an invalid range."""
        key = f"fedex.ranges.{self.name}"
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(f"{key}: need finite low < high (got {self.low}, {self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{key}: a log range needs low > 0 (got {self.low})")
        if self.integer and math.ceil(self.low) > math.floor(self.high):
            raise ConfigError(f"{key}: no integer in [{self.low}, {self.high}]")

    def _space(self, value: float | np.ndarray) -> Any:
        return np.log10(value) if self.log else value

    def _value(self, u: float) -> float | int:
        """Map a point of the (log) space back to a valid value of the range."""
        v = float(np.clip(10.0**u if self.log else u, self.low, self.high))
        if self.integer:
            return int(np.clip(round(v), math.ceil(self.low), math.floor(self.high)))
        return v


def _check_ranges(ranges: Sequence[HPRange], k: int, known: Mapping[str, Any] | None) -> None:
    if k < 1:
        raise ConfigError(f"fedex.configs: need k >= 1 (got {k})")
    for i, r in enumerate(ranges):
        r.check()
        if r.name in [q.name for q in ranges[:i]]:
            raise ConfigError(f"fedex.ranges.{r.name}: listed twice")
        if known is not None and r.name not in known:
            raise ConfigError(f"fedex.ranges.{r.name}: unknown hyperparameter "
                              f"(known: {', '.join(sorted(known))})")


def centre_and_perturbations(centre: Mapping[str, Any], ranges: Sequence[HPRange], k: int,
                             rng: np.random.Generator, scale: float = 0.1) -> list[dict]:
    """Joint-mode configurations: the centre and ``k - 1`` random perturbations of it.

    Each ranged hyperparameter of a perturbation is moved by U(−scale, scale) × the range's
    width, in log10 space for ``log`` ranges (log-uniform), then clipped into [low, high]
    and rounded if ``integer``; hyperparameters without a range keep their centre value.
    ``scale = 0`` gives k copies of the centre (FedAvg with fixed HPs).
    """
    if not (math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"fedex.perturbation-scale: must be >= 0 (got {scale})")
    _check_ranges(ranges, k, centre)
    for r in ranges:
        if not r.low <= centre[r.name] <= r.high:
            raise ConfigError(f"fedex.centre.{r.name}: {centre[r.name]} is outside the range")
    configs = [dict(centre)]
    for _ in range(k - 1):
        config = dict(centre)
        for r in ranges:
            width = r._space(r.high) - r._space(r.low)
            config[r.name] = r._value(r._space(centre[r.name]) + rng.uniform(-scale, scale) * width)
        configs.append(config)
    return configs


def product_grid(ranges: Sequence[HPRange], k: int,
                 rng: np.random.Generator | None = None) -> dict[str, list]:
    """Product-mode grid: ``k`` values per hyperparameter, in (log) space.

    Without ``rng`` the values are evenly spaced from low to high (the midpoint for k = 1);
    with it they are sorted uniform draws. Integer values are rounded and deduplicated, so an
    integer hyperparameter may get fewer than ``k`` values.
    """
    _check_ranges(ranges, k, None)
    grid = {}
    for r in ranges:
        lo, hi = r._space(r.low), r._space(r.high)
        points = (np.sort(rng.uniform(lo, hi, size=k)) if rng is not None
                  else np.linspace(lo, hi, k) if k > 1 else [(lo + hi) / 2])
        values = [r._value(float(u)) for u in points]
        grid[r.name] = sorted(set(values)) if r.integer else values
    return grid
