"""The meta phase: few-shot adaptation of a run's models, next to Conv-4 and AT-NAS.

For each shot count of ``[meta]``, every model of ``meta.models`` is meta-trained on tasks
of the meta-train classes (same seeded task stream for every model) and scored on the same
seeded test tasks (mean ± 95 % CI of query accuracy after ``eval-inner-steps`` steps):

The models (``searched``, ``supernet``, ``conv4``, ``metanas``) and their initial weights are
built by :mod:`fednas.meta_models`; ``metanas`` first meta-learns the supernet's α with its
weights (:mod:`fednas.metanas`), then its derived subnet is meta-trained like ``searched``
(the genotype and the genes MetaNAS changed are in its per-shot entry).

With ``meta.clients > 0`` the models are meta-trained by federated Reptile over clients with
disjoint classes: as Flower rounds in a federated run (:mod:`fednas.fedmeta_flow` hands the
weights to :func:`run_meta`), in-process otherwise (:mod:`fednas.fedmeta`). With
``[meta.atnas] enabled``, the cell supernet (``none`` added to its ops when missing) is
meta-trained over sampled subnets and a subnet is evolved per test task (:mod:`fednas.atnas`).
The meta-val classes serve model selection only (``meta.eval-split = "val"`` scores on them
instead of the test classes). Everything goes to ``meta.json`` in the run dir.
:mod:`fednas.meta` (learn2learn) is imported lazily, when the phase runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from fednas.config import RunConfig
from fednas.episodes import FewShotSet
from fednas.errors import CheckpointError, ConfigError
from fednas.flops import count_params
from fednas.meta_models import initial_model, load_matching, meta_seed, meta_space, saved_weights
from fednas.meta_tasks import fewshot_data
from fednas.runs import RunDir
from fednas.search_space import SearchSpace


def _task_kwargs(cfg: RunConfig, shots: int) -> dict[str, Any]:
    m = cfg.meta
    return {"ways": m.ways, "shots": shots, "queries": m.queries, "meta_batch": m.meta_batch,
            "inner_steps": m.inner_steps, "inner_lr": m.inner_lr, "outer_lr": m.outer_lr,
            "iterations": m.iterations, "first_order": m.first_order}


def _logger(run: RunDir, phase: str, every: int):
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


def run_metanas(cfg: RunConfig, run: RunDir, space: SearchSpace, train_pool: FewShotSet,
                shots: int, device: torch.device, phase: str = ""
                ) -> tuple[nn.Module, dict[str, Any]]:
    """MetaNAS for one shot count: meta-learn ``space``'s weights and α, derive the subnet
    (metrics logged as ``phase``, default ``meta-metanas-supernet-<k>shot``)."""
    from fednas.metanas import metanas_search

    m = cfg.meta
    r = metanas_search(space, train_pool, algorithm=m.l2l_algorithm,
                       arch_lr=m.metanas.arch_lr, device=device,
                       generator=torch.Generator().manual_seed(meta_seed(cfg, 7, shots)),
                       callback=_logger(run, phase or f"meta-metanas-supernet-{shots}shot",
                                        m.log_every),
                       **(_task_kwargs(cfg, shots) | {"iterations": m.metanas.iterations
                                                      or m.iterations}))
    return r.subnet, {"genotype": r.genotype, "changed_genes": r.changed_edges,
                      "params": count_params(r.subnet), "supernet_meta_train_s": r.seconds}


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


MetanasState = tuple[dict[str, torch.Tensor], float]  # a meta-trained supernet, its seconds


def atnas_prior(cfg: RunConfig, run: RunDir, space: SearchSpace, train_pool: FewShotSet,
                shots: int, device: torch.device, metanas_state: MetanasState | None
                ) -> tuple[Any, dict[str, Any]]:
    """``meta.atnas.prior``: the :class:`fednas.atnas.ArchPrior` (None: uniform) and a record.

    ``metanas``: α (with the weights) is meta-learned by MetaNAS first, or taken from the
    ``metanas`` model of the same shot count (``metanas_state``) when it ran; ``prior_s``
    counts MetaNAS's seconds either way.
    """
    from fednas import atnas

    a = cfg.meta.atnas
    if a.prior == "uniform":
        return None, {"prior": "uniform"}
    t0, reused_s = time.perf_counter(), 0.0
    if metanas_state is not None:
        load_prior(space, metanas_state[0])
        source, reused_s = "metanas model", metanas_state[1]
    else:
        run_metanas(cfg, run, space, train_pool, shots, device,
                    phase=f"meta-atnas-prior-{shots}shot")
        source = "own metanas search"
    prior = atnas.ArchPrior(space, a.temperature)
    return prior, {"prior": "metanas", "prior_source": source, "prior_genotype": prior.mode(),
                   "temperature": a.temperature,
                   "prior_s": time.perf_counter() - t0 + reused_s, "reused_s": reused_s}


def run_atnas(cfg: RunConfig, run: RunDir, train_pool: FewShotSet, tasks: Any, shots: int,
              device: torch.device, searched_params: int | None,
              metanas_state: MetanasState | None = None) -> dict[str, Any]:
    """AT-NAS for one shot count: meta-train the supernet, evolve a subnet per test task.

    The first ``meta.atnas.eval-tasks`` of ``tasks`` are searched; 1-shot tasks score
    candidates on augmented copies of the support (:func:`fednas.atnas.augmented_support`).
    With ``meta.atnas.prior = "metanas"`` subnets are drawn from MetaNAS's α
    (:func:`atnas_prior`); MetaNAS's seconds count in ``meta_train_s`` (also when reused).
    """
    from fednas import atnas
    from fednas.meta import mean_ci95

    m, a = cfg.meta, cfg.meta.atnas
    limits = [a.max_params, int(a.params_ratio * (searched_params or 0))]
    max_params = min(x for x in limits if x > 0) if any(x > 0 for x in limits) else None
    torch.manual_seed(meta_seed(cfg, 4, shots))
    space = meta_space(cfg, train_pool.input_shape, m.ways, with_none=True)
    state = saved_weights(run.path, "supernet") if m.init == "searched" else None
    source = "supernet.pt" if state is not None and load_matching(space, state) else "scratch"
    algorithm = "anil" if m.algorithm == "anil" else "maml"
    t0 = time.perf_counter()
    prior, record = atnas_prior(cfg, run, space, train_pool, shots, device, metanas_state)
    atnas.meta_train_supernet(
        space, train_pool, algorithm=algorithm, device=device,
        sampler=prior.sample if prior is not None else None,
        generator=torch.Generator().manual_seed(meta_seed(cfg, 5, shots)),
        callback=_logger(run, f"meta-atnas-{shots}shot", m.log_every),
        **(_task_kwargs(cfg, shots) | {"iterations": a.iterations or m.iterations}))
    train_s = time.perf_counter() - t0 + record.get("reused_s", 0.0)
    evolution = atnas.EvolutionConfig(**a.evolution_options(), max_params=max_params)
    generator = torch.Generator().manual_seed(meta_seed(cfg, 6, shots))
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
    return {"acc": mean, "ci95": ci, "tasks": n, "init": source, "max_params": max_params,
            **record, "mode_chosen": sum(
                atnas.genotype_key(t["genotype"]) == atnas.genotype_key(record["prior_genotype"])
                for t in per_task) if prior is not None else None,
            "meta_train_s": train_s, "params_mean": sum(t["params"] for t in per_task) / n,
            "search_s_mean": sum(t["search_s"] for t in per_task) / n,
            "adapt_s_mean": sum(t["adapt_s"] for t in per_task) / n,
            "distinct_genotypes": len({str(t["genotype"]) for t in per_task}),
            "per_task": per_task}


def run_meta(cfg: RunConfig, run_dir: Path | RunDir, device: torch.device,
             console: Console | None = None,
             trained: dict[str, tuple[dict[str, torch.Tensor], float]] | None = None
             ) -> dict[str, Any]:
    """Meta-train and score every model of ``cfg.meta`` (and AT-NAS); write ``meta.json``.

    ``run_dir`` is the run directory (a :class:`RunDir` keeps its in-memory metrics in
    step). ``trained`` maps ``meta-<model>-<k>shot`` to weights meta-trained elsewhere and
    their seconds (Flower rounds: :mod:`fednas.fedmeta_flow`); those models are only scored.
    Returns the summary part: ``meta.json`` without AT-NAS's per-task lists.
    """
    from fednas import meta as metalib

    console = console or Console(stderr=True)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.reopen(run_dir)
    m = cfg.meta
    data, split = fewshot_data(cfg)
    if not len(split.part(m.eval_split)):
        raise ConfigError(f"meta.eval-split: {m.eval_split!r} but the split gives that part "
                          f"no classes (meta.split = {list(m.split)})")
    train_pool, test_pool = data.subset(split.train), data.subset(split.part(m.eval_split))
    result: dict[str, Any] = {
        "dataset": m.dataset, "input_shape": list(data.input_shape), "split_by": m.split_by,
        "classes": {p: len(split.part(p)) for p in ("train", "val", "test")},
        "test_groups": list(split.groups[2]) if split.groups else None,
        "ways": m.ways, "queries": m.queries, "algorithm": m.algorithm,
        "training": (f"federated reptile, {m.clients} clients{' (Flower)' if trained else ''}"
                     if m.clients else m.algorithm),
        "eval_tasks": m.eval_tasks, "eval_inner_steps": m.eval_inner_steps,
        "eval_split": m.eval_split,
        "models": {}, "atnas": {}}
    metanas_states: dict[int, MetanasState] = {}  # AT-NAS's prior, when it asks
    for shots in m.shots:
        tasks = metalib.fixed_tasks(test_pool, ways=m.ways, shots=shots, queries=m.queries,
                                    num_tasks=m.eval_tasks, seed=meta_seed(cfg, 1, shots))
        accs: dict[str, Any] = {}
        for name in m.models:
            model, source = initial_model(name, cfg, run.path, shots, data.input_shape)
            t0 = time.perf_counter()
            log = _logger(run, f"meta-{name}-{shots}shot", m.log_every)
            derived: dict[str, Any] = {}
            if name == "metanas":  # central only (meta.clients = 0): the subnet trains below
                supernet = model
                model, derived = run_metanas(cfg, run, supernet, train_pool, shots, device)
                metanas_states[shots] = ({k: v.detach().clone() for k, v in
                                          supernet.state_dict().items()},
                                         derived["supernet_meta_train_s"])
            if trained is not None:  # meta-trained by Flower rounds: only scored here
                state, done_s = trained[f"meta-{name}-{shots}shot"]
                model.load_state_dict(state)
                learner, t0 = model, t0 - done_s  # its rounds' seconds are its train_s
            elif m.clients:
                from fednas.fedmeta import federated_reptile

                learner = federated_reptile(
                    model, train_pool, clients=m.clients, ways=m.ways, shots=shots,
                    queries=m.queries, rounds=m.iterations, meta_batch=m.meta_batch,
                    inner_steps=m.local_steps, inner_lr=m.inner_lr, server_lr=m.server_lr,
                    seed=meta_seed(cfg, 3, shots), device=device, callback=log)
            else:
                learner = metalib.meta_train(
                    model, train_pool, m.l2l_algorithm, **_task_kwargs(cfg, shots),
                    device=device, callback=log,
                    generator=torch.Generator().manual_seed(meta_seed(cfg, 3, shots)))
            train_s = time.perf_counter() - t0
            accs[name] = metalib.task_accuracies(learner, tasks, steps=m.eval_inner_steps,
                                                 algorithm=m.l2l_algorithm,
                                                 inner_lr=m.inner_lr, device=device)
            mean, ci = metalib.mean_ci95(accs[name])
            entry = result["models"].setdefault(name, {"params": count_params(model),
                                                       "init": source})
            entry[f"{shots}shot"] = {"acc": mean, "ci95": ci, "meta_train_s": train_s,
                                     "eval_s": time.perf_counter() - t0 - train_s, **derived}
            where = "" if m.eval_split == "test" else " (meta-val)"
            console.print(f"\\[meta] {name} {m.ways}-way {shots}-shot{where}: {100 * mean:.2f} ± "
                          f"{100 * ci:.2f} % ({count_params(model)} params, meta-train "
                          f"{train_s:.0f}s, init {source})")
        if m.atnas.enabled:
            searched = result["models"].get("searched", {}).get("params")
            report = run_atnas(cfg, run, train_pool, tasks, shots, device, searched,
                               metanas_states.get(shots))
            result["atnas"][f"{shots}shot"] = report
            n = report["tasks"]
            for name, values in accs.items():  # the MAML models on AT-NAS's task subset
                sub = metalib.mean_ci95(values[:n])
                result["models"][name][f"{shots}shot"]["atnas_tasks"] = {
                    "acc": sub[0], "ci95": sub[1]}
            console.print(f"\\[meta] AT-NAS {m.ways}-way {shots}-shot: {100 * report['acc']:.2f}"
                          f" ± {100 * report['ci95']:.2f} % over {n} tasks (mean "
                          f"{report['params_mean']:.0f} params, search "
                          f"{report['search_s_mean']:.1f}s per task)")
    run.write_json("meta.json", result)
    return {**result, "atnas": {k: {f: v for f, v in r.items() if f != "per_task"}
                                for k, r in result["atnas"].items()}}


def pipeline_meta(pipeline: Any, train: Callable[[], dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The meta phase at the end of a pipeline, timed; ``train()`` gives :func:`run_meta`'s
    ``trained`` (a federated run's Flower rounds)."""
    t0 = time.perf_counter()
    trained = train() if train is not None else None
    result = run_meta(pipeline.cfg, pipeline.rundir, pipeline.device, pipeline.console,
                      trained)
    pipeline.timings["meta"] = time.perf_counter() - t0
    return result
