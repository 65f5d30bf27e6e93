"""Quantile-based adaptive clipping for DP-FedAvg (Andrew et al., NeurIPS 2021).

The clip norm C follows a target quantile of the clients' update norms from a noisy count of
unclipped updates, so the bound need not be tuned by hand; the count's noise is part of the
privacy budget (:meth:`AdaptiveClipping.update_noise_multiplier`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class AdaptiveClipping:
    """Quantile-based adaptive clipping norm (Andrew et al. 2021), geometric update.

    After a round with pre-clip norms ‖Δ_i‖ of m clients, clipped at the current C:
    ``b̃ = (Σ_i 1[‖Δ_i‖ ≤ C] + N(0, σ_b²)) / m`` and ``C ← C · exp(−η (b̃ − γ))``, so C tracks
    the γ-quantile of the update norms. The count is itself released with noise σ_b; to keep
    the overall noise multiplier σ, noise the updates with :meth:`update_noise_multiplier`.
    Fields: ``clip_norm`` the current C (initially C_0), ``target_quantile`` γ ∈ [0, 1],
    ``learning_rate`` η (paper: 0.2), ``count_noise`` σ_b (paper: m / 20).
    """

    clip_norm: float = 1.0
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and 0 <= self.target_quantile <= 1
                and self.learning_rate > 0 and self.count_noise >= 0):
            raise ValueError(f"AdaptiveClipping needs clip_norm > 0, 0 <= target_quantile <= 1, "
                             f"learning_rate > 0, count_noise >= 0 (got {self})")

    def update(self, norms: Sequence[float], generator: torch.Generator) -> float:
        """Step C from this round's pre-clip norms (clipped at the current C); returns new C."""
        if not norms:
            return self.clip_norm
        unclipped = float(sum(1 for n in norms if n <= self.clip_norm))
        if self.count_noise > 0:
            unclipped += self.count_noise * float(torch.randn(1, generator=generator,
                                                              dtype=torch.float64))
        fraction = unclipped / len(norms)
        self.clip_norm *= math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self.clip_norm

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2): the update noise that keeps the total at σ.

        The count has sensitivity 1/2 after centring (b_i − 1/2), hence the factor 2.
        Raises ValueError when σ_b is too small for σ (σ_b ≤ σ/2).
        """
        if self.count_noise == 0:
            return float(noise_multiplier)
        rest = noise_multiplier ** -2 - (2 * self.count_noise) ** -2
        if rest <= 0:
            raise ValueError(f"count_noise {self.count_noise} is too small for noise "
                             f"multiplier {noise_multiplier}: need count_noise > σ / 2")
        return rest ** -0.5

    def state_dict(self) -> dict[str, float]:
        return {"clip_norm": self.clip_norm, "target_quantile": self.target_quantile,
                "learning_rate": self.learning_rate, "count_noise": self.count_noise}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        for key in ("clip_norm", "target_quantile", "learning_rate", "count_noise"):
            setattr(self, key, float(state[key]))
