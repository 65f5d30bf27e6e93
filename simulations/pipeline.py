"""The centralised runner: the scenario's phases in one process (no Flower).

``fednas run`` executes it for scenarios without federation: search → derive → retrain the
subnet (and a random architecture) → hand-designed baseline → meta, as the phases of
:mod:`simulations.phases` ask, with the same seeds as ever.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fednas.config.run_config import TrainConfig
from fednas.models.baselines import build_model
from fednas.models.flops import count_flops, count_params
from fednas.reporting.plots import plot_alpha_evolution, plot_curves
from fednas.reporting.rundir import RunDir
from fednas.reporting.summary import alpha_summary
from fednas.spaces.base import Genotype, SearchSpace, save_genotype
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space
from fednas.spaces.stats import alpha_columns, alpha_entropy, alpha_snapshot, random_genotype
from fednas.training.sandwich import search_step_fn
from fednas.training.train import (
    cosine,
    evaluate,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
)
from fednas.version import __version__
from simulations.crash import note_run_dir
from simulations.runner import MODEL_NAME, Runner


def make_progress(enabled: bool, console: Console) -> Any:
    """A rich progress display, or a no-op context when disabled."""
    if not enabled:
        return nullcontext(None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


class Pipeline(Runner):
    """One centralised run of a :class:`RunConfig`; call :meth:`run`."""

    progress: Any = None  # the rich progress display while the run shows one

    def run(self) -> tuple[Path, dict[str, Any]]:
        """Execute every configured phase; return the run dir and the summary."""
        self.prepare()
        cfg = self.cfg
        self.state.rundir = RunDir(cfg.runtime.out_dir, cfg.name)
        self.rundir.write_config(cfg)
        self.rundir.write_json("partitions.json", self.partition_record())
        note_run_dir(self.rundir.path)  # a bug's traceback goes there (simulations/crash.py)
        self.console.print(f"[bold]fednas[/] run dir: {self.rundir.path}")
        with make_progress(cfg.runtime.progress, self.console) as progress:
            self.progress = progress
            self.walk()
        summary = {
            "scenario": cfg.name, "seed": cfg.seed, "dataset": self.data.describe(),
            "device": str(self.device), "models": self.models, "genotype": self.genotype,
            "timings": self.timings, "run_dir": str(self.rundir.path),
            "protocol": cfg.retrain.protocol,
            "versions": {"fednas": __version__, "torch": torch.__version__},
        }
        alpha = alpha_summary(self.rundir.metrics)
        if alpha is not None:
            summary["alpha"] = alpha
        if self.meta_result is not None:
            summary["meta"] = self.meta_result
        self.rundir.write_json("summary.json", summary)
        plot_curves(self.rundir.metrics, self.rundir.path / "plots")
        return self.rundir.path, summary

    def _task(self, description: str, total: int):
        if self.progress is None:
            return None
        task = self.progress.add_task(description, total=total)
        return lambda: self.progress.advance(task)

    # -- the primitives of the phases
    def search(self) -> Genotype:
        """Bi-level search on the whole train/val split; keeps the supernet as ``space``."""
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
        step_fn = search_step_fn(cfg.search)
        for epoch in range(1, s.epochs + 1):
            arch = a_opt if (epoch - 1) * steps >= warmup_steps else None
            if s.arch_lr_schedule == "cosine":  # per epoch, as the federated search per round
                for group in a_opt.param_groups:
                    group["lr"] = cosine(epoch - 1, s.epochs, s.arch_lr, s.arch_lr_min)
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
        self.space = space
        return genotype

    def train_fixed(self, phase: str, spec: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Train the model of ``spec`` with ``[retrain]``; save it; its summary entry.

        A subnet is derived from the searched supernet (:meth:`derive_model`); the baseline
        is built from scratch with the seed + 1.
        """
        r = self.cfg.retrain
        budget = self.comparison_budget(phase)
        if spec["kind"] == "baseline":
            b = self.cfg.baseline
            torch.manual_seed(self.cfg.seed + 1)
            model = build_model(b.model, input_shape=self.data.input_shape,
                                num_classes=self.data.num_classes, width=b.width)
            entry = self.fit(phase, model, r, budget.units)
            self.rundir.save_model(MODEL_NAME[phase], model, model=b.model, width=b.width)
            return {**entry, "model": b.model, "inherited": budget.inherited}
        genotype = spec["genotype"]
        model = self.derive_model(self.space, genotype, r, inherit=budget.inherits)
        entry = {**self.fit(phase, model, r, budget.units), "inherited": budget.inherited}
        self.rundir.save_model(MODEL_NAME[phase], model, genotype=genotype,
                               space=self.space.space_name)
        return {**entry, "genotype_source": "search"} if phase == "retrain" else entry

    def random_genotype(self) -> Genotype:
        r = self.cfg.random
        return random_genotype(self.space, self.cfg.seed, searched=self.genotype,
                               tolerance=r.params_tolerance, draw=r.draw)

    def derive_model(self, space: SearchSpace, genotype: Genotype, r: TrainConfig, *,
                     inherit: bool) -> torch.nn.Module:
        """The discrete model to retrain: inherited weights, or a fresh (resized) network."""
        resized = (r.channels or r.layers) and space.space_name == "cell"
        if inherit and not resized:
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

    def fit(self, phase: str, model: torch.nn.Module, r: TrainConfig, epochs: int
            ) -> dict[str, Any]:
        """Train ``model`` with ``r`` for ``epochs``; log val each epoch; return its test
        summary entry."""
        t0 = time.perf_counter()
        model = model.to(self.device)
        opt = make_optimizer(r.optimizer, model.parameters(), lr=r.lr, momentum=r.momentum,
                             weight_decay=r.weight_decay)
        steps = steps_per_epoch(len(self.data.train_y), r.batch_size)
        sched = make_scheduler(r.schedule, opt, steps * epochs)
        tick = self._task(phase, steps * epochs)
        for epoch in range(1, epochs + 1):
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
                "flops": count_flops(model, self.data.input_shape), "epochs": epochs}
