"""Server-side compression: the budget, the student derived under it, uniform pruning, and
distillation of a teacher into the student on the server's proxy split.

The proxy split is the dataset's ``val`` split, which no client holds (clients hold
partitions of ``train``); by default it is used unlabelled, like public data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fednas.compression.budget import Budget, Limits, derive_under_budget
from fednas.compression.perturbation import perturbation_scores
from fednas.config.compression import CompressionConfig
from fednas.config.run_config import TrainConfig
from fednas.errors import ConfigError
from fednas.models.baselines import HandCNN
from fednas.models.flops import count_flops, count_params
from fednas.spaces.base import Genotype, SearchSpace
from fednas.training.distill import agreement, distill
from fednas.training.train import Split


def measured_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(params, FLOPs per sample)`` of ``model``, measured."""
    return count_params(model), count_flops(model, input_shape)


def budget_limits(c: CompressionConfig, reference: tuple[int, int]) -> Limits:
    """The absolute ``(max_params, max_flops)`` of ``[compression]`` (``c``) given the
    reference's cost.

    Raises
    ------
    ConfigError
        If a budget value is invalid (see :meth:`fednas.compression.budget.Budget.resolve`).
    """
    budget = Budget(params=c.params or None, flops=c.flops or None)
    return budget.resolve(*reference)


def within(cost: tuple[int, int], limits: Limits) -> bool:
    """True when ``cost`` meets every limit that is set."""
    return all(lim is None or value <= lim for value, lim in zip(cost, limits, strict=True))


def derive_student(space: SearchSpace, limits: Limits, c: CompressionConfig, proxy: Split,
                   device: torch.device, eval_batch_size: int = 1000
                   ) -> tuple[Genotype, dict[str, Any]]:
    """The genotype of ``space`` chosen under ``limits`` by ``compression.selection``: by α,
    or by DARTS-PT on ``proxy`` (evaluated in batches of ``eval_batch_size``).

    Returns the genotype and a record of how it was chosen (selection, measured cost).
    """
    scores = None
    if c.selection == "perturbation":
        space.to(device)
        scores = perturbation_scores(space, proxy, device, eval_batch_size)
    genotype = derive_under_budget(space, limits, mode=c.selection, scores=scores)
    params, flops = space.cost(genotype)
    if not within((params, flops), limits):  # derive_under_budget guarantees it; be loud
        raise RuntimeError(f"derived model ({params} params, {flops} FLOPs) exceeds {limits}")
    record: dict[str, Any] = {"selection": c.selection, "params": params, "flops": flops,
                              "limit_params": limits[0], "limit_flops": limits[1]}
    if scores is not None:
        record["perturbation_scores"] = [s.tolist() for s in scores]
    return genotype, record


def pruned_width(max_width: int, input_shape: tuple[int, int, int], num_classes: int,
                 limits: Limits) -> int:
    """The largest width ``w <= max_width`` (``baseline.width``) of the hand CNN whose
    measured cost fits.

    Raises
    ------
    ConfigError
        If even width 1 exceeds the budget.
    """
    for width in range(max_width, 0, -1):
        model = HandCNN(input_shape=input_shape, num_classes=num_classes, width=width)
        if within(measured_cost(model, input_shape), limits):
            return width
    model = HandCNN(input_shape=input_shape, num_classes=num_classes, width=1)
    params, flops = measured_cost(model, input_shape)
    raise ConfigError(f"compression: no uniform pruning of the baseline CNN fits {limits[0]} "
                      f"params / {limits[1]} FLOPs (width 1 has {params} params, {flops} FLOPs)")


def _keep(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the ``k`` output units of ``weight`` with the largest L1 norm."""
    norms = weight.detach().abs().flatten(1).sum(1)
    return torch.sort(torch.topk(norms, k).indices).values


@torch.no_grad()
def prune_cnn(model: HandCNN, width: int) -> HandCNN:
    """Uniform L1-norm filter pruning of a (trained) hand CNN to ``width`` (Li et al. 2017).

    Every layer keeps the same fraction ``width / model width`` of its units — those with the
    largest L1 norm — and the next layer's inputs follow.
    """
    conv1, conv2 = model.features[0], model.features[3]
    fc1, fc2 = model.head[1], model.head[3]
    c_in, full = conv1.in_channels, conv1.out_channels
    if not 1 <= width <= full:
        raise ValueError(f"prune_cnn: width {width} outside 1..{full}")
    spatial = fc1.in_features // conv2.out_channels
    side = int(round(spatial ** 0.5))
    out = HandCNN(input_shape=(c_in, 4 * side, 4 * side), num_classes=fc2.out_features,
                  width=width)
    k1, k2, k3 = _keep(conv1.weight, width), _keep(conv2.weight, 2 * width), \
        _keep(fc1.weight, 4 * width)
    n1, n2, n3, n4 = out.features[0], out.features[3], out.head[1], out.head[3]
    n1.weight.copy_(conv1.weight[k1])
    n1.bias.copy_(conv1.bias[k1])
    n2.weight.copy_(conv2.weight[k2][:, k1])
    n2.bias.copy_(conv2.bias[k2])
    columns = (k2[:, None] * spatial + torch.arange(spatial)).flatten()  # flatten is (C, H, W)
    n3.weight.copy_(fc1.weight[k3][:, columns])
    n3.bias.copy_(fc1.bias[k3])
    n4.weight.copy_(fc2.weight[:, k3])
    n4.bias.copy_(fc2.bias)
    return out


def cell_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The cells of a cell-space model (DNA's blocks), or None for other models."""
    cells = getattr(model, "cells", None)
    return list(cells) if isinstance(cells, nn.ModuleList) else None


def distill_student(student: nn.Module, teacher: nn.Module, proxy: Split,
                    c: CompressionConfig, train: TrainConfig, seed: int,
                    device: torch.device) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on the proxy split with ``[compression]``'s
    settings (``c``; weight decay and gradient clipping of ``[retrain]``, ``train``; batch
    order seeded by ``seed``).

    Returns the per-epoch losses and the student's top-1 agreement with the teacher on the
    proxy split before and after.
    """
    x, y = proxy
    student.to(device)
    teacher.to(device)
    before = agreement(student, teacher, x, batch_size=c.batch_size, device=device)
    blocks = None
    if c.dna_weight > 0:
        s_blocks, t_blocks = cell_blocks(student), cell_blocks(teacher)
        if s_blocks is None or t_blocks is None or len(s_blocks) != len(t_blocks):
            raise ConfigError("compression.dna-weight: DNA needs cell-space student and teacher "
                              "with the same number of cells (set dna-weight = 0)")
        blocks = (s_blocks, t_blocks)
    generator = torch.Generator().manual_seed(seed + 41)
    stats = distill(student, teacher, x, y if c.use_labels else None, epochs=c.epochs, lr=c.lr,
                    batch_size=c.batch_size, temperature=c.temperature,
                    beta=c.beta if c.use_labels else 0.0, device=device, generator=generator,
                    weight_decay=train.weight_decay, grad_clip=train.grad_clip,
                    cosine=True, blocks=blocks, dna_weight=c.dna_weight)
    after = agreement(student, teacher, x, batch_size=c.batch_size, device=device)
    return {"loss": stats["loss"], "agreement_before": before, "agreement_after": after,
            "proxy_samples": len(x), "labels_used": c.use_labels}
