"""DARTS-PT architecture selection scores (Wang et al., "Rethinking Architecture Selection in
Differentiable NAS", ICLR 2021): a candidate's importance is the supernet's validation-accuracy
drop when it alone is removed. :func:`fednas.compression.budget.derive_under_budget` can rank
choices by
these instead of softmax(α) (``compression.selection = "perturbation"``).
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import torch

from fednas.spaces.base import SearchSpace
from fednas.training.train import Split, evaluate


@torch.no_grad()
def perturbation_scores(space: SearchSpace, data: Split, device: torch.device,
                        batch_size: int) -> list[torch.Tensor]:
    """DARTS-PT importance: validation-accuracy drop when one candidate is removed.

    For each α tensor, row (edge/layer) and candidate, the candidate is masked out with
    :meth:`SearchSpace.set_shard` (the remaining candidates renormalised) and the supernet
    is evaluated on ``data``. The space's shard is restored afterwards.

    Parameters
    ----------
    space
        The supernet, already on ``device``.
    data
        ``(x, y)`` validation tensors.
    device, batch_size
        Where and in what batches to evaluate.

    Returns
    -------
    list[torch.Tensor]
        CPU tensors shaped like ``space.alpha_parameters()``: full accuracy minus accuracy
        without the candidate (higher = more important; 0 for a row's only candidate).
        Other arch parameters (the cell space's edge-normalisation β) are not scored; they
        stay in every mask and weigh the supernet's edges as trained.
    """
    arch, saved = space.arch_parameters(), space.shard
    alphas = space.alpha_parameters()
    slot = {id(p): i for i, p in enumerate(arch)}  # mask index of each α tensor
    out = [torch.zeros(a.shape) for a in alphas]
    # The width space can be switched to hard widths; score its α mixture instead.
    mixture = space.active_widths(None) if hasattr(space, "active_widths") else nullcontext()
    with mixture:
        try:
            space.set_shard(None)
            base = evaluate(space, data, batch_size=batch_size, device=device)["eval_acc"]
            for t, a in enumerate(alphas):  # α tensors are (rows, candidates) or (candidates,)
                n = a.shape[-1]
                for row, k in itertools.product(range(a.numel() // n), range(n if n > 1 else 0)):
                    masks = [torch.ones(b.shape, dtype=torch.bool) for b in arch]
                    masks[slot[id(a)]].view(-1, n)[row, k] = False
                    space.set_shard(masks)
                    acc = evaluate(space, data, batch_size=batch_size, device=device)["eval_acc"]
                    out[t].view(-1, n)[row, k] = base - acc
        finally:
            space.set_shard(saved)
    return out
