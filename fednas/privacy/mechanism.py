"""Client-level differential privacy for masked shards: clipping, Gaussian noise, accounting.

DP-FedAvg (McMahan et al. 2018) with the Gaussian mechanism, adapted to supernet shards:

1. each client's update Δ_k = (its trained regions − the global regions it received) is clipped
   to L2 norm C, jointly over weights and α (:func:`clip_update`; optional per-group norms);
2. per entry, the server sums the clipped deltas of the clients that trained it, adds
   N(0, (σC)²) once to every entry someone trained and divides by the per-entry count
   (:func:`noisy_masked_mean`). With full shards this is DP-FedAvg: noise std σC/n on the mean;
3. the Opacus RDP accountant turns (σ, sampling rate q, rounds) into ε(δ)
   (:class:`PrivacyAccountant`, :mod:`fednas.privacy.accounting`); :func:`noise_multiplier_for`
   inverts it. :class:`AdaptiveClipping` (:mod:`fednas.privacy.adaptive_clipping`) moves C instead
   of
   fixing it. Both are re-exported here.

The unit of privacy is one client (its whole update). Everything is a pure function of its
inputs plus an explicit ``torch.Generator``: a seed fixes the noise, and state_dicts resume it.

Caveats: BatchNorm running statistics are data too: passed to these functions they are clipped
and noised with the rest (the DP strategy, ``strategies/dp.py``, never takes them from clients
and recalibrates BN on the server instead). The accountant assumes Poisson sampling of clients
at rate q; sampling a fixed number per round without replacement is the usual approximation
(as in Flower's DP wrappers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from fednas.federated.aggregation import Contribution
from fednas.privacy.accounting import PrivacyAccountant, noise_multiplier_for
from fednas.privacy.adaptive_clipping import AdaptiveClipping

__all__ = ["AdaptiveClipping", "PrivacyAccountant", "clip_update", "contribution_delta",
           "clipped_sum", "noise_multiplier_for", "noisy_masked_mean", "sensitivity", "update_norm"]

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


def split_noise(noise_multiplier: float, shares: Mapping[str, float]) -> dict[str, float]:
    """Per-group noise multipliers σ_g = σ/√s_g that compose to exactly σ.

    Clipping group g to C_g and adding N(0, (σ_g C_g)²) to its sum releases
    ``[Σ Δ_g / (σ_g C_g)]_g`` plus unit noise: one Gaussian mechanism of L2 sensitivity
    √Σ_g 1/σ_g² = 1/σ, i.e. multiplier σ (the RDP of the subsampled Gaussian depends only on
    that ratio), so the accountant steps with σ as for joint clipping. ``shares`` (s_g > 0)
    must sum to 1: a group's share is the part of the round's privacy (1/σ²) it spends.
    """
    if not math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9, abs_tol=1e-12) or not all(
            s > 0 for s in shares.values()):
        raise ValueError(f"noise shares must be > 0 and sum to 1 (got {dict(shares)})")
    return {g: float(noise_multiplier) / math.sqrt(s) for g, s in shares.items()}


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


def clipped_sum(global_state: Mapping[str, torch.Tensor],
                states: Iterable[Mapping[str, torch.Tensor]], max_norm: float,
                skip_suffixes: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor],
                                                          list[float]]:
    """Σ_k clip(state_k − global, C) in float64, and each client's norm before clipping.

    What a cohort of central-DP clients sends instead of its members' updates when every
    client trains the whole model (no shards, joint clipping): the server's own path
    (:func:`contribution_delta`, :func:`clip_update`, the sum in :func:`noisy_masked_mean`)
    applied on the worker, so the aggregate differs only by float64 summation order.
    Clipping on the client side is Flower's ``DifferentialPrivacyClientSideFixedClipping``;
    pass the result as one :class:`Contribution` with ``clients`` = the number of states.

    Parameters
    ----------
    global_state
        The state the clients started from.
    states
        Each client's trained state (whole tensors), summed in the given order.
    max_norm
        C (> 0).
    skip_suffixes
        Keys ending with one of these are left out (BN running statistics under DP).
    """
    total: dict[str, torch.Tensor] = {}
    norms: list[float] = []
    for state in states:
        kept = {k: v for k, v in state.items() if not k.endswith(skip_suffixes)}
        delta = contribution_delta(global_state, Contribution(kept, dict.fromkeys(kept), 1.0))
        clipped, norm = clip_update(delta.regions, max_norm)
        norms.append(norm[JOINT])
        for key, value in clipped.items():
            total[key] = total[key] + value if key in total else value.clone()
    return total, norms


def noisy_masked_mean(global_state: Mapping[str, torch.Tensor],
                      contributions: Iterable[Contribution], noise_multiplier: float,
                      clip_norm: float, generator: torch.Generator, reclip: bool = True,
                      noise_std: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
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
        ``regions``), or sums of them (:func:`clipped_sum`, counted as ``clients`` clients;
        only without entry masks); ``weight`` is ignored. Summed in the given order: pass
        them sorted.
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
    noise_std
        key -> std of the noise on that key's sum, replacing σC for the keys it lists
        (per-group clipping with :func:`split_noise`: σ_g C_g for the keys of group g).
    """
    if not clip_norm > 0 or not noise_multiplier >= 0:
        raise ValueError(f"need clip_norm > 0 and noise_multiplier >= 0 "
                         f"(got {clip_norm}, {noise_multiplier})")
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, torch.Tensor] = {}
    for c in contributions:
        if c.clients != 1 and c.entry_masks:
            raise ValueError("a sum of several clients' deltas cannot carry entry masks")
        regions = {k: v for k, v in c.regions.items() if global_state[k].is_floating_point()}
        if reclip:  # a sum of k clipped deltas has norm ≤ kC
            masked = {k: v * c.entry_masks[k].to(v) if k in c.entry_masks else v
                      for k, v in regions.items()}
            regions, _ = clip_update(masked, clip_norm * c.clients)
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
                n += float(c.clients)
            else:
                votes = mask.detach().to("cpu", torch.float64)
                a += votes * value
                n += votes
    std = float(noise_multiplier) * float(clip_norm)
    out = {k: v.clone() for k, v in global_state.items()}
    for key in global_state:
        if key not in acc:
            continue
        total, key_std = acc[key], std if noise_std is None else noise_std.get(key, std)
        if key_std > 0:
            total = total + key_std * torch.randn(total.shape, generator=generator,
                                                  dtype=torch.float64)
        seen = count[key] > 0
        mean = torch.where(seen, total / count[key].clamp_min(1.0), 0.0)
        base = global_state[key]
        out[key] = (base.to(torch.float64) + mean.to(base.device)).to(base.dtype)
    return out
