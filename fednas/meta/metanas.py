"""MetaNAS: meta-learn the supernet's architecture α with its weights on few-shot tasks.

Elsken et al., "Meta-Learning of Neural Architectures for Few-Shot Learning" (CVPR 2020):
the DARTS supernet is meta-trained with its architecture parameters as meta-parameters, so
the architecture itself is chosen for fast adaptation rather than for the search's
classification task. Here the supernet of a federated search (weights and α from
``supernet.pt``, or from scratch) is meta-trained on the meta-train tasks with
:func:`fednas.meta.learners.meta_train`: the outer loop updates the weights (``meta.outer-lr``) and
α
(``meta.metanas.arch-lr``, Adam β = (0.5, 0.999) as in DARTS); the inner loop adapts every
parameter the task loss uses, α included, as MetaNAS does. The genotype preferred by the
meta-learned α is then derived, and its subnet inherits the meta-trained weights (the
``ways``-class head included). Elsken et al. prune after per-task α adaptation; here the
derived subnet is shared by every task and meta-trained further like the other models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fednas.data.episodes import FewShotSet
from fednas.spaces.base import Genotype, SearchSpace


@dataclass
class MetaNASResult:
    """The derived subnet and how it came about."""

    subnet: nn.Module
    genotype: Genotype
    initial_genotype: Genotype
    changed_edges: int
    seconds: float


def changed_edges(a: Genotype, b: Genotype) -> int:
    """How many (op, input) genes differ between two genotypes of the same space."""
    count = 0
    for key, genes in a.items():
        other = b.get(key)
        if isinstance(genes, list) and isinstance(other, list):
            count += sum(x != y for x, y in zip(genes, other, strict=True))
    return count


def metanas_search(space: SearchSpace, tasks: FewShotSet, *, algorithm: str, arch_lr: float,
                   device: torch.device, generator: torch.Generator,
                   callback: Callable[[dict], None] | None = None,
                   **task_kwargs: Any) -> MetaNASResult:
    """Meta-train ``space`` (weights and α) on tasks of ``tasks``; derive its subnet.

    Parameters
    ----------
    space
        The supernet, initialised as wanted (its α is the starting architecture). It is
        meta-trained in place and left in train mode.
    tasks
        The meta-train pool.
    algorithm
        The :class:`fednas.meta.learners.MetaLearner` algorithm (maml, anil, metasgd).
    arch_lr
        Outer Adam lr of α (> 0).
    task_kwargs
        ``ways``, ``shots``, ``queries``, ``meta_batch``, ``inner_steps``, ``inner_lr``,
        ``outer_lr``, ``iterations``, ``first_order`` of :func:`fednas.meta.learners.meta_train`.
    """
    from fednas.meta import learners as meta

    if arch_lr <= 0:
        raise ValueError(f"metanas_search: arch_lr must be > 0 (got {arch_lr})")
    if not space.arch_parameters():
        raise ValueError(f"metanas_search: {type(space).__name__} has no architecture "
                         "parameters to meta-learn")
    initial = space.genotype()
    t0 = time.perf_counter()
    meta.meta_train(space, tasks, algorithm, device=device, generator=generator,
                    callback=callback, arch_lr=arch_lr, **task_kwargs)
    genotype = space.genotype()
    subnet = space.subnet(genotype)
    return MetaNASResult(subnet=subnet, genotype=genotype, initial_genotype=initial,
                         changed_edges=changed_edges(initial, genotype),
                         seconds=time.perf_counter() - t0)
