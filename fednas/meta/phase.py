"""The meta phase: few-shot adaptation of a run's models, next to Conv-4 and AT-NAS.

For each shot count of ``[meta]``, every model of ``meta.models`` is meta-trained on tasks
of the meta-train classes (same seeded task stream for every model) and scored on the same
seeded test tasks (mean ± 95 % CI of query accuracy after ``eval-inner-steps`` steps):

The models (``searched``, ``supernet``, ``conv4``, ``metanas``) and their initial weights are
built by :mod:`fednas.meta.models` (``dap``, a trained network pruned by DAP on the meta-train
classes, by :mod:`fednas.meta.dap_model`); ``metanas`` first meta-learns the supernet's α with its
weights (:mod:`fednas.meta.metanas`), then its derived subnet is meta-trained like ``searched``
(the genotype and the genes MetaNAS changed are in its per-shot entry).

With ``meta.clients > 0`` the models are meta-trained by federated Reptile over clients with
disjoint classes: as Flower rounds in a federated run (:mod:`simulations.meta_rounds` hands the
weights to :func:`run_meta`), in-process otherwise (:mod:`fednas.meta.fedmeta`). With
``[meta.atnas] enabled``, the cell supernet (``none`` added to its ops when missing) is
meta-trained over sampled subnets and a subnet is evolved per test task (:mod:`fednas.meta.atnas`).
The meta-val classes serve model selection only (``meta.eval-split = "val"`` scores on them
instead of the test classes). Everything goes to ``meta.json`` in the run dir; every
meta-trained network is saved there too (``weights`` in its entry) and reused by a later meta
phase with the same training settings (:mod:`fednas.meta.store`).
:mod:`fednas.meta.learners` (learn2learn) is imported lazily, when the phase runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from fednas.data.episodes import FewShotSet
from fednas.errors import ConfigError
from fednas.meta import store as meta_store
from fednas.meta.atnas_phase import MetanasState, run_atnas
from fednas.meta.dap_model import DapSource
from fednas.meta.models import initial_model, meta_seed
from fednas.meta.setup import MetaSetup
from fednas.meta.steps import metanas_supernet, metrics_logger, task_kwargs
from fednas.meta.tasks import fewshot_data
from fednas.models.flops import count_flops, count_params
from fednas.reporting.rundir import RunDir


def meta_trained(setup: MetaSetup, run: RunDir, name: str, model: nn.Module, shots: int,
                 train_pool: FewShotSet, device: torch.device,
                 trained: tuple[dict[str, torch.Tensor], float] | None = None
                 ) -> tuple[nn.Module, float, str, bool]:
    """Model ``name`` meta-trained for ``shots``: the learner to score, its meta-training
    seconds, the weights file in the run dir and whether that file was reused.

    ``trained``: weights and seconds of Flower rounds (only saved here). Otherwise weights
    saved under the same settings (:mod:`fednas.meta.store`) are loaded, or the model is
    meta-trained (federated Reptile with ``meta.clients``, else ``meta.algorithm``) and saved.
    """
    from fednas.meta import learners as metalib

    m = setup.meta
    key = meta_store.training_key(setup, name, shots, run.path)
    if trained is not None:  # meta-trained by Flower rounds: their seconds are its train_s
        model.load_state_dict(trained[0])
        return model, trained[1], meta_store.save(run, key, model, trained[1]), False
    learner: nn.Module = model if m.clients else metalib.MetaLearner(
        model, m.l2l_algorithm, inner_lr=m.inner_lr, first_order=m.first_order)
    saved = meta_store.load(run.path, key)
    if saved is not None:
        meta_store.load_into(learner, saved)
        return learner, saved.seconds, saved.name, True
    t0 = time.perf_counter()
    log = metrics_logger(run, f"meta-{name}-{shots}shot", m.log_every)
    if m.clients:
        from fednas.meta.fedmeta import federated_reptile

        learner = federated_reptile(
            model, train_pool, clients=m.clients, ways=m.ways, shots=shots,
            queries=m.queries, rounds=m.iterations, meta_batch=m.meta_batch,
            inner_steps=m.local_steps, inner_lr=m.inner_lr, server_lr=m.server_lr,
            seed=meta_seed(setup, 3, shots), device=device, callback=log)
    else:
        learner = metalib.meta_train(
            learner, train_pool, m.l2l_algorithm, **task_kwargs(setup, shots), device=device,
            callback=log, generator=torch.Generator().manual_seed(meta_seed(setup, 3, shots)))
    seconds = time.perf_counter() - t0
    return learner, seconds, meta_store.save(run, key, learner, seconds), False


def run_meta(setup: MetaSetup, run_dir: Path | RunDir, device: torch.device,
             console: Console | None = None,
             trained: dict[str, tuple[dict[str, torch.Tensor], float]] | None = None
             ) -> dict[str, Any]:
    """Meta-train and score every model of ``setup.meta`` (and AT-NAS); write ``meta.json``.

    ``run_dir`` is the run directory (a :class:`RunDir` keeps its in-memory metrics in
    step). ``trained`` maps ``meta-<model>-<k>shot`` to weights meta-trained elsewhere and
    their seconds (Flower rounds: :mod:`simulations.meta_rounds`); those models are only scored.
    Returns the summary part: ``meta.json`` without AT-NAS's per-task lists.
    """
    from fednas.meta import learners as metalib

    console = console or Console(stderr=True)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.reopen(run_dir)
    m = setup.meta
    data, split = fewshot_data(setup)
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
    dap = DapSource(m.dap, train_pool, meta_seed(setup, 6, 0), device)  # pruned on first use
    for shots in m.shots:
        tasks = metalib.fixed_tasks(test_pool, ways=m.ways, shots=shots, queries=m.queries,
                                    num_tasks=m.eval_tasks, seed=meta_seed(setup, 1, shots))
        accs: dict[str, Any] = {}
        for name in m.models:
            derived: dict[str, Any] = {}
            if name == "dap":  # the source pruned on the meta-train classes (once)
                model, source, derived["dap"] = dap.model(lambda n, k=shots: initial_model(
                    n, setup, run.path, k, data.input_shape))
            else:
                model, source = initial_model(name, setup, run.path, shots, data.input_shape)
            pre_s = 0.0  # MetaNAS's seconds before the subnet's own meta-training
            if name == "metanas":  # central only (meta.clients = 0): the subnet trains below
                supernet = model
                model, derived = metanas_supernet(setup, run, supernet, train_pool, shots, device)
                pre_s = derived["supernet_meta_train_s"]
                metanas_states[shots] = ({k: v.detach().clone() for k, v in
                                          supernet.state_dict().items()}, pre_s)
            learner, train_s, weights, reused = meta_trained(
                setup, run, name, model, shots, train_pool, device,
                trained[f"meta-{name}-{shots}shot"] if trained is not None else None)
            train_s += pre_s
            t0 = time.perf_counter()
            accs[name] = metalib.task_accuracies(learner, tasks, steps=m.eval_inner_steps,
                                                 algorithm=m.l2l_algorithm,
                                                 inner_lr=m.inner_lr, device=device)
            mean, ci = metalib.mean_ci95(accs[name])
            if name not in result["models"]:  # sizes once per model, not per shot count
                result["models"][name] = {
                    "params": count_params(model), "init": source,
                    "flops": count_flops(model, tuple(data.input_shape), batch=2)}
            entry = result["models"][name]
            if "dap" in derived:  # the same pruning for every shot count
                entry["dap"] = derived.pop("dap")
            entry[f"{shots}shot"] = {"acc": mean, "ci95": ci, "meta_train_s": train_s,
                                     "eval_s": time.perf_counter() - t0, "weights": weights,
                                     "reused": reused, **derived}
            where = "" if m.eval_split == "test" else " (meta-val)"
            console.print(f"\\[meta] {name} {m.ways}-way {shots}-shot{where}: {100 * mean:.2f} ± "
                          f"{100 * ci:.2f} % ({count_params(model)} params, meta-train "
                          f"{train_s:.0f}s{' (saved)' if reused else ''}, init {source})")
        if m.atnas.enabled:
            searched = result["models"].get("searched", {}).get("params")
            report = run_atnas(setup, run, train_pool, tasks, shots, device, searched,
                               metanas_states.get(shots))
            result["atnas"][f"{shots}shot"] = report
            console.print(f"\\[meta] AT-NAS {m.ways}-way {shots}-shot: {100 * report['acc']:.2f}"
                          f" ± {100 * report['ci95']:.2f} % over {report['tasks']} tasks (mean "
                          f"{report['params_mean']:.0f} params, search "
                          f"{report['search_s_mean']:.1f}s per task)")
        if m.atnas.enabled or m.atnas.eval_tasks:
            # the MAML models on AT-NAS's tasks (the first N of the same seeded test tasks),
            # also where AT-NAS is off (bench/fewshot's reruns at another inner lr)
            n = min(m.atnas.eval_tasks or m.eval_tasks, len(tasks))
            for name, values in accs.items():
                sub = metalib.mean_ci95(values[:n])
                result["models"][name][f"{shots}shot"]["atnas_tasks"] = {
                    "acc": sub[0], "ci95": sub[1]}
    run.write_json("meta.json", result)
    return {**result, "atnas": {k: {f: v for f, v in r.items() if f != "per_task"}
                                for k, r in result["atnas"].items()}}

