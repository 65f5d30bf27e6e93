"""Supernet shards: which candidates (and which tensor regions) one client trains.

A shard is one boolean mask per architecture parameter (same shape as α): for every edge or
layer (a row of α), the subset S_k of candidates the client trains. Masks are sampled from
softmax(α) without replacement by the Gumbel-top-s trick; ``size = all`` candidates gives the
full supernet (plain FedNAS). :meth:`SearchSpace.shard_slices` turns a shard into the
state-dict regions that travel, so only the shard's tensors are sent and aggregated.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Masks = list[torch.Tensor]
Slices = dict[str, tuple[slice, ...] | None]


def gumbel_top_s(alpha: torch.Tensor, size: int, generator: torch.Generator,
                 include_argmax: bool = False) -> torch.Tensor:
    """Sample ``size`` of the candidates in each row of ``alpha`` ∝ softmax(α), no replacement.

    Parameters
    ----------
    alpha
        Architecture logits, 1-D (one row) or 2-D (rows × candidates).
    size
        Candidates kept per row; clipped to the number of candidates.
    generator
        Seeded CPU generator (the only source of randomness).
    include_argmax
        Always keep each row's current argmax (swapping out the lowest sampled one).

    Returns
    -------
    torch.Tensor
        Boolean mask of ``alpha``'s shape with exactly ``min(size, K)`` True per row.
    """
    logits = alpha.detach().float().cpu().reshape(-1, alpha.shape[-1]).log_softmax(-1)
    k = min(max(size, 1), logits.shape[-1])
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-20, 1.0)
    keys = logits - torch.log(-torch.log(uniform))
    order = keys.argsort(dim=-1, descending=True)
    if include_argmax:
        best = logits.argmax(-1)
        for r in range(order.shape[0]):
            if best[r] not in order[r, :k]:
                order[r, k - 1] = best[r]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.reshape(alpha.shape)


def full_masks(alphas: list[torch.Tensor]) -> Masks:
    """The shard that holds every candidate (plain FedNAS)."""
    return [torch.ones(a.shape, dtype=torch.bool) for a in alphas]


def encode_masks(masks: Masks) -> list[int]:
    """Flatten masks to a 0/1 int list (Flower ConfigRecords hold scalar lists only)."""
    return [int(v) for m in masks for v in m.reshape(-1).tolist()]


def decode_masks(flat: list[int], shapes: list[torch.Size]) -> Masks:
    """Inverse of :func:`encode_masks` for the given α shapes."""
    total = sum(int(torch.Size(s).numel()) for s in shapes)
    if len(flat) != total:
        raise ValueError(f"shard mask has {len(flat)} entries, the space expects {total}")
    out, start = [], 0
    for shape in shapes:
        n = int(torch.Size(shape).numel())
        out.append(torch.tensor(flat[start: start + n], dtype=torch.bool).reshape(shape))
        start += n
    return out


def slice_state(state: Mapping[str, torch.Tensor], slices: Slices) -> dict[str, torch.Tensor]:
    """The regions of ``state`` named by ``slices`` (contiguous copies, ready to send)."""
    return {k: (state[k] if s is None else state[k][s]).contiguous() for k, s in slices.items()}


def load_slices(state: dict[str, torch.Tensor], regions: Mapping[str, torch.Tensor],
                slices: Slices) -> None:
    """Write received ``regions`` into ``state`` in place (the inverse of slice_state)."""
    for key, value in regions.items():
        target = state[key] if slices[key] is None else state[key][slices[key]]
        if target.shape != value.shape:
            raise ValueError(f"{key}: received shape {tuple(value.shape)}, "
                             f"shard expects {tuple(target.shape)}")
        target.copy_(value)


def shard_fraction(masks: Masks) -> float:
    """Share of candidates in the shard (1.0 = full supernet)."""
    return float(sum(int(m.sum()) for m in masks) / max(sum(m.numel() for m in masks), 1))
