"""Central differential privacy for the FedNAS strategy (masked shards, DP-FedAvg style).

Flower's DP strategy wrappers clip and noise whole-model updates of equal shape; with
supernet shards every client returns different regions, so fednas uses its own masked
version (:mod:`fednas.privacy.mechanism`): every client's update (weights and α together) is clipped
to L2 norm C on the server, the per-entry sum over the clients that trained an entry gets
N(0, (σC)²) and is divided by that count (one vote per client: sample weights are dropped).
With ``privacy.alpha-clip-norm`` α is clipped to C_α on its own and the noise multiplier is
split between α and the weights so that the round still costs exactly σ.
BatchNorm running statistics are data too; under DP they are not taken from clients at all
(they keep the global value; the server recalibrates BN on its own proxy split).

ε(δ) is tracked by one :class:`fednas.privacy.mechanism.PrivacyAccountant` per run (Opacus RDP,
sampling
rate = clients per round ÷ total clients), so every phase of a run adds to the same ε.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fednas.federated.aggregation import Contribution
from fednas.federated.server_opt import STAT_SUFFIXES
from fednas.privacy.mechanism import (
    JOINT,
    REST,
    AdaptiveClipping,
    PrivacyAccountant,
    clip_update,
    contribution_delta,
    noisy_masked_mean,
    split_noise,
)

ALPHA = "alpha"  # the clip group of the architecture parameters


class CentralDP:
    """Clipping, noise and accounting of one phase's aggregation.

    Parameters
    ----------
    cfg
        The scenario's ``[privacy]`` section (:class:`fednas.config.run_config.PrivacyConfig`).
    accountant
        The run's accountant (shared by all phases).
    seed
        Seeds the noise (a generator of its own: client and shard sampling stay as without DP).
    """

    def __init__(self, cfg: Any, accountant: PrivacyAccountant, seed: int) -> None:
        self.cfg = cfg
        self.accountant = accountant
        self.generator = torch.Generator().manual_seed(seed)
        self.clip_norm = float(cfg.clip_norm)
        self.adaptive = (AdaptiveClipping(cfg.clip_norm, cfg.target_quantile, cfg.clip_lr,
                                          cfg.count_noise) if cfg.adaptive else None)
        self.last: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "clip_norm": self.clip_norm,
                "adaptive": self.adaptive.state_dict() if self.adaptive else None}

    def set_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.clip_norm = float(state["clip_norm"])
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])

    # -- the mechanism -------------------------------------------------------------------
    def update_noise(self, clients: int) -> float:
        """The noise multiplier on the updates (σ, or σ_Δ when the count is noised too)."""
        if self.adaptive is None:
            return float(self.cfg.noise_multiplier)
        if not self.cfg.count_noise:
            self.adaptive.count_noise = max(clients / 20.0, 1e-12)
        if self.cfg.noise_multiplier == 0:
            return 0.0
        return self.adaptive.update_noise_multiplier(self.cfg.noise_multiplier)

    def exhausted(self, sample_rate: float) -> bool:
        """Whether one more round would push ε past ``epsilon-budget``."""
        budget = self.cfg.epsilon_budget
        return bool(budget) and self.accountant.would_exceed(
            budget, self.cfg.delta, self.cfg.noise_multiplier, sample_rate)

    def aggregate(self, state: dict[str, torch.Tensor], contributions: list[Contribution],
                  sample_rate: float, alpha_keys: Sequence[str] = (),
                  sums: Sequence[tuple[Contribution, list[float]]] = ()
                  ) -> dict[str, torch.Tensor]:
        """The new global state from this round's (sorted) contributions; steps the accountant.

        With ``privacy.alpha-clip-norm`` > 0, ``alpha_keys`` (the search's architecture
        parameters) are clipped to C_α apart from the weights (clipped to C) and the round's
        noise is split between the two (:func:`fednas.privacy.mechanism.split_noise`). In
        dp_fashion a
        client's α update is ~25× shorter than its weights', so joint noise drowns α.
        ``sums`` are cohorts' sums of their members' deltas, already clipped to
        :attr:`clip_norm` on the worker (:func:`fednas.privacy.mechanism.clipped_sum`;
        ``clients`` = the member count), each with its members' norms before clipping;
        they count as that many clients (whole-model training only: no α, no shards).
        """
        if sums and alpha_keys:
            raise ValueError("pre-clipped cohort sums need one joint clip norm (no α)")
        alpha = [k for k in alpha_keys if k in state] if self.cfg.alpha_clip_norm else []
        bound: float | dict[str, float] = self.clip_norm
        if alpha:
            bound = {ALPHA: float(self.cfg.alpha_clip_norm), REST: self.clip_norm}
        private = []
        norms, alpha_norms = [], []
        for c in contributions:
            kept = Contribution({k: v for k, v in c.regions.items()
                                 if not k.endswith(STAT_SUFFIXES)}, c.slices, c.weight,
                                c.entry_masks)
            delta = contribution_delta(state, kept)
            clipped, norm = clip_update(delta.regions, bound, {ALPHA: alpha} if alpha else None)
            norms.append(norm.get(REST, 0.0) if alpha else norm[JOINT])
            alpha_norms.append(norm.get(ALPHA, 0.0))
            private.append(Contribution(clipped, delta.slices, 1.0, delta.entry_masks))
        for total, member_norms in sums:
            norms.extend(member_norms)
            private.append(total)
        sigma = self.update_noise(len(contributions) + sum(t.clients for t, _ in sums))
        sigma_w, noise_std, stats = sigma, None, {}
        if alpha:
            share = self.cfg.alpha_noise_share
            split = split_noise(sigma, {ALPHA: share, REST: 1.0 - share})
            sigma_w, c_alpha = split[REST], bound[ALPHA]
            noise_std = dict.fromkeys(alpha, split[ALPHA] * c_alpha)
            stats = {"dp_alpha_clip_norm": c_alpha, "dp_alpha_noise_std": noise_std[alpha[0]],
                     **_norm_stats("dp_alpha", alpha_norms, c_alpha)}
        new = noisy_masked_mean(state, private, sigma_w, self.clip_norm, self.generator,
                                reclip=False, noise_std=noise_std)  # clipped just above
        clip_used = self.clip_norm
        if self.adaptive is not None:
            self.clip_norm = self.adaptive.update(norms, self.generator)
        if self.cfg.noise_multiplier > 0:
            self.accountant.step(self.cfg.noise_multiplier, sample_rate)
        eps = (self.accountant.epsilon(self.cfg.delta) if self.accountant.steps
               else float("inf"))
        self.last = {"dp_epsilon": eps, "dp_clip_norm": clip_used,
                     "dp_noise_std": sigma_w * clip_used, **stats,
                     **_norm_stats("dp", norms, clip_used)}
        return new


def _norm_stats(prefix: str, norms: list[float], bound: float) -> dict[str, float]:
    """Share of the round's updates longer than ``bound`` (clipped) and their median norm."""
    return {f"{prefix}_clipped_fraction": sum(n > bound for n in norms) / max(len(norms), 1),
            f"{prefix}_update_norm_median": float(torch.tensor(norms).median()) if norms
            else 0.0}


def privacy_summary(p: Any, accountant: PrivacyAccountant | None, rounds: int,
                    stopped: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``privacy`` entry of summary.json (None without DP).

    Central: ε(δ) of the run's RDP accountant. Local: each client's per-round (ε, δ) release
    and the basic-composition bound over all ``rounds`` (R·ε, R·δ; a client that skipped
    rounds released less). ``p`` is the scenario's ``[privacy]`` section.
    """
    if p.mode == "central" and accountant is not None:
        return {"mode": "central",
                "epsilon": accountant.epsilon(p.delta) if accountant.steps else None,
                "delta": p.delta, "noise_multiplier": p.noise_multiplier,
                "rounds": accountant.steps, "epsilon_budget": p.epsilon_budget or None,
                "stopped_by_budget": stopped}
    if p.mode == "local":
        return {"mode": "local", "epsilon_per_round": p.local_epsilon, "delta": p.delta,
                "rounds": rounds, "epsilon": rounds * p.local_epsilon,
                "delta_total": rounds * p.delta, "composition": "basic"}
    return None
