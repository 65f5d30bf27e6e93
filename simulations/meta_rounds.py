"""Federated Reptile as Flower rounds: the meta phase of a federated run with meta.clients > 0.

Each model of ``meta.models`` and shot count of ``meta.shots`` is meta-trained by a phase
``meta-<model>-<k>shot`` of ``meta.iterations`` Flower rounds, run by the federated
pipeline's round loop like every other federated phase (a metrics record per round,
checkpoints, pause and resume). One round (server: :class:`strategies.reptile.FedReptile`):

1. server → meta client k (the node of partition k, for every k < ``meta.clients``), route
   ``train.meta``: arrays = the global meta-model θ (state dict); config = ``meta-model``
   (JSON: the Conv-4 width or the searched genotype), ``shots``, ``task-seed``,
   ``meta-clients``, ``lr`` (= meta.inner-lr), ``server-round``, ``partition-id``.
2. client k (:func:`fednas.meta.fedmeta_client.local_update`) rebuilds the meta-train pool
   and its own class share from the scenario (both deterministic in the config seed,
   :func:`fednas.meta.fedmeta.client_classes`),
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
from typing import Any

import torch

from fednas.meta.fedmeta_client import model_spec
from fednas.meta.setup import meta_setup
from fednas.spaces.base import load_genotype

Trained = dict[str, tuple[dict[str, torch.Tensor], float]]  # phase -> (weights, seconds)


class MetaRounds:
    """The meta phase's Flower rounds on a federated runner ``run`` (its ``meta``)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def train(self) -> Trained:
        """Meta-train every model and shot count of ``[meta]``; their weights and seconds."""
        from fednas.meta.tasks import fewshot_data

        m = self.run.cfg.meta
        data, _ = fewshot_data(meta_setup(self.run.cfg))  # client shares: checked in prepare
        nodes = {node: pid for node, pid in self.run.node_partitions.items() if pid < m.clients}
        state = self.run.state
        state.meta_done = dict((state.checkpoint or {}).get("meta_done") or {})
        trained: Trained = {}
        for shots in m.shots:
            for name in m.models:
                phase = f"meta-{name}-{shots}shot"
                if phase not in state.meta_done:  # else: meta-trained before a resume
                    state.meta_done[phase] = self._meta_rounds(phase, name, shots, nodes,
                                                               data.input_shape)
                seconds = sum(r.get("wall_s", 0.0) for r in self.run.rundir.metrics
                              if r["phase"] == phase)
                trained[phase] = (state.meta_done[phase], seconds)
        return trained

    def _meta_rounds(self, phase: str, name: str, shots: int, nodes: dict[int, int],
                     input_shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        from fednas.meta.models import initial_model, meta_seed
        from strategies.reptile import FedReptile

        cfg, m = self.run.cfg, self.run.cfg.meta
        setup = meta_setup(cfg)
        model, _ = initial_model(name, setup, self.run.rundir.path, shots, input_shape)
        genotype = load_genotype(self.run.rundir.path / "genotype.json") if name == "searched" \
            else None
        strategy = FedReptile([k for k, _ in model.named_parameters()], server_lr=m.server_lr,
                              min_train_nodes=min(cfg.federation.min_fit_clients, m.clients),
                              node_partitions=nodes)
        strategy.cohorts = self.run.cohorts(phase)
        extra = {"meta-model": json.dumps(model_spec(name, model, genotype), sort_keys=True),
                 "shots": shots, "task-seed": meta_seed(setup, 3, shots),
                 "meta-clients": m.clients}
        return self.run.loop.run(self.run.grid, phase, strategy, model.state_dict(),
                                 m.iterations, (m.inner_lr, m.inner_lr), extra,
                                 lambda weights: {})
