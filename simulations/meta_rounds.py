"""Federated Reptile as Flower rounds: the meta phase of a federated run with meta.clients > 0.

Each model of ``meta.models`` and shot count of ``meta.shots`` is meta-trained by a phase
``meta-<model>-<k>shot`` of ``meta.iterations`` Flower rounds, run by the federated
pipeline's round loop like every other federated phase (a metrics record per round,
checkpoints, pause and resume). One round (server: :class:`strategies.reptile.FedReptile`):

1. server → meta client k (the node of partition k, for every k < ``meta.clients``), route
   ``train.meta``: arrays = the global meta-model θ (state dict); config = ``meta-model``
   (JSON: the Conv-4 width or the searched genotype), ``shots``, ``task-seed``,
   ``meta-clients``, ``lr`` (= meta.inner-lr), ``server-round``, ``partition-id``.
2. client k (:func:`local_update`) rebuilds the meta-train pool and its own class share from
   the scenario (both deterministic in the config seed, :func:`fednas.meta.fedmeta.client_classes`),
   builds the model from the spec, loads θ, runs Reptile on ``meta-batch`` tasks of its
   classes, drawn with ``task_seed(task-seed, k, round)``, and replies with arrays = Δ per
   parameter, metrics = ``meta-loss``, ``num-examples`` (tasks), ``partition-id`` and where
   it ran. Its images and class ids never leave it.
3. server: θ ← θ + ε · mean Δ (:func:`fednas.meta.fedmeta.reptile_step`).

Same seeds, same model as the in-process :func:`fednas.meta.fedmeta.federated_reptile` (which
``fednas meta RUN_DIR`` and centralised scenarios use). The server then scores the models
on its meta-test tasks (:func:`fednas.meta.phase.run_meta`, given the trained weights);
AT-NAS stays central. A checkpoint carries the weights of the models already meta-trained
(``meta_done``), so a resumed run skips their rounds and rescores them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from flwr.serverapp import Grid
from torch import nn

from fednas.config.run_config import RunConfig
from fednas.federated.client import client_device, inject_fault, placement
from fednas.spaces.base import Genotype, load_genotype

if TYPE_CHECKING:
    from fednas.data.episodes import FewShotSet

Trained = dict[str, tuple[dict[str, torch.Tensor], float]]  # phase -> (weights, seconds)


# -- the model a message names -------------------------------------------------------------
def model_spec(name: str, model: nn.Module, genotype: Genotype | None = None) -> dict[str, Any]:
    """What a client needs to rebuild ``model`` (architecture only; θ travels as arrays)."""
    if name in ("conv4", "conv4-pretrained"):  # pretrained: only θ differs
        return {"name": "conv4", "hidden": int(model.features[0].out_channels)}
    if name == "searched" and genotype is not None:
        return {"name": "searched", "genotype": genotype}
    raise ValueError("federated Reptile meta-trains 'searched', 'conv4' or 'conv4-pretrained', "
                     f"not {name!r}")


def build_from_spec(cfg: RunConfig, spec: dict[str, Any], input_shape: tuple[int, int, int]
                    ) -> nn.Module:
    """The architecture of :func:`fednas.meta.models.build_meta_model` for ``spec``."""
    from fednas.meta.models import searched_model

    ways = cfg.meta.ways
    if spec["name"] == "conv4":
        from fednas.models.conv4 import Conv4

        return Conv4(input_shape=input_shape, num_classes=ways, hidden=int(spec["hidden"]))
    return searched_model(cfg, spec["genotype"], input_shape)


# -- client side ---------------------------------------------------------------------------
@lru_cache(maxsize=2)
def meta_train_pool(cfg: RunConfig) -> FewShotSet:
    """The meta-train classes of ``meta.dataset`` (cached per process, like client data)."""
    from fednas.meta.tasks import fewshot_data

    data, split = fewshot_data(cfg)
    return data.subset(split.train)


def local_update(cfg: RunConfig, pid: int, state: dict[str, torch.Tensor],
                 conf: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Client ``pid``'s Reptile round on its own classes: (Δ per parameter, metrics)."""
    from fednas.meta.fedmeta import client_classes, displacement, task_seed
    from fednas.meta.task_sampler import TaskSampler

    m = cfg.meta
    seed, rnd = int(conf["task-seed"]), int(conf["server-round"])
    pool = meta_train_pool(cfg)
    share = client_classes(pool, int(conf["meta-clients"]), m.ways, seed)[pid]
    device = client_device()
    model = build_from_spec(cfg, json.loads(str(conf["meta-model"])), pool.input_shape)
    model.load_state_dict(state)
    tasks = TaskSampler(pool.subset(share), ways=m.ways, shots=int(conf["shots"]),
                        queries=m.queries, seed=task_seed(seed, pid, rnd))
    update, loss = displacement(model.to(device), tasks, meta_batch=m.meta_batch,
                                inner_steps=m.local_steps, inner_lr=float(conf["lr"]),
                                device=device)
    if inject_fault(cfg, pid):  # federation.fault-partitions, as in the other phases
        loss = float("nan")
    return ({k: v.cpu() for k, v in update.items()},
            {"meta-loss": loss, "num-examples": m.meta_batch, "partition-id": pid,
             **placement(device)})


# -- server side ---------------------------------------------------------------------------
class MetaRounds:
    """Mixed into :class:`simulations.federated.FederatedPipeline`: the meta phase's Flower
    rounds."""

    def federated_meta(self, grid: Grid, done: list[str]) -> Trained:
        """Meta-train every model and shot count of ``[meta]``; their weights and seconds."""
        from fednas.meta.tasks import fewshot_data

        cfg, m = self.cfg, self.cfg.meta
        data, _ = fewshot_data(cfg)  # client shares were checked in prepare (check_tasks)
        nodes = {node: pid for node, pid in self.node_partitions.items() if pid < m.clients}
        self.meta_done = dict((self.checkpoint or {}).get("meta_done") or {})
        trained: Trained = {}
        for shots in m.shots:
            for name in m.models:
                phase = f"meta-{name}-{shots}shot"
                if phase not in self.meta_done:  # else: meta-trained before a resume
                    self.meta_done[phase] = self._meta_rounds(grid, phase, name, shots, nodes,
                                                              data.input_shape, done)
                seconds = sum(r.get("wall_s", 0.0) for r in self.rundir.metrics
                              if r["phase"] == phase)
                trained[phase] = (self.meta_done[phase], seconds)
        return trained

    def _meta_rounds(self, grid: Grid, phase: str, name: str, shots: int,
                     nodes: dict[int, int], input_shape: tuple[int, int, int],
                     done: list[str]) -> dict[str, torch.Tensor]:
        from fednas.meta.models import initial_model, meta_seed
        from strategies.reptile import FedReptile

        cfg, m = self.cfg, self.cfg.meta
        model, _ = initial_model(name, cfg, self.rundir.path, shots, input_shape)
        genotype = load_genotype(self.rundir.path / "genotype.json") if name == "searched" \
            else None
        strategy = FedReptile([k for k, _ in model.named_parameters()], server_lr=m.server_lr,
                              min_train_nodes=min(cfg.federation.min_fit_clients, m.clients),
                              node_partitions=nodes)
        extra = {"meta-model": json.dumps(model_spec(name, model, genotype), sort_keys=True),
                 "shots": shots, "task-seed": meta_seed(cfg, 3, shots),
                 "meta-clients": m.clients}
        return self._rounds(grid, phase, strategy, model.state_dict(), m.iterations,
                            (m.inner_lr, m.inner_lr), extra, lambda state: {}, done)
