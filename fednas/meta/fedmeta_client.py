"""The client side of federated Reptile's Flower rounds (route ``train.meta``).

What a meta client needs to rebuild the meta-model a message names (:func:`model_spec`,
:func:`build_from_spec`) and its Reptile round on its own share of the meta-train classes
(:func:`local_update`; a cohort of meta clients in one message: :func:`cohort_updates`);
the server side is :mod:`simulations.meta_rounds`.
"""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fednas.federated.cohort import Outcome
from fednas.federated.devices import client_device, placement
from fednas.federated.faults import poison, start_fault
from fednas.meta.setup import MetaSetup
from fednas.spaces.base import Genotype
from fednas.training.vectorised import ClientJob, VectorisedTrainer

if TYPE_CHECKING:
    from fednas.data.episodes import FewShotSet
    from fednas.meta.task_sampler import TaskSampler


# -- the model a message names -------------------------------------------------------------
def model_spec(name: str, model: nn.Module, genotype: Genotype | None = None) -> dict[str, Any]:
    """What a client needs to rebuild ``model`` (architecture only; θ travels as arrays)."""
    if name in ("conv4", "conv4-pretrained"):  # pretrained: only θ differs
        return {"name": "conv4", "hidden": int(model.features[0].out_channels)}
    if name == "searched" and genotype is not None:
        return {"name": "searched", "genotype": genotype}
    raise ValueError("federated Reptile meta-trains 'searched', 'conv4' or 'conv4-pretrained', "
                     f"not {name!r}")


def build_from_spec(setup: MetaSetup, spec: dict[str, Any], input_shape: tuple[int, int, int]
                    ) -> nn.Module:
    """The architecture of :func:`fednas.meta.models.build_meta_model` for ``spec``."""
    from fednas.meta.models import searched_model

    ways = setup.meta.ways
    if spec["name"] == "conv4":
        from fednas.models.conv4 import Conv4

        return Conv4(input_shape=input_shape, num_classes=ways, hidden=int(spec["hidden"]))
    return searched_model(setup, spec["genotype"], input_shape)


# -- client side ---------------------------------------------------------------------------
@lru_cache(maxsize=2)
def meta_train_pool(setup: MetaSetup) -> FewShotSet:
    """The meta-train classes of ``meta.dataset`` (cached per process, like client data)."""
    from fednas.meta.tasks import fewshot_data

    data, split = fewshot_data(setup)
    return data.subset(split.train)


def local_update(setup: MetaSetup, pid: int, state: dict[str, torch.Tensor],
                 conf: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Client ``pid``'s Reptile round on its own classes: (Δ per parameter, metrics)."""
    from fednas.meta.fedmeta import displacement

    m = setup.meta
    rnd = int(conf["server-round"])
    nan = start_fault(setup.federation, setup.seed, "train.meta", rnd, pid)  # as elsewhere
    pool = meta_train_pool(setup)
    device = client_device()
    model = build_from_spec(setup, json.loads(str(conf["meta-model"])), pool.input_shape)
    model.load_state_dict(state)
    update, loss = displacement(model.to(device), _tasks(setup, pool, pid, conf),
                                meta_batch=m.meta_batch, inner_steps=m.local_steps,
                                inner_lr=float(conf["lr"]), device=device)
    out, metrics = {k: v.cpu() for k, v in update.items()}, _metrics(setup, pid, loss, device)
    if nan:
        poison(out, metrics, rnd, pid, loss_key="meta-loss")
    return out, metrics


def _tasks(setup: MetaSetup, pool: FewShotSet, pid: int, conf: dict[str, Any]
           ) -> TaskSampler:
    """Client ``pid``'s task sampler of this round: its class share, its round's seed."""
    from fednas.meta.fedmeta import client_classes, task_seed
    from fednas.meta.task_sampler import TaskSampler

    m, seed = setup.meta, int(conf["task-seed"])
    share = client_classes(pool, int(conf["meta-clients"]), m.ways, seed)[pid]
    return TaskSampler(pool.subset(share), ways=m.ways, shots=int(conf["shots"]),
                       queries=m.queries, seed=task_seed(seed, pid, int(conf["server-round"])))


def _metrics(setup: MetaSetup, pid: int, loss: float, device: torch.device
             ) -> dict[str, float]:
    return {"meta-loss": loss, "num-examples": setup.meta.meta_batch, "partition-id": pid,
            **placement(device)}


def cohort_updates(setup: MetaSetup, state: dict[str, torch.Tensor],
                   confs: list[dict[str, Any]]) -> list[Outcome]:
    """The Reptile rounds of a cohort's meta clients (one outcome each, in ``confs`` order).

    Every task of every member trains a copy of θ with plain SGD for ``local-steps`` steps on
    its support and query images, so all of them have one shape: they run as one
    :class:`~fednas.training.vectorised.VectorisedTrainer` computation over (member, task)
    pairs, with the tasks each member's own sampler draws in its own order. A member's Δ and
    loss are then formed as :func:`local_update` forms them (equal up to float rounding; see
    that trainer). A member that raises (its tasks cannot be drawn, an injected fault) fails
    alone; one whose loss becomes non-finite is reported with a non-finite loss and Δ.
    """
    m, device = setup.meta, client_device()
    pool = meta_train_pool(setup)
    model = build_from_spec(setup, json.loads(str(confs[0]["meta-model"])), pool.input_shape)
    model.load_state_dict(state)
    steps = max(int(m.local_steps), 0)
    jobs: dict[int, list[ClientJob]] = {}
    errors: dict[int, str] = {}
    faulty: set[int] = set()  # injected non-finite replies, as in local_update
    for conf in confs:
        pid = int(conf["partition-id"])
        try:
            if start_fault(setup.federation, setup.seed, "train.meta",
                           int(conf["server-round"]), pid):
                faulty.add(pid)
            tasks = _tasks(setup, pool, pid, conf)
            jobs[pid] = []
            for _ in range(m.meta_batch):
                ep = tasks.sample().to(device)
                x = torch.cat([ep.support_x, ep.query_x])
                y = torch.cat([ep.support_y, ep.query_y])
                jobs[pid].append(ClientJob(train=(x, y), steps=[torch.arange(len(y))] * steps,
                                           stats_from=0, lr=float(conf["lr"]), momentum=0.0,
                                           weight_decay=0.0))
        except Exception as exc:  # noqa: BLE001 - the member drops alone
            jobs.pop(pid, None)
            errors[pid] = f"{type(exc).__name__}: {exc}"
    trainer = VectorisedTrainer(copy.deepcopy(model), grad_clip=math.inf, device=device)
    flat = [job for pid in jobs for job in jobs[pid]]
    results = iter(trainer.run(model.state_dict(), flat) if flat else [])
    theta = {name: p.detach().to(device) for name, p in model.named_parameters()}
    out = []
    for conf in confs:
        pid = int(conf["partition-id"])
        if pid in errors:
            out.append(Outcome(pid, error=errors[pid]))
            continue
        delta = {k: torch.zeros_like(v) for k, v in theta.items()}
        losses = []
        for _ in jobs[pid]:
            res = next(results)
            if res.diverged:
                losses.append(math.nan)
                delta = {k: torch.full_like(v, math.nan) for k, v in theta.items()}
                continue
            losses.append(res.metrics["train_loss"])
            for k, d in delta.items():  # as reptile_round accumulates it
                d += (res.state[k] - theta[k]) / m.meta_batch
        loss = sum(losses) / len(losses) if losses and steps else math.nan
        update, metrics = {k: v.cpu() for k, v in delta.items()}, _metrics(setup, pid, loss,
                                                                           device)
        if pid in faulty:
            poison(update, metrics, int(conf["server-round"]), pid, loss_key="meta-loss")
        out.append(Outcome(pid, update, metrics))
    return out
