"""FedEx (Khodak et al., NeurIPS 2021): tune local hyperparameters by exponentiated gradient.

Each round every sampled client draws a configuration from θ = softmax(z), trains with it and
reports its val loss; the server steps z against an importance-weighted loss estimate:
``∇_j = Σ_i w_i (s_i − λ) 1[c_i = j] / θ_j``, ``z ← z − η∇``, ``z ← z − logsumexp(z)``, with
w_i = |V_i| / Σ|V|, s_i the post-training loss (or L_i − L_i^pre, ``use_improvement``), λ a
baseline and η = η0 / ‖∇‖_∞, η0 = √(2 ln k). The configurations form one joint categorical
("joint" mode) or one independent categorical per hyperparameter ("product" mode). Numpy
only, no Flower: the strategy calls :meth:`FedEx.sample` and :meth:`FedEx.update`.

Choices, against the reference (mkhodak/FedEx ``hyper.py``):

- λ_t = Σ_{s<t} γ^(t−1−s) x_s / Σ_{s<t} γ^(t−1−s), x_s the weighted mean score of round s:
  past rounds only (this round's scores are folded in after the step), λ = 0 in round 1, as
  the reference; γ = ``baseline_discount`` (0: last round, 1: plain mean; default 0.9).
- A factor stops once its entropy < ``entropy_cutoff`` (default 1e-4, the reference wrapper's)
  and then yields its argmax; the reference stops all factors on the joint entropy.
- The step-size schedules are the reference's ``sched`` options; "auto" counts a factor's
  rounds (the reference counts calls of ``step``, the same while it has not stopped) and
  "scale" multiplies η0 by √(2 ln k) (the reference passes the scale as ``eta0``). Steps are
  computed from ∇ = g·e^u without forming ∇ (1/θ can overflow) and capped at 1e3 per entry.
- A non-finite score (divergence) becomes ``divergence_penalty`` or, by default, max(1, 2·M),
  M the largest finite |score| seen so far: worse than any finite result (no such guard in
  the reference).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fednas.errors import CheckpointError, ConfigError
from fednas.tuning.fedex_factor import MAX_EXP, Categorical
from fednas.tuning.fedex_space import HPRange, centre_and_perturbations, product_grid

__all__ = ["FedEx", "HPRange", "centre_and_perturbations", "product_grid"]

log = logging.getLogger(__name__)

SCHEDULES = ("aggressive", "constant", "adaptive", "auto", "scale")
_MAX_SCORE = 1e150  # |scores| are clipped here, so sums and differences never overflow


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


class FedEx:
    """Exponentiated-gradient tuner over local-HP configurations.

    Parameters
    ----------
    configs
        Joint mode: the k configurations (dicts with the same keys), e.g. from
        :func:`centre_and_perturbations`. Give exactly one of ``configs`` and ``grid``.
    grid
        Product mode: name -> candidate values (e.g. :func:`product_grid`), one factor each.
    base
        Values of the hyperparameters that are not tuned; in product mode, if given, it must
        hold every grid name (the grid value overrides it).
    eta0
        Base step size; None = √(2 ln k) per factor.
    schedule
        η of a factor's step, as the reference's ``sched``: "aggressive" η0 / ‖∇‖_∞,
        "constant" η0, "auto" η0 / √t (t: the factor's rounds so far), "adaptive"
        η0 / √(Σ_rounds ‖∇‖²_∞), "scale" η0 · √(2 ln k); no step when ∇ = 0.
    baseline_discount
        γ in [0, 1] of the baseline (0: last round's loss, 1: mean of all past rounds).
    entropy_cutoff
        A factor whose entropy falls below this stops updating and returns its argmax.
    use_improvement
        Score clients by L_i − L_i^pre instead of L_i.
    divergence_penalty
        Score of a non-finite result; None = max(1, 2 × largest finite |score| seen).
    """

    def __init__(self, configs: Sequence[Mapping[str, Any]] | None = None, *,
                 grid: Mapping[str, Sequence[Any]] | None = None,
                 base: Mapping[str, Any] | None = None, eta0: float | None = None,
                 schedule: str = "aggressive", baseline_discount: float = 0.9,
                 entropy_cutoff: float = 1e-4, use_improvement: bool = False,
                 divergence_penalty: float | None = None) -> None:
        if (configs is None) == (grid is None):
            raise ConfigError("fedex.configs: give exactly one of configs (joint) or grid")
        self.configs = self.grid = None
        self.base = {k: _plain(v) for k, v in (base or {}).items()}
        if configs is not None:
            self.configs = [{k: _plain(v) for k, v in c.items()} for c in configs]
            if not self.configs:
                raise ConfigError("fedex.configs: need k >= 1 configurations (got 0)")
            for i, c in enumerate(self.configs):
                if set(c) != set(self.configs[0]):
                    raise ConfigError(f"fedex.configs: configuration {i} has keys {sorted(c)}, "
                                      f"configuration 0 has {sorted(self.configs[0])}")
            self.names, sizes = ["config"], [len(self.configs)]
        else:
            if not grid:
                raise ConfigError("fedex.grid: need at least one hyperparameter")
            for name, values in grid.items():
                if len(values) < 1:
                    raise ConfigError(f"fedex.grid.{name}: need k >= 1 values (got 0)")
                if base is not None and name not in base:
                    raise ConfigError(f"fedex.grid.{name}: unknown hyperparameter "
                                      f"(known: {', '.join(sorted(base))})")
            self.grid = {n: [_plain(v) for v in vs] for n, vs in grid.items()}
            self.names, sizes = list(self.grid), [len(v) for v in self.grid.values()]
        self.options = _check_options(eta0=eta0, schedule=schedule,
                                      baseline_discount=baseline_discount,
                                      entropy_cutoff=entropy_cutoff,
                                      use_improvement=use_improvement,
                                      divergence_penalty=divergence_penalty)
        self.factors = [Categorical(k) for k in sizes]
        self.rounds = 0  # update calls that carried data
        self.max_abs_score = 0.0  # largest finite |score| seen (adaptive divergence penalty)

    def config(self, indices: Sequence[int]) -> dict:
        """The configuration for one index per factor."""
        if self.configs is not None:
            return {**self.base, **self.configs[indices[0]]}
        config = dict(self.base)
        config.update((n, self.grid[n][i]) for n, i in zip(self.names, indices, strict=True))
        return config

    def sample(self, rng: np.random.Generator) -> tuple[tuple[int, ...], dict]:
        """Draw (indices, configuration) for one client."""
        indices = tuple(f.sample(rng) for f in self.factors)
        return indices, self.config(indices)

    def theta(self) -> list[np.ndarray]:
        return [f.theta() for f in self.factors]

    def entropy(self) -> list[float]:
        return [f.entropy() for f in self.factors]

    def best(self) -> dict:
        """The most probable configuration (argmax of each factor)."""
        return self.config([int(np.argmax(f.z)) for f in self.factors])

    def _round(self, choices, losses, weights, pre_losses):
        """Validate one round: (indices (n, F), scores, normalised weights, new max |score|)."""
        n, opts = len(choices), self.options
        if any(x is not None and len(x) != n for x in (losses, weights, pre_losses)):
            raise ValueError("fedex update: choices, losses, weights, pre_losses differ in length")
        if opts["use_improvement"] and pre_losses is None:
            raise ValueError("fedex update: use_improvement needs pre_losses")
        idx = np.asarray(choices, dtype=np.int64).reshape(n, len(self.factors))
        if ((idx < 0) | (idx >= [len(f.z) for f in self.factors])).any():
            raise ValueError(f"fedex update: a choice is out of range: {choices}")
        w = np.asarray(weights, dtype=np.float64)
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"fedex update: weights must be finite and >= 0 (got {weights})")
        with np.errstate(invalid="ignore"):
            s = np.asarray(losses, dtype=np.float64)
            if opts["use_improvement"]:
                s = s - np.asarray(pre_losses, dtype=np.float64)
        finite = np.isfinite(s)
        s = np.clip(np.where(finite, s, 0.0), -_MAX_SCORE, _MAX_SCORE)
        top = max(self.max_abs_score, float(np.max(np.abs(s), initial=0.0)))
        penalty = opts["divergence_penalty"]
        s = np.where(finite, s, max(1.0, 2 * top) if penalty is None else penalty)
        return idx, s, (w / w.sum() if w.sum() > 0 else w), top

    def gradient(self, choices: Sequence[Sequence[int]], losses: Sequence[float],
                 weights: Sequence[float], pre_losses: Sequence[float] | None = None,
                 ) -> list[np.ndarray]:
        """This round's estimate ∇ of each factor (with the current λ); changes nothing."""
        idx, s, w, _ = self._round(choices, losses, weights, pre_losses)
        out = []
        for f, factor in enumerate(self.factors):
            g, u = factor.scaled_gradient(idx[:, f], w * (s - factor.baseline()))
            out.append(g * math.exp(min(u, MAX_EXP)))
        return out

    def update(self, choices: Sequence[Sequence[int]], losses: Sequence[float],
               weights: Sequence[float], pre_losses: Sequence[float] | None = None) -> None:
        """One exponentiated-gradient step from the clients of a round.

        ``choices[i]`` are client i's indices (from :meth:`sample`), ``losses[i]`` its val
        loss after local training, ``weights[i]`` its val-set size, ``pre_losses[i]`` its val
        loss before training (needed with ``use_improvement``). Non-finite losses are
        penalised; an empty round or all-zero weights change nothing.
        """
        idx, s, w, top = self._round(choices, losses, weights, pre_losses)
        if not w.any():
            log.warning("FedEx update skipped: no client with a positive weight")
            return
        self.max_abs_score, opts = top, self.options
        for f, factor in enumerate(self.factors):
            eta0 = opts["eta0"] or math.sqrt(2 * math.log(len(factor.z)))
            factor.step(idx[:, f], s, w, eta0=eta0, schedule=opts["schedule"],
                        discount=opts["baseline_discount"], cutoff=opts["entropy_cutoff"])
        self.rounds += 1

    def state_dict(self) -> dict:
        """Everything needed to resume, as JSON-safe Python types (RNG state is the caller's)."""
        return {"version": 1, "mode": "joint" if self.grid is None else "product",
                "configs": self.configs, "grid": self.grid, "base": self.base,
                "names": list(self.names), "options": dict(self.options),
                "rounds": self.rounds, "max_abs_score": self.max_abs_score,
                "factors": [{"z": f.z.tolist(), "baseline_sum": f.baseline_sum,
                             "baseline_weight": f.baseline_weight, "steps": f.steps,
                             "rounds": f.rounds, "log_store": f.log_store,
                             "stopped": f.stopped} for f in self.factors]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> FedEx:
        """A tuner rebuilt from :meth:`state_dict` (search space and options included)."""
        tuner = cls(state["configs"], grid=state["grid"], base=state["base"] or None,
                    **state["options"])
        tuner.load_state_dict(state)
        return tuner

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the options and learned state; the search space must match this tuner's."""
        if state.get("version") != 1:
            raise CheckpointError(f"FedEx state version {state.get('version')!r} is not 1")
        sizes = [len(f["z"]) for f in state["factors"]]
        if (state["configs"], state["grid"], state["base"], sizes) != (
                self.configs, self.grid, self.base, [len(f.z) for f in self.factors]):
            raise CheckpointError("FedEx state: its search space differs from this tuner's")
        self.options = _check_options(**state["options"])
        self.rounds, self.max_abs_score = int(state["rounds"]), float(state["max_abs_score"])
        for f, saved in zip(self.factors, state["factors"], strict=True):
            f.z = np.asarray(saved["z"], dtype=np.float64)
            f.baseline_sum, f.baseline_weight = saved["baseline_sum"], saved["baseline_weight"]
            f.steps, f.stopped = int(saved["steps"]), bool(saved["stopped"])
            f.rounds = int(saved.get("rounds", saved["steps"]))  # older states: steps
            f.log_store = saved.get("log_store")


def _check_options(*, eta0: float | None, schedule: str, baseline_discount: float,
                   entropy_cutoff: float, use_improvement: bool,
                   divergence_penalty: float | None) -> dict:
    """The tuner's options as a plain dict; :class:`ConfigError` naming the bad key."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"fedex.schedule: {schedule!r} is not one of {SCHEDULES}")
    if eta0 is not None and not (math.isfinite(eta0) and eta0 > 0):
        raise ConfigError(f"fedex.eta0: must be > 0 (got {eta0})")
    if not 0.0 <= baseline_discount <= 1.0:
        raise ConfigError(f"fedex.baseline-discount: must be in [0, 1] (got {baseline_discount})")
    if not (math.isfinite(entropy_cutoff) and entropy_cutoff >= 0):
        raise ConfigError(f"fedex.entropy-cutoff: must be >= 0 (got {entropy_cutoff})")
    if divergence_penalty is not None and not math.isfinite(divergence_penalty):
        raise ConfigError(f"fedex.divergence-penalty: must be finite (got {divergence_penalty})")
    return {"eta0": None if eta0 is None else float(eta0), "schedule": schedule,
            "baseline_discount": float(baseline_discount), "entropy_cutoff": float(entropy_cutoff),
            "use_improvement": bool(use_improvement),
            "divergence_penalty": None if divergence_penalty is None else float(divergence_penalty)}
