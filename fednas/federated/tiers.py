"""Device tiers: which clients are which devices, and what each tier may train (issue 31).

**Assignment.** Tier ``t`` gets ``n_t`` of the ``N`` clients, the largest-remainder rounding
of ``N · fractions[t]`` with every tier non-empty; which clients is a seeded permutation of
the partition ids (:func:`assign_tiers`), recorded in ``partitions.json``.

**What a tier trains (width space).** A tier's budget (``[devices]`` params/FLOPs, fractions of
the reference) caps the model its devices can run. The tier's *width* is the largest width
choice ``w_t`` whose uniform subnet (every prunable layer at ``w_t``) meets the budget,
measured on the built subnet (:func:`tier_width`); its devices train only the choices
``<= w_t`` of every layer (:func:`tier_masks`): the sandwich rule runs within that range, α's
columns outside it are never touched, and the shard's tensor regions (channels
``< k(w_t)`` of every block) are all that travels either way. The masked weighted mean
already averages every region over exactly the clients whose shard held it, so a channel
only the large tier trains is averaged over the large tier's clients. A uniform cap is
HeteroFL's rule (a width multiplier per tier); it keeps the comparison with the HeteroFL
baseline about search rather than about a different capacity rule.

**What a tier trains (cell space).** Only the (edge, op) candidates that keep the tier's
budget reachable: a candidate is kept when the cheapest genotype containing it fits
(:func:`tier_candidates`), so a small device never spends its rounds on ops that no model it
can run would use. Its shard and its messages hold only those ops' tensors.
"""

from __future__ import annotations

import torch

from fednas.compression.budget import Budget, Limits
from fednas.errors import ConfigError
from fednas.federated.shards import Masks, gumbel_top_s
from fednas.spaces.base import SearchSpace


def tier_counts(clients: int, fractions: tuple[float, ...] | list[float]) -> list[int]:
    """Clients per tier: largest-remainder rounding of ``clients · fractions``, none empty.

    Raises
    ------
    ConfigError
        If there are fewer clients than tiers.
    """
    if clients < len(fractions):
        raise ConfigError(f"devices.names: {len(fractions)} tiers need at least as many "
                          f"clients; partition.num-clients = {clients}")
    exact = [clients * f for f in fractions]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda t: (-(exact[t] - counts[t]), t))
    for t in by_remainder[:clients - sum(counts)]:
        counts[t] += 1
    for t in range(len(counts)):  # an empty tier takes a client from the most over-served
        if counts[t] == 0:
            donor = max((d for d in range(len(counts)) if counts[d] > 1),
                        key=lambda d: (counts[d] - exact[d], -d))
            counts[donor] -= 1
            counts[t] = 1
    return counts


def assign_tiers(clients: int, fractions: tuple[float, ...] | list[float], seed: int
                 ) -> list[int]:
    """The tier of every partition id ``0..clients-1`` (a seeded draw of
    :func:`tier_counts`)."""
    counts = tier_counts(clients, fractions)
    perm = torch.randperm(clients, generator=torch.Generator().manual_seed(seed)).tolist()
    tiers = [0] * clients
    start = 0
    for t, n in enumerate(counts):
        for pid in perm[start:start + n]:
            tiers[pid] = t
        start += n
    return tiers


def _fits(cost: tuple[int, int], limits: Limits) -> bool:
    return all(lim is None or c <= lim for c, lim in zip(cost, limits, strict=True))


def tier_limits(budget: tuple[float | None, float | None], reference: tuple[int, int]
                ) -> Limits:
    """Absolute ``(max_params, max_flops)`` of a tier's budget (fractions of ``reference``)."""
    return Budget(params=budget[0], flops=budget[1]).resolve(*reference)


def _require_width_space(space: SearchSpace) -> None:
    if space.space_name != "width":
        raise ConfigError(f"devices.names: device tiers cap the width space's channels; "
                          f"space.name = {space.space_name!r} is not supported yet (use "
                          "space.name = 'width')")


def uniform_genotype(space: SearchSpace, width: float) -> dict:
    """The width-space genotype with every prunable layer at ``width``."""
    return {**space.max_genotype(), "widths": [width] * space.num_prunable}


def tier_width(space: SearchSpace, limits: Limits, name: str = "") -> float:
    """The largest width choice whose uniform subnet meets ``limits`` (measured).

    Raises
    ------
    ConfigError
        If the space is not the width space, or not even the smallest width fits (the
        message names the tier and the smallest subnet's cost).
    """
    _require_width_space(space)
    for width in sorted(space.width_choices, reverse=True):
        if _fits(space.cost(uniform_genotype(space, width)), limits):
            return width
    small = space.cost(space.min_genotype())
    raise ConfigError(f"devices.params / devices.flops: tier {name!r} allows {limits[0]} "
                      f"params / {limits[1]} FLOPs, below the smallest subnet of the space "
                      f"({small[0]} params, {small[1]} FLOPs); raise the tier's budget or "
                      "add a smaller space.width.width-choices entry")


def tier_masks(space: SearchSpace, width: float) -> Masks:
    """One boolean row per prunable layer: the width choices ``<= width``."""
    _require_width_space(space)
    row = torch.tensor([w <= width + 1e-9 for w in space.width_choices])
    return [row.clone().reshape(a.shape) for a in space.arch_parameters()]


def width_mask(space: SearchSpace, width: float) -> Masks:
    """One boolean row per prunable layer holding only ``width``: a client with this shard
    trains the uniform subnet at ``width`` and nothing else (the static-width baselines)."""
    _require_width_space(space)
    row = torch.tensor([abs(w - width) < 1e-9 for w in space.width_choices])
    return [row.clone().reshape(a.shape) for a in space.arch_parameters()]


def tier_candidates(space: SearchSpace, limits: Limits, name: str = ""
                    ) -> tuple[Masks, dict[str, float]]:
    """What a tier with ``limits`` may train, one mask per arch tensor, and a summary.

    Width space: the choices up to :func:`tier_width` (``{"width": w}``). Cell space: the
    (edge, op) candidates that keep the budget reachable
    (:func:`fednas.compression.budget.reachable_candidates`; edge normalisation's β is
    always whole), summarised as the share of non-``none`` candidates kept.

    Raises
    ------
    ConfigError
        If no model of the space fits ``limits`` (the message names the tier and the
        smallest model), or the space is neither.
    """
    if space.space_name == "width":
        width = tier_width(space, limits, name)
        return tier_masks(space, width), {"width": width}
    if space.space_name != "cell":
        raise ConfigError(f"devices.names: device tiers support the width and cell spaces, "
                          f"not {space.space_name!r}")
    from fednas.compression.budget import reachable_candidates, smallest_cost

    small = smallest_cost(space)
    if not _fits(small, limits):
        raise ConfigError(f"devices.params / devices.flops: tier {name!r} allows {limits[0]} "
                          f"params / {limits[1]} FLOPs, below the smallest model of the "
                          f"space ({small[0]} params, {small[1]} FLOPs); raise the tier's "
                          "budget or add cheaper ops to space.cell.ops")
    masks = reachable_candidates(space, limits)
    real = [k for k, op in enumerate(space.op_names) if op != "none"]
    share = float(sum(m[:, real].sum() for m in masks)) / sum(m[:, real].numel() for m in masks)
    extra = [torch.ones(a.shape, dtype=torch.bool) for a in space.arch_parameters()[2:]]
    return masks + extra, {"candidates": round(share, 4)}


def tier_shard(alphas: list[torch.Tensor], allowed: Masks, size: int,
               generator: torch.Generator, include_argmax: bool = False) -> Masks:
    """A shard drawn within a tier: Gumbel-top-``size`` of softmax(α) restricted to the
    ``allowed`` candidates (``size`` 0 or above the allowed count: all of them)."""
    out = []
    for alpha, ok in zip(alphas, allowed, strict=True):
        n = int(ok.reshape(-1, ok.shape[-1]).sum(-1).min())
        if not size or size >= n:
            out.append(ok.clone())
            continue
        masked = alpha.detach().float().cpu().masked_fill(~ok, float("-inf"))
        out.append(gumbel_top_s(masked, size, generator, include_argmax) & ok)
    return out
