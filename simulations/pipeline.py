"""The centralised pipeline: search → derive → retrain the subnet → hand-designed baseline.

The federated phases (Flower/Ray) build on the same pieces; this module is the reference
single-process run that ``fednas run`` executes for scenarios without federation.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fednas.config.run_config import RunConfig, TrainConfig
from fednas.data.datasets import Dataset
from fednas.data.partition import partition_indices, partition_stats
from fednas.data.run_data import run_dataset
from fednas.errors import ConfigError
from fednas.models.baselines import build_model
from fednas.models.flops import count_flops, count_params
from fednas.reporting.plots import plot_alpha, plot_alpha_evolution, plot_curves
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import Genotype, SearchSpace, save_genotype
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space
from fednas.training.sandwich import search_step_fn
from fednas.training.train import (
    evaluate,
    make_optimizer,
    make_scheduler,
    resolve_device,
    seed_everything,
    steps_per_epoch,
    train_epoch,
)
from fednas.version import __version__


def make_progress(enabled: bool, console: Console) -> Any:
    """A rich progress display, or a no-op context when disabled."""
    if not enabled:
        return nullcontext(None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


class Pipeline:
    """One centralised run of a :class:`RunConfig`; call :meth:`run`."""

    def __init__(self, cfg: RunConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.timings: dict[str, float] = {}
        self.models: dict[str, dict[str, Any]] = {}

    # -- preparation: everything that can fail on bad input happens before the run dir exists
    def prepare(self) -> None:
        cfg = self.cfg
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = resolve_device(cfg.runtime.device)
        self.generator = seed_everything(cfg.seed)
        t0 = time.perf_counter()
        self.data: Dataset = run_dataset(cfg)
        n_train = len(self.data.train_y)
        if cfg.partition.num_clients > n_train:
            raise ConfigError(f"partition.num-clients: {cfg.partition.num_clients} clients but "
                              f"only {n_train} training samples; allowed: 1..{n_train}")
        if "search" in cfg.phases and len(self.data.val_y) < cfg.search.batch_size:
            raise ConfigError(f"search.batch-size: {cfg.search.batch_size} exceeds the "
                              f"{len(self.data.val_y)} validation samples; lower it or raise "
                              "data.val-fraction")
        labels = self.data.train_y.numpy()
        p = cfg.partition
        self.parts = partition_indices(labels, p.num_clients, p.scheme, alpha=p.alpha,
                                       classes_per_client=p.classes_per_client, seed=cfg.seed,
                                       min_size=p.min_partition_size)
        if "meta" in cfg.phases:  # task sizes fail now, not after the search
            from fednas.meta.tasks import check_tasks

            check_tasks(cfg)
        self.timings["data"] = time.perf_counter() - t0

    def run(self) -> tuple[Path, dict[str, Any]]:
        """Execute every configured phase; return the run dir and the summary."""
        self.prepare()
        cfg = self.cfg
        self.rundir = RunDir(cfg.runtime.out_dir, cfg.name)
        self.rundir.write_config(cfg)
        self.rundir.write_json("partitions.json", partition_stats(
            self.parts, self.data.train_y.numpy(), self.data.num_classes))
        self.console.print(f"[bold]fednas[/] run dir: {self.rundir.path}")
        genotype: Genotype | None = None
        with make_progress(cfg.runtime.progress, self.console) as progress:
            self.progress = progress
            if "search" in cfg.phases:
                space, genotype = self.search()
                if "retrain" in cfg.phases:
                    self.retrain(space, genotype)
                if "random" in cfg.phases:
                    self.random_architecture(space)
            if "baseline" in cfg.phases:
                self.baseline()
            if "meta" in cfg.phases:
                from fednas.meta.phase import pipeline_meta

                meta = pipeline_meta(self)
        summary = {
            "scenario": cfg.name, "seed": cfg.seed, "dataset": self.data.describe(),
            "device": str(self.device), "models": self.models, "genotype": genotype,
            "timings": self.timings, "run_dir": str(self.rundir.path),
            "versions": {"fednas": __version__, "torch": torch.__version__},
        }
        if "meta" in cfg.phases:
            summary["meta"] = meta
        self.rundir.write_json("summary.json", summary)
        plot_curves(self.rundir.metrics, self.rundir.path / "plots")
        return self.rundir.path, summary

    def _task(self, description: str, total: int):
        if self.progress is None:
            return None
        task = self.progress.add_task(description, total=total)
        return lambda: self.progress.advance(task)

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.data, f"{name}_x"), getattr(self.data, f"{name}_y")

    # -- phases
    def search(self) -> tuple[SearchSpace, Genotype]:
        cfg, s = self.cfg, self.cfg.search
        t0 = time.perf_counter()
        space = build_space(cfg.space.name, input_shape=self.data.input_shape,
                            num_classes=self.data.num_classes, **cfg.space.options())
        space = space.to(self.device)
        w_opt = make_optimizer("sgd", space.weights(), lr=s.lr, momentum=s.momentum,
                               weight_decay=s.weight_decay)
        a_opt = torch.optim.Adam(space.arch_parameters(), lr=s.arch_lr, betas=(0.5, 0.999),
                                 weight_decay=s.arch_weight_decay)
        steps = steps_per_epoch(len(self.data.train_y), s.batch_size, s.steps_per_epoch)
        sched = make_scheduler("cosine", w_opt, steps * s.epochs, s.lr_min)
        tick = self._task("search", steps * s.epochs)
        warmup_steps = int(s.warmup_epochs * steps)
        step_fn = search_step_fn(cfg)
        for epoch in range(1, s.epochs + 1):
            arch = a_opt if (epoch - 1) * steps >= warmup_steps else None
            stats = step_fn(space, self._split("train"), self._split("val"),
                            weight_opt=w_opt, arch_opt=arch, steps=steps,
                            batch_size=s.batch_size, grad_clip=s.grad_clip,
                            generator=self.generator, device=self.device,
                            scheduler=sched, progress=tick)
            val = evaluate(space, self._split("val"), batch_size=cfg.runtime.eval_batch_size,
                           device=self.device)
            self.rundir.log("search", epoch, **stats, val_loss=val["eval_loss"],
                            val_acc=val["eval_acc"], genotype=space.genotype(),
                            alpha_entropy=alpha_entropy(space), alpha=alpha_snapshot(space))
        genotype = space.genotype()
        save_genotype(genotype, self.rundir.path / "genotype.json")
        self.rundir.save_model("supernet", space)
        self._plot_alpha(space)
        plot_alpha_evolution(self.rundir.metrics, alpha_columns(space),
                             self.rundir.path / "plots")
        self.timings["search"] = time.perf_counter() - t0
        return space, genotype

    def retrain(self, space: SearchSpace, genotype: Genotype) -> None:
        r = self.cfg.retrain
        model = self.derive_model(space, genotype, r)
        self.models["searched"] = self.fit("retrain", model, r)
        self.models["searched"]["genotype_source"] = "search"
        self.rundir.save_model("searched", model, genotype=genotype, space=space.space_name)

    def random_architecture(self, space: SearchSpace) -> None:
        """A random genotype of the space (seeded), derived and trained like the searched one
        (with the supernet's weights when ``retrain.inherit-weights``): the random-search
        baseline of Li & Talwalkar (2019) at the same training budget."""
        genotype = random_genotype(space, self.cfg.seed)
        model = self.derive_model(space, genotype, self.cfg.retrain)
        self.models["random"] = self.fit("random", model, self.cfg.retrain)
        self.models["random"]["genotype"] = genotype
        self.rundir.save_model("random", model, genotype=genotype, space=space.space_name)

    def baseline(self) -> None:
        b = self.cfg.baseline
        torch.manual_seed(self.cfg.seed + 1)
        model = build_model(b.model, input_shape=self.data.input_shape,
                            num_classes=self.data.num_classes, width=b.width)
        self.models["baseline"] = self.fit("baseline", model, self.cfg.retrain)
        self.models["baseline"]["model"] = b.model
        self.rundir.save_model("baseline", model, model=b.model, width=b.width)

    def derive_model(self, space: SearchSpace, genotype: Genotype, r: TrainConfig
                     ) -> torch.nn.Module:
        """The discrete model to retrain: inherited weights, or a fresh (resized) network."""
        resized = (r.channels or r.layers) and space.space_name == "cell"
        if r.inherit_weights and not resized:
            return space.subnet(genotype)
        if resized:
            return CellNetwork(genotype, input_shape=self.data.input_shape,
                               num_classes=self.data.num_classes,
                               channels=r.channels or space.channels,
                               layers=r.layers or space.layers, stem_stride=space.stem_stride,
                               allowed_ops=space.op_names).to(self.device)
        model = space.subnet(genotype)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model

    def fit(self, phase: str, model: torch.nn.Module, r: TrainConfig) -> dict[str, Any]:
        """Train ``model`` with ``r``; log val each epoch; return its test summary entry."""
        t0 = time.perf_counter()
        model = model.to(self.device)
        opt = make_optimizer(r.optimizer, model.parameters(), lr=r.lr, momentum=r.momentum,
                             weight_decay=r.weight_decay)
        steps = steps_per_epoch(len(self.data.train_y), r.batch_size)
        sched = make_scheduler(r.schedule, opt, steps * r.epochs)
        tick = self._task(phase, steps * r.epochs)
        for epoch in range(1, r.epochs + 1):
            stats = train_epoch(model, self._split("train"), optimizer=opt,
                                batch_size=r.batch_size, grad_clip=r.grad_clip,
                                generator=self.generator, device=self.device, scheduler=sched,
                                label_smoothing=r.label_smoothing, progress=tick)
            val = evaluate(model, self._split("val"), batch_size=self.cfg.runtime.eval_batch_size,
                           device=self.device)
            self.rundir.log(phase, epoch, **stats, val_loss=val["eval_loss"],
                            val_acc=val["eval_acc"])
        test = evaluate(model, self._split("test"), batch_size=self.cfg.runtime.eval_batch_size,
                        device=self.device)
        self.timings[phase] = time.perf_counter() - t0
        return {"test_acc": test["eval_acc"], "test_loss": test["eval_loss"],
                "params": count_params(model),
                "flops": count_flops(model, self.data.input_shape), "epochs": r.epochs}

    def _plot_alpha(self, space: SearchSpace) -> None:
        alphas = {k: np.asarray(v) for k, v in alpha_snapshot(space).items()}
        plot_alpha(alphas, alpha_columns(space), self.rundir.path / "plots",
                   row_label="edge" if space.space_name == "cell" else "prunable layer")


def random_genotype(space: SearchSpace, seed: int) -> Genotype:
    """The run's random architecture: a function of the seed only."""
    return space.random_genotype(torch.Generator().manual_seed(seed + 3))


def alpha_snapshot(space: SearchSpace) -> dict[str, list[list[float]]]:
    """softmax(α) per group as nested lists: cell → normal/reduce, width → layers."""
    if space.space_name == "cell":
        groups = {"normal": space.alpha_normal, "reduce": space.alpha_reduce}
    else:
        groups = {"layers": torch.stack(list(space.arch_parameters()))}
    return {k: v.detach().softmax(-1).cpu().tolist() for k, v in groups.items()}


def alpha_columns(space: SearchSpace) -> list[str]:
    """Names of the α candidates (op names or width fractions)."""
    if space.space_name == "cell":
        return list(space.op_names)
    return [str(c) for c in space.width_choices]


def alpha_entropy(space: SearchSpace) -> float:
    """Mean entropy (nats) of softmax(α) rows: falls as the search commits to choices."""
    ents = []
    for a in space.arch_parameters():
        p = a.detach().softmax(-1)
        ents.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()))
    return float(np.mean(ents))
