"""Steps the meta phase's models and AT-NAS share: task settings, metric logging, MetaNAS.

:func:`metanas_supernet` meta-learns a supernet's α with its weights (MetaNAS, for the
``metanas`` model and AT-NAS's prior) or loads them from the run dir when a previous meta
phase saved them under the same settings (:mod:`fednas.meta.store`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fednas.data.episodes import FewShotSet
from fednas.meta import store as meta_store
from fednas.meta.models import meta_seed
from fednas.meta.setup import MetaSetup
from fednas.models.flops import count_params
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import SearchSpace


def task_kwargs(setup: MetaSetup, shots: int) -> dict[str, Any]:
    """The task and meta-learning options of :func:`fednas.meta.learners.meta_train` for
    ``shots``."""
    m = setup.meta
    return {"ways": m.ways, "shots": shots, "queries": m.queries, "meta_batch": m.meta_batch,
            "inner_steps": m.inner_steps, "inner_lr": m.inner_lr, "outer_lr": m.outer_lr,
            "iterations": m.iterations, "first_order": m.first_order}


def metrics_logger(run: RunDir, phase: str, every: int):
    """A meta_train callback: one metrics record per ``every`` outer steps (means)."""
    window: list[dict] = []

    def log(record: dict) -> None:
        window.append(record)
        if len(window) == every:
            names = {"loss": "meta_loss", "accuracy": "meta_acc"}  # Reptile has no accuracy
            run.log(phase, record["iteration"], **{out: sum(r[k] for r in window) / every
                                                   for k, out in names.items() if k in record})
            window.clear()

    return log


def run_metanas(setup: MetaSetup, run: RunDir, space: SearchSpace, train_pool: FewShotSet,
                shots: int, device: torch.device, phase: str = ""
                ) -> tuple[nn.Module, dict[str, Any]]:
    """MetaNAS for one shot count: meta-learn ``space``'s weights and α, derive the subnet
    (metrics logged as ``phase``, default ``meta-metanas-supernet-<k>shot``)."""
    from fednas.meta.metanas import metanas_search

    m = setup.meta
    r = metanas_search(space, train_pool, algorithm=m.l2l_algorithm,
                       arch_lr=m.metanas.arch_lr, device=device,
                       generator=torch.Generator().manual_seed(meta_seed(setup, 7, shots)),
                       callback=metrics_logger(run, phase or f"meta-metanas-supernet-{shots}shot",
                                               m.log_every),
                       **(task_kwargs(setup, shots) | {"iterations": m.metanas.iterations
                                                     or m.iterations}))
    return r.subnet, {"genotype": r.genotype, "changed_genes": r.changed_edges,
                      "params": count_params(r.subnet), "supernet_meta_train_s": r.seconds}


def metanas_supernet(setup: MetaSetup, run: RunDir, space: SearchSpace, train_pool: FewShotSet,
                     shots: int, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The ``metanas`` model's MetaNAS step: :func:`run_metanas`, or its saved supernet.

    Returns the derived subnet (inheriting the supernet's weights) and the record of
    :func:`run_metanas` plus ``supernet_weights`` (the file in the run dir) and ``reused``.
    """
    key = meta_store.training_key(setup, "metanas-supernet", shots, run.path)
    saved = meta_store.load(run.path, key)
    if saved is not None:
        meta_store.load_into(space, saved)
        derived = dict(saved.extra["derived"])
        return space.subnet(space.genotype()), {**derived, "supernet_weights": saved.name,
                                                "reused": True}
    subnet, derived = run_metanas(setup, run, space, train_pool, shots, device)
    name = meta_store.save(run, key, space, derived["supernet_meta_train_s"], derived=derived)
    return subnet, {**derived, "supernet_weights": name, "reused": False}
