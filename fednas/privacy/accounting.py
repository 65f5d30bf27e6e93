"""ε(δ) accounting for client-level DP: Opacus' RDP accountant, one step per round.

:class:`PrivacyAccountant` composes rounds at (σ, q = sampled clients ÷ clients);
:func:`noise_multiplier_for` inverts it (the σ that reaches a target ε after a number of
rounds). Sampling a fixed number of clients per round is treated as Poisson sampling at rate
q, the usual approximation (as in Flower's DP wrappers).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier


class PrivacyAccountant:
    """ε(δ) of a run: Opacus' RDP accountant, one step per round at the client sampling rate.

    ``sample_rate`` = sampled clients per round ÷ total clients; ``noise_multiplier`` = σ
    (the noise std on the sum divided by C).
    """

    def __init__(self) -> None:
        self._rdp = RDPAccountant()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """(σ, q, rounds) runs, as Opacus keeps them (equal consecutive steps merged)."""
        return list(self._rdp.history)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self._rdp.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Account for one round."""
        _check(noise_multiplier, sample_rate)
        self._rdp.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))

    def epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before the first round)."""
        return float(self._rdp.get_epsilon(delta=delta))

    def would_exceed(self, eps_budget: float, delta: float, noise_multiplier: float,
                     sample_rate: float) -> bool:
        """Whether one more round at (σ, q) would take ε(δ) above ``eps_budget`` (no mutation)."""
        _check(noise_multiplier, sample_rate)
        if noise_multiplier == 0:
            return True  # no noise: ε = ∞
        trial = RDPAccountant()
        trial.history = list(self._rdp.history)
        trial.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))
        return float(trial.get_epsilon(delta=delta)) > eps_budget

    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists of floats/ints) that restores the exact ε."""
        return {"mechanism": self._rdp.mechanism(),
                "history": [[float(s), float(q), int(n)] for s, q, n in self._rdp.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mechanism") != self._rdp.mechanism():
            raise ValueError(f"accountant state is {state.get('mechanism')!r}, expected 'rdp'")
        self._rdp.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]


def noise_multiplier_for(target_eps: float, delta: float, sample_rate: float, steps: int,
                         tolerance: float = 0.01) -> float:
    """Smallest σ (to ``tolerance`` in ε) whose ε(δ) after ``steps`` rounds is ≤ ``target_eps``.

    Opacus' ``get_noise_multiplier`` (bisection on the RDP accountant): the result reaches
    ``target_eps − tolerance ≤ ε ≤ target_eps``.
    """
    if steps < 1 or not target_eps > 0 or not 0 < delta < 1:
        raise ValueError(f"need steps >= 1, target_eps > 0, 0 < delta < 1 "
                         f"(got {steps}, {target_eps}, {delta})")
    _check(1.0, sample_rate)
    with warnings.catch_warnings():  # the bisection's extreme trial σ hit the α grid's ends
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(get_noise_multiplier(target_epsilon=target_eps, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant="rdp", epsilon_tolerance=tolerance))


def _check(noise_multiplier: float, sample_rate: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1] (got {sample_rate})")
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0 (got {noise_multiplier})")
