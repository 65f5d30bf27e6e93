"""Federated meta-learning: Reptile with FedAvg over clients that hold disjoint classes.

Each client owns a disjoint share of the meta-train classes (its tasks never show another
client's classes). A round: every client starts from the global weights θ, runs
:func:`fednas.meta.reptile_round` on ``meta_batch`` of its own tasks and sends its
displacement Δ_c (the mean over its tasks of θ_task − θ); the server averages them and steps
θ ← θ + ε · mean_c Δ_c (Reptile, Nichol et al. 2018, as a FedAvg round with server lr ε).
Only weight displacements leave a client, never its images or classes. The rounds run
in-process (no Flower); the aggregation is the pure function :func:`server_step`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fednas.episodes import FewShotSet
from fednas.errors import ConfigError
from fednas.meta import TaskSampler, reptile_round


def client_classes(pool: FewShotSet, clients: int, ways: int, seed: int) -> list[np.ndarray]:
    """Disjoint, near-equal shares of the pool's classes, one per client (seeded)."""
    ids = np.random.default_rng(seed).permutation(pool.class_ids())
    parts = [np.sort(p) for p in np.array_split(ids, clients)]
    if min(len(p) for p in parts) < ways:
        raise ConfigError(f"meta.clients: {clients} clients share {len(ids)} meta-train "
                          f"classes, fewer than meta.ways = {ways} for some; use fewer clients")
    return parts


def client_samplers(pool: FewShotSet, clients: int, *, ways: int, shots: int, queries: int,
                    seed: int) -> list[TaskSampler]:
    """One task sampler per client over its own classes only (:func:`client_classes`)."""
    return [TaskSampler(pool.subset(p), ways=ways, shots=shots, queries=queries,
                        seed=seed + 1 + k)
            for k, p in enumerate(client_classes(pool, clients, ways, seed))]


def server_step(model: nn.Module, updates: Sequence[Sequence[torch.Tensor]],
                server_lr: float) -> None:
    """θ ← θ + ε · mean of the clients' displacements (one tensor per parameter each)."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(server_lr * torch.stack([u[i] for u in updates]).mean(0))


def federated_reptile(model: nn.Module, pool: FewShotSet, *, clients: int, ways: int,
                      shots: int, queries: int, rounds: int, meta_batch: int = 4,
                      inner_steps: int = 5, inner_lr: float = 0.1, server_lr: float = 1.0,
                      seed: int = 0, device: torch.device | str = "cpu",
                      callback: Callable[[dict], None] | None = None) -> nn.Module:
    """Meta-train ``model`` in place for ``rounds`` federated Reptile rounds; return it.

    ``callback`` gets ``{"iteration": round, "loss": mean client loss}`` after each round.
    """
    samplers = client_samplers(pool, clients, ways=ways, shots=shots, queries=queries, seed=seed)
    model.to(device)
    for rnd in range(1, rounds + 1):
        updates, losses = [], []
        for sampler in samplers:
            local = copy.deepcopy(model)
            out = reptile_round(local, sampler, meta_batch=meta_batch, inner_steps=inner_steps,
                                inner_lr=inner_lr, outer_lr=1.0, device=device)
            updates.append([a.detach() - b.detach() for a, b in
                            zip(local.parameters(), model.parameters(), strict=True)])
            losses.append(out["loss"])
        server_step(model, updates, server_lr)
        if callback is not None:
            finite = [x for x in losses if math.isfinite(x)]
            callback({"iteration": rnd, "loss": float(np.mean(finite)) if finite else math.nan})
    return model
