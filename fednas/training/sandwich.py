"""Sandwich-rule search steps for the width space (slimmable networks; CASD/SWP, BigNAS).

Each weight step trains several widths of the shared weights on one batch: the largest
width of the client's shard with cross-entropy, then the smallest and ``samples`` random
widths with in-place distillation from the largest width's (detached) predictions; their
gradients are summed before one optimiser step (Yu & Huang, "Universally Slimmable
Networks", 2019). The α step on a validation batch is DARTS' first-order step on the α
channel mixture, as in :func:`fednas.training.train.search_steps`, so α over widths is aggregated
exactly like the cell space's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fednas.training.distill import kd_loss
from fednas.training.train import (
    EpochStats,
    Split,
    bilevel_batches,
    checked_loss,
    clipped_step,
    search_steps,
)


def search_step_fn(search: Any) -> Callable[..., dict[str, float]]:
    """The search-step function of a ``[search]`` section: sandwich steps
    (``search.sandwich``) or DARTS'."""
    if not search.sandwich:
        return search_steps
    return functools.partial(sandwich_steps, samples=search.sandwich_samples)


def shard_choices(space: nn.Module) -> list[list[float]]:
    """The width choices every prunable layer may take under the space's current shard."""
    masks = space.shard or [torch.ones(len(space.width_choices), dtype=torch.bool)
                            for _ in range(space.num_prunable)]
    return [[w for w, on in zip(space.width_choices, m.tolist(), strict=True) if on]
            for m in masks]


def sandwich_widths(choices: list[list[float]], samples: int, generator: torch.Generator
                    ) -> list[list[float]]:
    """``[largest, smallest, *samples random]`` width vectors drawn from ``choices``."""
    out = [[max(c) for c in choices], [min(c) for c in choices]]
    for _ in range(samples):
        out.append([c[int(torch.randint(len(c), (1,), generator=generator))] for c in choices])
    return out


def sandwich_steps(space: nn.Module, train: Split, val: Split, *,
                   weight_opt: torch.optim.Optimizer, arch_opt: torch.optim.Optimizer | None,
                   steps: int, batch_size: int, grad_clip: float, generator: torch.Generator,
                   device: torch.device, samples: int = 2, temperature: float = 1.0,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   progress=None) -> dict[str, float]:
    """Like :func:`fednas.training.train.search_steps`, with sandwich-rule weight steps.

    Parameters
    ----------
    space
        A :class:`fednas.spaces.width.SlimmableResNet` (its shard, if set, bounds the widths).
    samples
        Random widths per step besides the largest and the smallest.
    temperature
        Temperature of the in-place distillation.

    Returns
    -------
    dict
        ``train_loss``/``train_acc`` of the largest width, ``train_kd`` (mean in-place
        distillation loss of the other widths), and ``arch_loss``/``arch_acc`` with α steps.
    """
    space.train()
    weights = [p for g in weight_opt.param_groups for p in g["params"]]
    stats, arch_stats = EpochStats(), EpochStats()
    choices = shard_choices(space)
    kd_total = 0.0
    for x, y in bilevel_batches(space, train, val, arch_opt=arch_opt, arch_stats=arch_stats,
                                steps=steps, batch_size=batch_size, generator=generator,
                                device=device):
        weight_opt.zero_grad(set_to_none=True)
        widths = sandwich_widths(choices, samples, generator)
        with space.active_widths(widths[0]):
            logits = space(x)
        loss = checked_loss(logits, y, "search", "lower search.lr")
        loss.backward()
        target = logits.detach()
        kd = 0.0
        for w in widths[1:]:
            with space.active_widths(w):
                sub = kd_loss(space(x), target, temperature=temperature)
            sub.backward()
            kd += sub.item()
        clipped_step(weight_opt, weights, grad_clip, scheduler)
        stats.add(loss.detach(), target, y)
        kd_total += kd / max(len(widths) - 1, 1)
        if progress is not None:
            progress()
    out = stats.result("train")
    out["train_kd"] = kd_total / max(steps, 1)
    if arch_opt is not None:
        out.update(arch_stats.result("arch"))
    return out
