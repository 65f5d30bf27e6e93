"""The client side of federated Reptile's Flower rounds (route ``train.meta``).

What a meta client needs to rebuild the meta-model a message names (:func:`model_spec`,
:func:`build_from_spec`) and its Reptile round on its own share of the meta-train classes
(:func:`local_update`); the server side is :mod:`simulations.meta_rounds`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fednas.federated.devices import client_device, placement
from fednas.federated.setup import inject_fault
from fednas.meta.setup import MetaSetup
from fednas.spaces.base import Genotype

if TYPE_CHECKING:
    from fednas.data.episodes import FewShotSet


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
    from fednas.meta.fedmeta import client_classes, displacement, task_seed
    from fednas.meta.task_sampler import TaskSampler

    m = setup.meta
    seed, rnd = int(conf["task-seed"]), int(conf["server-round"])
    pool = meta_train_pool(setup)
    share = client_classes(pool, int(conf["meta-clients"]), m.ways, seed)[pid]
    device = client_device()
    model = build_from_spec(setup, json.loads(str(conf["meta-model"])), pool.input_shape)
    model.load_state_dict(state)
    tasks = TaskSampler(pool.subset(share), ways=m.ways, shots=int(conf["shots"]),
                        queries=m.queries, seed=task_seed(seed, pid, rnd))
    update, loss = displacement(model.to(device), tasks, meta_batch=m.meta_batch,
                                inner_steps=m.local_steps, inner_lr=float(conf["lr"]),
                                device=device)
    if inject_fault(setup.federation, pid):  # federation.fault-partitions, as in the other phases
        loss = float("nan")
    return ({k: v.cpu() for k, v in update.items()},
            {"meta-loss": loss, "num-examples": m.meta_batch, "partition-id": pid,
             **placement(device)})
