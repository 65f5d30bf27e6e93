"""What both runners share: the run's state, its data and partitions, and the walk over
its phases.

:class:`simulations.pipeline.Pipeline` runs a scenario in one process,
:class:`simulations.federated.FederatedPipeline` on a Flower grid; both are a
:class:`Runner`: they load and check everything that can fail on bad input before the run
dir exists (:meth:`Runner.prepare`), then walk the scenario's phases
(:func:`simulations.phases.base.plan`), each of which calls the runner's primitives
(``search``, ``train_fixed``, ``random_genotype``, ``meta_rounds``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fednas.config.preflight import check_dataset, check_models, check_run_paths
from fednas.config.run_config import RunConfig
from fednas.data.datasets import Dataset
from fednas.data.natural import client_ids
from fednas.data.partition import partition_indices, partition_stats
from fednas.data.run_data import run_dataset
from fednas.errors import ConfigError
from fednas.meta.setup import meta_setup
from fednas.reporting.plots import plot_alpha
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.stats import alpha_columns, alpha_snapshot
from fednas.training.protocol import Budget, comparison_budget
from fednas.training.train import resolve_device, seed_everything
from simulations.phases import base as phases

#: The file each fixed-model phase saves its model to (``<name>.pt``) and its summary entry.
MODEL_NAME = {"retrain": "searched", "random": "random", "baseline": "baseline",
              "compress": "distilled", "same-size": "same_size", "pruned": "pruned"}


@dataclass
class RunState:
    """Everything a run knows besides its config and data: what phases add, and what a
    federated checkpoint saves and a resume restores.

    ``checkpoint`` is the checkpoint being resumed (consumed by the first phase it matches),
    ``prior_elapsed`` the seconds each phase ran before a resume, ``stop_after`` the
    ``(phase, round)`` to pause after, ``fingerprint`` the config and data fingerprints a
    checkpoint stores (:mod:`fednas.reporting.fingerprint`).
    """

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    genotype: Genotype | None = None
    meta_result: dict[str, Any] | None = None
    rundir: RunDir | None = None
    accountant: Any = None
    privacy_stop: dict[str, Any] | None = None
    meta_done: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    prior_elapsed: dict[str, float] = field(default_factory=dict)
    stop_after: tuple[str, int] | None = None
    fingerprint: dict[str, Any] | None = None


class Runner(ABC):
    """A run of ``cfg``: its state (:class:`RunState`), data and phases (module docstring)."""

    resume_dir: Path | None = None  # the run dir being resumed (federated runs only)

    def __init__(self, cfg: RunConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.state = RunState()
        self.phases = phases.plan(cfg)

    # the parts of the state that phases read and write
    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return self.state.models

    @property
    def timings(self) -> dict[str, float]:
        return self.state.timings

    @property
    def genotype(self) -> Genotype | None:
        return self.state.genotype

    @genotype.setter
    def genotype(self, value: Genotype | None) -> None:
        self.state.genotype = value

    @property
    def rundir(self) -> RunDir:
        return self.state.rundir

    @property
    def meta_result(self) -> dict[str, Any] | None:
        return self.state.meta_result

    @meta_result.setter
    def meta_result(self, value: dict[str, Any] | None) -> None:
        self.state.meta_result = value

    # -- preparation: everything that can fail on bad input happens before the run dir exists
    def prepare(self) -> None:
        """Load the data, partition it and run every phase's checks."""
        cfg = self.cfg
        if self.resume_dir is None:  # a resumed run writes into its own run dir
            check_run_paths(cfg)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = resolve_device(cfg.runtime.device)
        self.generator = seed_everything(cfg.seed)
        t0 = time.perf_counter()
        self.data: Dataset = run_dataset(cfg.data, cfg.seed, meta_setup(cfg),
                                         cfg.partition.group_by())
        check_dataset(cfg, self.data)  # >= 2 classes
        check_models(cfg, self.data)  # the space builds; images not too small for it
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
                                       min_size=p.min_partition_size,
                                       groups=self.data.train_groups, by=self.data.group_field)
        for phase in self.phases:
            phase.check(self)
        self.timings["data"] = time.perf_counter() - t0

    def walk(self) -> None:
        """Run every phase of the plan not done yet (a resumed run skips the done ones)."""
        for phase in self.phases:
            if phase.name not in self.state.done:
                phase.run(self)
                self.state.done.append(phase.name)

    def partition_record(self) -> dict[str, Any]:
        """partitions.json: every client's size and class histogram (natural: and its id)."""
        groups = self.data.train_groups
        return partition_stats(self.parts, self.data.train_y.numpy(), self.data.num_classes,
                               ids=None if groups is None else client_ids(groups),
                               by=self.data.group_field)

    def comparison_budget(self, phase: str) -> Budget:
        """``retrain.protocol``'s training of the compared model of ``phase``: federated
        rounds (``federation.rounds`` / ``subnet-rounds``) or centralised epochs
        (``search.epochs`` / ``retrain.epochs``), and where its weights start."""
        cfg, r = self.cfg, self.cfg.retrain
        federated = cfg.mode == "federated"
        search = cfg.federation.rounds if federated else cfg.search.epochs
        return comparison_budget(
            r.protocol, phase, search_units=search * ("search" in cfg.phases),
            train_units=cfg.federation.subnet_rounds if federated else r.epochs,
            inherit_weights=r.inherit_weights,
            resized=cfg.space.name == "cell" and bool(r.channels or r.layers),  # cell only
            partial=cfg.space.name == "cell" and cfg.space.cell.partial_channels > 1)

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.data, f"{name}_x"), getattr(self.data, f"{name}_y")

    def _plot_alpha(self, space: SearchSpace) -> None:
        alphas = {k: np.asarray(v) for k, v in alpha_snapshot(space).items()}
        plot_alpha(alphas, alpha_columns(space), self.rundir.path / "plots",
                   row_label="edge" if space.space_name == "cell" else "prunable layer")

    # -- primitives the phases call (each runner implements them its way)
    @abstractmethod
    def search(self) -> Genotype:
        """Train the supernet (weights and α); its derived genotype."""

    @abstractmethod
    def train_fixed(self, phase: str, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Train the fixed model of ``spec`` as phase ``phase``; its ``models`` entry."""

    @abstractmethod
    def random_genotype(self) -> Genotype:
        """The run's random architecture of the space (a function of the seed)."""

    def meta_rounds(self) -> Any:
        """A callable giving the Flower-trained meta models, or None (meta-train in-process)."""
        return None
