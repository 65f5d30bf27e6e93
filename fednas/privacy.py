"""Client-level differential privacy for masked shards: clipping, Gaussian noise, accounting.

DP-FedAvg (McMahan et al. 2018) with the Gaussian mechanism, adapted to supernet shards:

1. each client's update Δ_k = (its trained regions − the global regions it received) is clipped
   to L2 norm C, jointly over weights and α (:func:`clip_update`; optional per-group norms);
2. per entry, the server sums the clipped deltas of the clients that trained it, adds
   N(0, (σC)²) once to every entry someone trained and divides by the per-entry count
   (:func:`noisy_masked_mean`). With full shards this is DP-FedAvg: noise std σC/n on the mean;
3. the Opacus RDP accountant turns (σ, sampling rate q, rounds) into ε(δ)
   (:class:`PrivacyAccountant`); :func:`noise_multiplier_for` inverts it.

The unit of privacy is one client (its whole update). Everything is a pure function of its
inputs plus an explicit ``torch.Generator``: a seed fixes the noise, and state_dicts resume it.

Caveats: BatchNorm running statistics are data too, so they are clipped and noised with the
rest (prefer ``track_running_stats=False`` for DP runs, or give them their own clip group).
The accountant assumes Poisson sampling of clients at rate q; sampling a fixed number per
round without replacement is the usual approximation (as in Flower's DP wrappers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fednas.aggregation import Contribution

JOINT = "all"  # the norms key of joint (ungrouped) clipping
REST = "rest"  # the group of keys that no listed group names


def update_norm(delta: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> float:
    """L2 norm of the floating tensors of ``delta`` (all of them, or only ``keys``), in float64."""
    values = [delta[k].detach().reshape(-1) for k in (delta if keys is None else keys)
              if delta[k].is_floating_point()]
    if not values:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(values).to(torch.float64)))


def clip_update(delta: Mapping[str, torch.Tensor], max_norm: float | Mapping[str, float],
                groups: Mapping[str, Sequence[str]] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Scale a client update to L2 norm ≤ ``max_norm`` (jointly, or per group of keys).

    Parameters
    ----------
    delta
        key -> update tensor (the client's regions minus the global regions it received).
    max_norm
        The bound C; with ``groups``, either one C for every group or group name -> C_g.
    groups
        group name -> keys (e.g. ``{"alpha": alpha_keys}``). Keys no group lists form the group
        ``"rest"``. Each group is scaled by ``min(1, C_g / ‖Δ_g‖)``; the whole update then has
        norm ≤ :func:`sensitivity` (max_norm) = √Σ C_g².

    Returns
    -------
    clipped, norms
        The clipped update (same keys and dtypes; non-floating tensors untouched) and the
        norm of each group *before* clipping (``{"all": ‖Δ‖}`` without groups). Raises
        ValueError if a bound is missing or not positive, or the update is not finite.
    """
    members: dict[str, list[str]] = {JOINT: list(delta)}
    if groups is not None:
        listed = {k for keys in groups.values() for k in keys}
        members = {name: [k for k in keys if k in delta] for name, keys in groups.items()}
        rest = [k for k in delta if k not in listed]
        if rest:
            members.setdefault(REST, []).extend(rest)
    clipped = dict(delta)
    norms: dict[str, float] = {}
    for name, keys in members.items():
        bound = max_norm if not isinstance(max_norm, Mapping) else max_norm.get(name)
        if bound is None:
            raise ValueError(f"clip group {name!r} (keys {keys[:3]}...) has no max_norm")
        if not bound > 0:
            raise ValueError(f"max_norm of clip group {name!r} must be > 0 (got {bound})")
        norm = update_norm(delta, keys)
        if not math.isfinite(norm):
            raise ValueError(f"update of clip group {name!r} is not finite (norm {norm})")
        norms[name] = norm
        factor = min(1.0, float(bound) / norm) if norm > 0 else 1.0
        if factor < 1.0:
            for key in keys:
                value = delta[key]
                if value.is_floating_point():
                    clipped[key] = (value.detach().to(torch.float64) * factor).to(value.dtype)
    return clipped, norms


def sensitivity(max_norm: float | Mapping[str, float]) -> float:
    """L2 bound of a clipped update: C, or √Σ C_g² for per-group bounds."""
    if isinstance(max_norm, Mapping):
        return math.sqrt(sum(float(c) ** 2 for c in max_norm.values()))
    return float(max_norm)


def contribution_delta(global_state: Mapping[str, torch.Tensor], contribution: Contribution
                       ) -> Contribution:
    """The contribution with each region replaced by ``region − global region`` (float64).

    Non-floating keys are dropped and entries outside ``entry_masks`` are zeroed, so the
    norm of the result is the norm of what the aggregate will actually use.
    """
    regions: dict[str, torch.Tensor] = {}
    for key, value in contribution.regions.items():
        base = global_state[key]
        if not base.is_floating_point():
            continue
        index = contribution.slices.get(key)
        ref = base if index is None else base[index]
        delta = (value.detach().to(torch.float64)
                 - ref.detach().to(device=value.device, dtype=torch.float64))
        mask = contribution.entry_masks.get(key)
        regions[key] = delta if mask is None else delta * mask.to(delta)
    return Contribution(regions, contribution.slices, contribution.weight,
                        contribution.entry_masks)


def noisy_masked_mean(global_state: Mapping[str, torch.Tensor],
                      contributions: Iterable[Contribution], noise_multiplier: float,
                      clip_norm: float, generator: torch.Generator, reclip: bool = True
                      ) -> dict[str, torch.Tensor]:
    """New global state: global + per-entry noisy mean of the clients' clipped deltas.

    Each entry gets ``(Σ_k Δ_k + N(0, (σC)²)) / n_e``, the sum over the n_e clients whose shard
    (and entry mask) contains it; entries nobody trained keep their global value and no noise.
    Adding or removing one client changes the sums by its clipped update, so their L2
    sensitivity is C and one draw per entry is the Gaussian mechanism with multiplier σ. The
    counts follow from the server's shard plan and who replied and are treated as public, as
    Flower's DP wrappers divide by the number of clients (strict add/remove DP under Poisson
    sampling would divide by the expected count). Weights are uniform (one vote per client),
    as in DP-FedAvg: sample weights would let a client with many examples move the sum by
    more than C, making the sensitivity depend on private (and unreleased) example counts.

    Parameters
    ----------
    global_state
        The global state the clients started from.
    contributions
        Clients' *clipped deltas* (:func:`contribution_delta` then :func:`clip_update` on
        ``regions``); ``weight`` is ignored. Summed in the given order: pass them sorted.
    noise_multiplier
        σ ≥ 0 (0: no noise, clipped mean only).
    clip_norm
        C, the L2 bound of each client's delta (:func:`sensitivity` for grouped clipping).
    generator
        Seeded CPU generator: the only source of randomness (one draw per trained tensor, in
        ``global_state`` order).
    reclip
        Clip each contribution to ``clip_norm`` here too (server-side clipping; a no-op for
        honestly clipped deltas), so that the guarantee never rests on the clients alone.
    """
    if not clip_norm > 0 or not noise_multiplier >= 0:
        raise ValueError(f"need clip_norm > 0 and noise_multiplier >= 0 "
                         f"(got {clip_norm}, {noise_multiplier})")
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, torch.Tensor] = {}
    for c in contributions:
        regions = {k: v for k, v in c.regions.items() if global_state[k].is_floating_point()}
        if reclip:
            masked = {k: v * c.entry_masks[k].to(v) if k in c.entry_masks else v
                      for k, v in regions.items()}
            regions, _ = clip_update(masked, clip_norm)
        for key, value in regions.items():
            base = global_state[key]
            if key not in acc:
                acc[key] = torch.zeros(base.shape, dtype=torch.float64)
                count[key] = torch.zeros(base.shape, dtype=torch.float64)
            index = c.slices.get(key)
            a = acc[key] if index is None else acc[key][index]
            n = count[key] if index is None else count[key][index]
            mask = c.entry_masks.get(key)
            value = value.detach().to("cpu", torch.float64)
            if mask is None:
                a += value
                n += 1.0
            else:
                votes = mask.detach().to("cpu", torch.float64)
                a += votes * value
                n += votes
    std = float(noise_multiplier) * float(clip_norm)
    out = {k: v.clone() for k, v in global_state.items()}
    for key in global_state:
        if key not in acc:
            continue
        total = acc[key]
        if std > 0:
            total = total + std * torch.randn(total.shape, generator=generator,
                                              dtype=torch.float64)
        seen = count[key] > 0
        mean = torch.where(seen, total / count[key].clamp_min(1.0), 0.0)
        base = global_state[key]
        out[key] = (base.to(torch.float64) + mean.to(base.device)).to(base.dtype)
    return out


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
