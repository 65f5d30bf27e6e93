"""Federated meta-learning: Reptile with FedAvg over clients that hold disjoint classes.

Each client owns a disjoint share of the meta-train classes (its tasks never show another
client's classes). A round: every client starts from the global weights θ, runs
:func:`reptile_round` on ``meta_batch`` of its own tasks and sends its
displacement Δ_c (the mean over its tasks of θ_task − θ); the server averages them and steps
θ ← θ + ε · mean_c Δ_c (Reptile, Nichol et al. 2018, as a FedAvg round with server lr ε).
Only weight displacements leave a client, never its images or classes.

The pieces are pure functions shared by both paths, so that they give the same model:
:func:`federated_reptile` runs the rounds in-process (centralised scenarios, ``fednas meta``);
federated scenarios run them as Flower rounds (:mod:`simulations.meta_rounds`,
:class:`strategies.reptile.FedReptile`). A client's task draws in a round are seeded by
(seed, client, round) alone (:func:`task_seed`), so a stateless Flower client draws the same
tasks as the in-process loop; the server step is :func:`reptile_step` in both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fednas.errors import ConfigError

if TYPE_CHECKING:  # fednas.meta.task_sampler imports learn2learn: only the clients' side needs it
    from fednas.data.episodes import FewShotSet
    from fednas.meta.task_sampler import TaskSampler

Update = Mapping[str, torch.Tensor]  # parameter name -> displacement


def client_classes(pool: FewShotSet, clients: int, ways: int, seed: int) -> list[np.ndarray]:
    """Disjoint, near-equal shares of the pool's classes, one per client (seeded)."""
    ids = np.random.default_rng(seed).permutation(pool.class_ids())
    parts = [np.sort(p) for p in np.array_split(ids, clients)]
    if min(len(p) for p in parts) < ways:
        raise ConfigError(f"meta.clients: {clients} clients share {len(ids)} meta-train "
                          f"classes, fewer than meta.ways = {ways} for some; use fewer clients")
    return parts


def task_seed(seed: int, client: int, rnd: int) -> int:
    """Seed of client ``client``'s task draws in round ``rnd`` (a function of these alone)."""
    return int(np.random.SeedSequence([seed, client, rnd]).generate_state(1)[0])


def client_samplers(pool: FewShotSet, clients: int, *, ways: int, shots: int, queries: int,
                    seed: int, rnd: int = 1) -> list[TaskSampler]:
    """Round ``rnd``'s task sampler of each client, over its own classes only."""
    from fednas.meta.task_sampler import TaskSampler

    return [TaskSampler(pool.subset(p), ways=ways, shots=shots, queries=queries,
                        seed=task_seed(seed, k, rnd))
            for k, p in enumerate(client_classes(pool, clients, ways, seed))]


def reptile_round(model: nn.Module, tasks: TaskSampler, *, meta_batch: int = 4,
                  inner_steps: int = 5, inner_lr: float = 0.01, outer_lr: float = 0.1,
                  device: torch.device | str = "cpu") -> dict:
    """One Reptile outer step: θ ← θ + ε · mean_task(θ_task − θ) (Nichol et al. 2018).

    Each task trains a copy with SGD on support and query together. The mean displacement
    is what a federated client would send; the server averages it. Returns the mean loss.
    """
    model.to(device).train()
    start = [p.detach().clone() for p in model.parameters()]
    delta = [torch.zeros_like(p) for p in start]
    losses = []
    for _ in range(meta_batch):
        ep = tasks.sample().to(device)
        x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
        fast = copy.deepcopy(model)
        opt = torch.optim.SGD(fast.parameters(), lr=inner_lr)
        for _ in range(inner_steps):
            opt.zero_grad()
            loss = F.cross_entropy(fast(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        for d, p, p0 in zip(delta, fast.parameters(), start, strict=True):
            d += (p.detach() - p0) / meta_batch
    with torch.no_grad():
        for p, d in zip(model.parameters(), delta, strict=True):
            p.add_(outer_lr * d)
    return {"loss": float(np.mean(losses)) if losses else float("nan")}


def displacement(model: nn.Module, tasks: TaskSampler, *, meta_batch: int, inner_steps: int,
                 inner_lr: float, device: torch.device | str = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], float]:
    """A client's Reptile update from ``model`` (left unchanged): Δ per parameter, mean loss."""
    local = copy.deepcopy(model)
    out = reptile_round(local, tasks, meta_batch=meta_batch, inner_steps=inner_steps,
                        inner_lr=inner_lr, outer_lr=1.0, device=device)
    return ({name: a.detach() - b.detach() for (name, a), b in
             zip(local.named_parameters(), model.parameters(), strict=True)}, out["loss"])


def reptile_step(state: Mapping[str, torch.Tensor], updates: Sequence[Update],
                 server_lr: float) -> dict[str, torch.Tensor]:
    """θ + ε · (plain) mean of the clients' Δ, per key of the updates; other keys are kept.

    A plain mean: every client runs the same number of equally sized tasks, so weighting by
    tasks or samples would give the same mean (a larger class share does not mean more work).
    """
    out = dict(state)
    with torch.no_grad():
        for key in updates[0]:
            out[key] = state[key] + server_lr * torch.stack([u[key] for u in updates]).mean(0)
    return out


def server_step(model: nn.Module, updates: Sequence[Sequence[torch.Tensor]],
                server_lr: float) -> None:
    """:func:`reptile_step` in place, with one displacement tensor per parameter per client."""
    names = [name for name, _ in model.named_parameters()]
    _assign(model, reptile_step(dict(model.named_parameters()),
                                [dict(zip(names, u, strict=True)) for u in updates], server_lr))


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])


def mean_loss(losses: Sequence[float]) -> float:
    """Mean of the finite client losses (NaN when there is none)."""
    finite = [x for x in losses if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def federated_reptile(model: nn.Module, pool: FewShotSet, *, clients: int, ways: int,
                      shots: int, queries: int, rounds: int, meta_batch: int = 4,
                      inner_steps: int = 5, inner_lr: float = 0.1, server_lr: float = 1.0,
                      seed: int = 0, device: torch.device | str = "cpu",
                      callback: Callable[[dict], None] | None = None) -> nn.Module:
    """Meta-train ``model`` in place for ``rounds`` federated Reptile rounds; return it.

    In-process; Flower's rounds (:mod:`simulations.meta_rounds`) give the same model.
    ``callback`` gets ``{"iteration": round, "loss": mean client loss}`` after each round.
    """
    client_classes(pool, clients, ways, seed)  # fails early on too small shares
    model.to(device)
    for rnd in range(1, rounds + 1):
        updates, losses = [], []
        for sampler in client_samplers(pool, clients, ways=ways, shots=shots,
                                       queries=queries, seed=seed, rnd=rnd):
            update, loss = displacement(model, sampler, meta_batch=meta_batch,
                                        inner_steps=inner_steps, inner_lr=inner_lr,
                                        device=device)
            updates.append(update)
            losses.append(loss)
        _assign(model, reptile_step(dict(model.named_parameters()), updates, server_lr))
        if callback is not None:
            callback({"iteration": rnd, "loss": mean_loss(losses)})
    return model
