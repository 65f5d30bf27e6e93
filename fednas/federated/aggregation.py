"""Masked, sample-weighted averaging of client updates (FedNAS with supernet shards).

Each client contributes the regions of the global state it trained (its shard), weighted by
its example count. Every entry is averaged over the clients that trained it; entries nobody
trained keep their global value. With full shards this is exactly FedNAS/FedAvg:
``w = Σ n_k w_k / Σ n_k`` and ``α = Σ n_k α_k / Σ n_k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from fednas.federated.shards import Slices


@dataclass
class Contribution:
    """One client's trained regions.

    Attributes
    ----------
    regions
        key -> tensor of the region it trained (the whole tensor, or ``state[key][slices[key]]``).
    slices
        key -> index tuple of the region within the global tensor (None = whole tensor).
    weight
        Sample weight (number of training examples).
    entry_masks
        key -> bool tensor of the region's shape: only True entries count (used for α, where a
        client only updates the candidates in its shard).
    clients
        How many clients it stands for: 1, or a cohort's members when ``regions`` is their
        pre-clipped sum (central DP in cohort mode,
        :func:`fednas.privacy.mechanism.clipped_sum`).
    """

    regions: Mapping[str, torch.Tensor]
    slices: Slices
    weight: float
    entry_masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    clients: int = 1


def masked_weighted_mean(global_state: Mapping[str, torch.Tensor],
                         contributions: Iterable[Contribution]) -> dict[str, torch.Tensor]:
    """New global state: per-entry weighted mean over the clients that trained each entry.

    Non-floating tensors (e.g. BN ``num_batches_tracked``) keep their global value. The
    summation order is the order of ``contributions``: pass them sorted for bit-identical runs.
    """
    acc: dict[str, torch.Tensor] = {}
    total: dict[str, torch.Tensor] = {}
    for c in contributions:
        if c.weight <= 0:
            continue
        for key, value in c.regions.items():
            base = global_state[key]
            if not base.is_floating_point():
                continue
            if key not in acc:
                acc[key] = torch.zeros_like(base, dtype=torch.float64)
                total[key] = torch.zeros_like(base, dtype=torch.float64)
            index = c.slices.get(key)
            a = acc[key] if index is None else acc[key][index]
            t = total[key] if index is None else total[key][index]
            weight = torch.full(value.shape, float(c.weight), dtype=torch.float64)
            mask = c.entry_masks.get(key)
            if mask is not None:
                weight = weight * mask.to(torch.float64)
            a += weight * value.detach().to(torch.float64)
            t += weight
    out = {k: v.clone() for k, v in global_state.items()}
    for key, a in acc.items():
        seen = total[key] > 0
        mean = torch.where(seen, a / total[key].clamp_min(1e-300), out[key].to(torch.float64))
        out[key] = mean.to(global_state[key].dtype)
    return out
