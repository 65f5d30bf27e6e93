"""One factor of :class:`fednas.tuning.fedex.FedEx`: a categorical distribution over k
options, its exponentiated-gradient step (with the reference's step-size schedules), its
baseline and its stopping state."""

from __future__ import annotations

import math

import numpy as np

_Z_FLOOR = -1e4  # logits never reach -inf (exp(-1e4) is already 0.0)
_MAX_STEP = 1e3  # per-entry cap of a step, so z stays finite with "constant" steps
MAX_EXP = 700.0  # cap of the exponent when 1/θ is rebuilt from a scaled gradient



def _logsumexp(z: np.ndarray) -> float:
    m = float(np.max(z))
    return m + math.log(float(np.sum(np.exp(z - m))))


class Categorical:
    """One factor: a distribution over ``k`` options, its baseline and stopping state."""

    def __init__(self, k: int) -> None:
        self.z = np.full(k, -math.log(k))
        self.baseline_sum = 0.0  # Σ γ^age x over past rounds
        self.baseline_weight = 0.0  # Σ γ^age
        self.steps = 0  # exponentiated-gradient steps applied
        self.rounds = 0  # rounds it was updated in ("auto": η0 / √t)
        self.log_store: float | None = None  # log Σ‖∇‖²_∞ over its rounds ("adaptive")
        self.stopped = False

    def theta(self) -> np.ndarray:
        return np.exp(self.z)

    def entropy(self) -> float:
        return max(0.0, float(-np.sum(self.theta() * self.z)))  # log θ = z, always finite

    def baseline(self) -> float:
        return self.baseline_sum / self.baseline_weight if self.baseline_weight > 0 else 0.0

    def sample(self, rng: np.random.Generator) -> int:
        """Draw an index from θ (inverse CDF; a stopped factor returns its argmax)."""
        if self.stopped:
            return int(np.argmax(self.z))
        cdf = np.cumsum(self.theta())
        return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)

    def scaled_gradient(self, idx: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, float]:
        """(g, u) with ∇ = g·e^u, ∇_j = Σ_i coef_i 1[idx_i = j] / θ_j; |1/θ| never overflows."""
        u = float(np.max(-self.z[idx], initial=0.0))  # z <= 0, so u >= 0 anyway
        g = np.zeros_like(self.z)
        np.add.at(g, idx, coef * np.exp(-self.z[idx] - u))
        return g, u

    def step_exponent(self, schedule: str, u: float, norm: float) -> float | None:
        """x with η∇ = η0 g e^x for ∇ = g e^u (None: no step), per schedule:
        aggressive η = η0/‖∇‖_∞, constant η0, auto η0/√t (t: rounds so far), adaptive
        η0/√(Σ‖∇‖²_∞ so far), scale η0·√(2 ln k) (no step when k = 1)."""
        if schedule == "aggressive":
            return -math.log(norm)
        if schedule == "constant":
            return u
        if schedule == "auto":
            return u - 0.5 * math.log(self.rounds)
        if schedule == "adaptive":
            return u - 0.5 * float(self.log_store)
        if len(self.z) < 2:  # scale: √(2 ln 1) = 0
            return None
        return u + 0.5 * math.log(2 * math.log(len(self.z)))

    def step(self, idx: np.ndarray, scores: np.ndarray, w: np.ndarray, *, eta0: float,
             schedule: str, discount: float, cutoff: float) -> None:
        """One FedEx round: gradient step with the pre-round baseline, then fold the round in."""
        if not self.stopped:
            g, u = self.scaled_gradient(idx, w * (scores - self.baseline()))
            norm = float(np.max(np.abs(g)))
            self.rounds += 1
            if norm > 0:
                # η∇ = η0 g e^x: ∇ = g e^u is never formed (1/θ can overflow)
                self.log_store = (2 * (math.log(norm) + u) if self.log_store is None else
                                  float(np.logaddexp(self.log_store,
                                                     2 * (math.log(norm) + u))))
                x = self.step_exponent(schedule, u, norm)
                if x is not None:
                    delta = np.clip(eta0 * math.exp(min(x, MAX_EXP)) * g, -_MAX_STEP,
                                    _MAX_STEP)
                    z = np.maximum(self.z - delta, _Z_FLOOR)
                    self.z = z - _logsumexp(z)
                    self.steps += 1
            self.stopped = self.entropy() < cutoff
        self.baseline_sum = discount * self.baseline_sum + float(np.dot(w, scores))
        self.baseline_weight = discount * self.baseline_weight + 1.0
