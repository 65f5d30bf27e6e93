"""AT-NAS in the meta phase: meta-train the cell supernet, then evolve a subnet per test task.

:func:`run_atnas` is called by :func:`fednas.meta.phase.run_meta` for each shot count when
``[meta.atnas] enabled``. With ``meta.atnas.prior = "metanas"`` the subnets are drawn from
α meta-learned by MetaNAS (:func:`atnas_prior`). The meta-trained supernet is saved in the
run dir and reused by a later meta phase with the same training settings
(:mod:`fednas.meta.store`), so the per-task search (evolution, fitness, adaptation steps,
test tasks) can be varied without meta-training again. The shared weights start from the
run's weights as ``meta.atnas.init`` says (:func:`initial_weights`), and are meta-trained
for ``meta.atnas.iterations`` (0: ``meta.iterations``, the outer steps every model of
``meta.models`` gets).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fednas.data.episodes import FewShotSet
from fednas.errors import CheckpointError, ConfigError
from fednas.meta import store as meta_store
from fednas.meta.models import load_matching, meta_seed, meta_space, saved_weights
from fednas.meta.setup import MetaSetup
from fednas.meta.steps import metrics_logger, run_metanas, task_kwargs
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import SearchSpace, load_genotype

MetanasState = tuple[dict[str, torch.Tensor], float]  # a meta-trained supernet, its seconds


def load_prior(space: SearchSpace, state: dict[str, torch.Tensor]) -> None:
    """Load a MetaNAS supernet's state (head included) into AT-NAS's space.

    AT-NAS's space may have ``none`` among its ops where MetaNAS's had not: α then gets a
    ``none`` column at -30 (weight ≈ 0, so the mixture is MetaNAS's, and never NaN when a
    shard leaves ``none`` alone on an edge). Every other tensor must match by name and shape.
    """
    own = space.state_dict()
    none = space.op_names.index("none") if "none" in space.op_names else None
    for key, value in state.items():
        if key in own and own[key].shape != value.shape and none is not None and (
                value.shape[:-1] == own[key].shape[:-1]
                and value.shape[-1] + 1 == own[key].shape[-1]):
            pad = torch.full((*value.shape[:-1], 1), -30.0, dtype=value.dtype)
            value = torch.cat([value[..., :none], pad, value[..., none:]], -1)
        if key not in own or own[key].shape != value.shape:
            raise CheckpointError(f"AT-NAS prior: MetaNAS supernet tensor {key!r} does not fit "
                                  "AT-NAS's supernet")
        own[key] = value
    space.load_state_dict(own)


def atnas_prior(setup: MetaSetup, run: RunDir, space: SearchSpace, train_pool: FewShotSet,
                shots: int, device: torch.device, metanas_state: MetanasState | None
                ) -> tuple[Any, dict[str, Any]]:
    """``meta.atnas.prior``: the :class:`fednas.meta.atnas.ArchPrior` (None: uniform) and a record.

    ``metanas``: α (with the weights) comes from the ``metanas`` model of the same shot count
    (``metanas_state`` when it ran in this process, else its supernet saved in the run dir
    under the same settings), or else from a MetaNAS search of AT-NAS's own supernet (itself
    saved and reused). ``prior_s`` counts MetaNAS's seconds either way.
    """
    from fednas.meta import atnas

    a = setup.meta.atnas
    if a.prior == "uniform":
        return None, {"prior": "uniform"}
    t0, reused_s = time.perf_counter(), 0.0
    source = "metanas model"
    if metanas_state is None:
        saved = meta_store.load(run.path, meta_store.training_key(setup, "metanas-supernet",
                                                                    shots, run.path))
        if saved is not None:
            metanas_state, source = (saved.state, saved.seconds), "metanas model (saved)"
    if metanas_state is not None:
        load_prior(space, metanas_state[0])
        reused_s = metanas_state[1]
    else:
        key = meta_store.training_key(setup, "atnas-prior", shots, run.path)
        saved = meta_store.load(run.path, key)
        if saved is not None:
            meta_store.load_into(space, saved)
            source, reused_s = "own metanas search (saved)", saved.seconds
        else:
            run_metanas(setup, run, space, train_pool, shots, device,
                        phase=f"meta-atnas-prior-{shots}shot")
            source = "own metanas search"
            meta_store.save(run, key, space, time.perf_counter() - t0)
    prior = atnas.ArchPrior(space, a.temperature)
    return prior, {"prior": "metanas", "prior_source": source, "prior_genotype": prior.mode(),
                   "temperature": a.temperature,
                   "prior_s": time.perf_counter() - t0 + reused_s, "reused_s": reused_s}


def initial_weights(setup: MetaSetup, run: RunDir, space: SearchSpace) -> dict[str, Any]:
    """Load AT-NAS's starting weights into ``space``; return ``init`` and ``init_source``.

    ``search``: the search's ``supernet.pt`` where names and shapes match (heads excluded).
    ``retrained``: that, then the retrained searched subnet (``searched.pt``, loaded into the
    genotype's subnet as the ``searched`` model loads it, heads excluded) copied back over the
    supernet tensors it came from (:meth:`fednas.spaces.cell.CellSupernet.load_subnet`: the
    genotype's op on each of its edges, stem, preprocessing). Raises ConfigError naming
    ``meta.atnas.init`` when ``retrained`` was asked for and the run has no usable subnet.
    """
    init = meta_store.atnas_init(setup, run.path)
    if setup.meta.atnas.init == "retrained" and init != "retrained":
        raise ConfigError('meta.atnas.init: "retrained" needs meta.init = "searched"')
    if init == "scratch":
        return {"init": "scratch", "init_source": "scratch"}
    state = saved_weights(run.path, "supernet")
    source = "supernet.pt" if state is not None and load_matching(space, state) else "scratch"
    if init == "search":
        return {"init": "search", "init_source": source}
    retrained = saved_weights(run.path, "searched")
    r, c = setup.retrain, setup.space.cell
    if retrained is None or r.channels not in (0, c.channels) or r.layers not in (0, c.layers):
        raise ConfigError(f'meta.atnas.init: "retrained" needs {run.path / "searched.pt"} (the '
                          "retrain phase) at the search's width and depth (retrain.channels/"
                          'layers 0); use "search" or "auto"')
    net = space.subnet(load_genotype(run.path / "genotype.json"))  # the supernet's weights
    taken = load_matching(net, retrained)  # then the retrained ones where they fit
    if not taken:
        raise CheckpointError(f"{run.path / 'searched.pt'}: no tensor fits the genotype's "
                              "subnet in AT-NAS's supernet")
    space.load_subnet(net)
    return {"init": "retrained", "init_source": f"searched.pt over {source}",
            "retrained_tensors": taken}


def trained_supernet(setup: MetaSetup, run: RunDir, train_pool: FewShotSet, shots: int,
                     device: torch.device, metanas_state: MetanasState | None
                     ) -> tuple[SearchSpace, Any, dict[str, Any]]:
    """AT-NAS's meta-trained supernet, its prior and a record (``meta_train_s``, ``weights``,
    ``reused``, the prior's fields): meta-trained here, or loaded from the run dir."""
    from fednas.meta import atnas

    m, a = setup.meta, setup.meta.atnas
    torch.manual_seed(meta_seed(setup, 4, shots))
    space = meta_space(setup, train_pool.input_shape, m.ways, with_none=True)
    init = initial_weights(setup, run, space)
    key = meta_store.training_key(setup, "atnas-supernet", shots, run.path)
    saved = meta_store.load(run.path, key)
    if saved is not None:
        meta_store.load_into(space, saved)
        record = dict(saved.extra["record"])
        prior = atnas.ArchPrior(space, a.temperature) if record["prior"] == "metanas" else None
        return space, prior, {**record, "meta_train_s": saved.seconds,
                              "weights": saved.name, "reused": True}
    t0 = time.perf_counter()
    prior, record = atnas_prior(setup, run, space, train_pool, shots, device, metanas_state)
    if record.get("prior_source", "").startswith("metanas model"):  # its weights replace init's
        init["init_source"] = record["prior_source"]
    atnas.meta_train_supernet(
        space, train_pool, algorithm="anil" if m.algorithm == "anil" else "maml",
        device=device, sampler=prior.sample if prior is not None else None,
        generator=torch.Generator().manual_seed(meta_seed(setup, 5, shots)),
        callback=metrics_logger(run, f"meta-atnas-{shots}shot", m.log_every),
        **(task_kwargs(setup, shots) | {"iterations": a.iterations or m.iterations}))
    record |= init
    train_s = time.perf_counter() - t0 + record.get("reused_s", 0.0)
    name = meta_store.save(run, key, space, train_s, record=record)
    return space, prior, {**record, "meta_train_s": train_s, "weights": name, "reused": False}


def run_atnas(setup: MetaSetup, run: RunDir, train_pool: FewShotSet, tasks: Any, shots: int,
              device: torch.device, searched_params: int | None,
              metanas_state: MetanasState | None = None) -> dict[str, Any]:
    """AT-NAS for one shot count: meta-train the supernet, evolve a subnet per test task.

    The first ``meta.atnas.eval-tasks`` of ``tasks`` are searched; 1-shot tasks score
    candidates on augmented copies of the support (:func:`fednas.meta.atnas.augmented_support`),
    by ``meta.atnas.fitness`` (recorded as ``fitness_measure``).
    With ``meta.atnas.prior = "metanas"`` subnets are drawn from MetaNAS's α
    (:func:`atnas_prior`); MetaNAS's seconds count in ``meta_train_s`` (also when reused).
    """
    from fednas.meta import atnas
    from fednas.meta.learners import mean_ci95

    m, a = setup.meta, setup.meta.atnas
    limits = [a.max_params, int(a.params_ratio * (searched_params or 0))]
    max_params = min(x for x in limits if x > 0) if any(x > 0 for x in limits) else None
    space, prior, record = trained_supernet(setup, run, train_pool, shots, device, metanas_state)
    evolution = atnas.EvolutionConfig(**a.evolution_options(), max_params=max_params)
    generator = torch.Generator().manual_seed(meta_seed(setup, 6, shots))
    algorithm = "anil" if m.algorithm == "anil" else "maml"
    per_task = []
    for i in range(min(a.eval_tasks or m.eval_tasks, len(tasks))):
        episode = tasks[i]
        fit = atnas.augmented_support(episode, a.augment_copies, generator) if shots == 1 else None
        r = atnas.search_task(space, episode, config=evolution, algorithm=algorithm,
                              inner_steps=a.inner_steps or m.eval_inner_steps,
                              inner_lr=m.inner_lr, generator=generator, device=device, fit=fit,
                              prior=prior)
        per_task.append({"genotype": r.genotype, "params": r.params, "acc": r.query_accuracy,
                         "fitness": r.fitness, "evaluations": r.evaluations,
                         "rejected": r.rejected, "search_s": r.search_seconds,
                         "adapt_s": r.adapt_seconds})
    mean, ci = mean_ci95([t["acc"] for t in per_task])
    n = len(per_task)
    return {"acc": mean, "ci95": ci, "tasks": n, "max_params": max_params,
            "fitness_measure": a.fitness,  # per_task "fitness": -mean CE (loss) or accuracy
            **record, "mode_chosen": sum(
                atnas.genotype_key(t["genotype"]) == atnas.genotype_key(record["prior_genotype"])
                for t in per_task) if prior is not None else None,
            "params_mean": sum(t["params"] for t in per_task) / n,
            "search_s_mean": sum(t["search_s"] for t in per_task) / n,
            "adapt_s_mean": sum(t["adapt_s"] for t in per_task) / n,
            "distinct_genotypes": len({str(t["genotype"]) for t in per_task}),
            "per_task": per_task}
