"""The federated pipeline on a Flower Grid: FedNAS search → derived subnet FedAvg → baseline.

Runs inside a ServerApp (``simulations/server_app.py``). It owns the round loop (instead of
``Strategy.start``; :mod:`simulations.round_loop`) so that it can log every round, evaluate
server-side, checkpoint, and resume from a checkpoint to exactly the result of an
uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from fednas.federated import client
from fednas.federated.ema import ModelEMA
from fednas.federated.server_opt import STAT_SUFFIXES
from fednas.models.flops import count_flops, count_params
from fednas.reporting.checkpoint import load_checkpoint
from fednas.reporting.plots import plot_alpha_evolution, plot_fedex_theta
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import Genotype, save_genotype
from fednas.training.train import evaluate, recalibrate_bn
from simulations.compression_phases import CompressionPhases
from simulations.handshake import wait_for_nodes
from simulations.meta_rounds import MetaRounds
from simulations.phase_strategy import phase_strategy
from simulations.pipeline import (
    Pipeline,
    alpha_columns,
    alpha_entropy,
    alpha_snapshot,
    random_genotype,
)
from simulations.round_loop import RoundLoop, RunPaused

PHASE_SEED = {"baseline": 1, "retrain": 2, "random": 3, "compress": 4, "same-size": 5,
              "pruned": 6}
MODEL_NAME = {"retrain": "searched", "random": "random", "baseline": "baseline",
              "compress": "distilled", "same-size": "same_size", "pruned": "pruned"}


class FederatedPipeline(RoundLoop, MetaRounds, CompressionPhases, Pipeline):
    """Federated run of a :class:`RunConfig` (``mode = "federated"``).

    ``stop_after = (phase, k)`` pauses the run after round ``k`` of ``phase``: it writes a
    checkpoint and returns without a summary; :func:`simulations.simulation.run_federated` with
    ``resume_dir`` continues it (successive halving advances runs this way).
    """

    def __init__(self, cfg, console=None, resume_dir: Path | None = None,
                 stop_after: tuple[str, int] | None = None) -> None:
        super().__init__(cfg, console)
        self.resume_dir = resume_dir
        self.stop_after = stop_after
        self.accountant = None
        if cfg.privacy.mode == "central":
            from fednas.privacy.mechanism import PrivacyAccountant

            self.accountant = PrivacyAccountant()
        self.privacy_stop: dict[str, Any] | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.prior_elapsed: dict[str, float] = {}  # phase seconds run before a resume
        self.result: tuple[Path, dict[str, Any]] | None = None
        self.error: BaseException | None = None
        self.progress = None

    # -- server-side setup ---------------------------------------------------------------
    def prepare(self) -> None:
        super().prepare()
        self.check_budget()

    def open_run_dir(self) -> None:
        if self.resume_dir is None:
            self.rundir = RunDir(self.cfg.runtime.out_dir, self.cfg.name)
            self.rundir.write_config(self.cfg)
            from fednas.data.partition import partition_stats

            self.rundir.write_json("partitions.json", partition_stats(
                self.parts, self.data.train_y.numpy(), self.data.num_classes))
        else:
            self.rundir = RunDir.reopen(self.resume_dir)
            self.checkpoint = load_checkpoint(self.resume_dir)
            self.rundir.truncate_metrics(self.checkpoint["metrics_count"])
            self.models = self.checkpoint["models"]
            self.timings = self.checkpoint["timings"]
            if self.accountant is not None:
                self.accountant.load_state_dict(self.checkpoint["accountant"])
            self.privacy_stop = self.checkpoint.get("privacy_stop")
        self.console.print(f"[bold]fednas[/] run dir: {self.rundir.path}")

    def wait_for_nodes(self, grid: Grid) -> dict[int, int]:
        """Wait until every client node registered; map node id -> partition id."""
        f = self.cfg.federation
        return wait_for_nodes(grid, self.cfg.partition.num_clients, f.node_wait)

    # -- the run ---------------------------------------------------------------------------
    def run_on_grid(self, grid: Grid) -> tuple[Path, dict[str, Any]]:
        """Every phase of the scenario, on ``grid``; returns the run dir and summary."""
        self.open_run_dir()
        self.node_partitions = self.wait_for_nodes(grid)
        try:
            return self._phases(grid)
        except RunPaused as paused:
            phase, rnd = paused.args
            self.result = (self.rundir.path, {"paused": {"phase": phase, "round": rnd},
                                              "run_dir": str(self.rundir.path)})
            return self.result

    def _phases(self, grid: Grid) -> tuple[Path, dict[str, Any]]:
        cfg = self.cfg
        ck = self.checkpoint or {}
        done = ck.get("phases_done", [])
        self.genotype: Genotype | None = ck.get("genotype")
        if "search" in cfg.phases:
            if "search" not in done:
                self.genotype = self.federated_search(grid)
                done = [*done, "search"]
            if "retrain" in cfg.phases and "retrain" not in done:
                spec = {"kind": "subnet", "genotype": self.genotype}
                self.models["searched"] = self.federated_train(grid, "retrain", spec, done)
                done = [*done, "retrain"]
            if "random" in cfg.phases and "random" not in done:
                genotype = random_genotype(client.make_space(cfg), cfg.seed)
                spec = {"kind": "subnet", "genotype": genotype}
                self.models["random"] = self.federated_train(grid, "random", spec, done)
                self.models["random"]["genotype"] = genotype
                done = [*done, "random"]
            done = self.compression_phases(grid, done, ("compress", "same-size"))
        if "baseline" in cfg.phases and "baseline" not in done:
            self.models["baseline"] = self.federated_train(grid, "baseline",
                                                           {"kind": "baseline"}, done)
            done = [*done, "baseline"]
        done = self.compression_phases(grid, done, ("pruned",))
        if "meta" in cfg.phases and "meta" not in done:
            from fednas.meta.phase import pipeline_meta

            train = (lambda: self.federated_meta(grid, done)) if cfg.meta.clients else None
            self.meta_result = pipeline_meta(self, train)  # meta.clients: Flower rounds
            done = [*done, "meta"]
        summary = self.write_summary(self.genotype)
        self.result = (self.rundir.path, summary)
        return self.result

    def write_summary(self, genotype: Genotype | None) -> dict[str, Any]:
        from fednas.reporting.plots import plot_curves
        from fednas.version import __version__

        summary = {
            "scenario": self.cfg.name, "seed": self.cfg.seed, "mode": "federated",
            "dataset": self.data.describe(), "device": str(self.device), "models": self.models,
            "genotype": genotype, "timings": self.timings, "run_dir": str(self.rundir.path),
            "rounds": {"search": self.cfg.federation.rounds,
                       "train": self.cfg.federation.subnet_rounds,
                       "fine_tune": self.cfg.compression.fine_tune_rounds
                       or self.cfg.federation.subnet_rounds},
            "versions": {"fednas": __version__, "torch": torch.__version__},
        }
        from strategies.dp import privacy_summary

        rounds = sum(1 for m in self.rundir.metrics if "clients_ok" in m)
        privacy = privacy_summary(self.cfg, self.accountant, rounds, self.privacy_stop)
        if privacy is not None:
            summary["privacy"] = privacy
        if getattr(self, "meta_result", None) is not None:
            summary["meta"] = self.meta_result
        self.rundir.write_json("summary.json", summary)
        plot_curves(self.rundir.metrics, self.rundir.path / "plots", unit="round")
        plot_fedex_theta(self.rundir.metrics, self.rundir.path / "plots")
        return summary

    def elapsed(self, phase: str, t0: float) -> float:
        """Seconds of ``phase`` since ``t0``, plus those it ran before a resume."""
        return self.prior_elapsed.get(phase, 0.0) + time.perf_counter() - t0

    def _server_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg.federation.server_eval_samples
        x, y = self._split("test")
        return (x[:n], y[:n]) if n else (x, y)

    def federated_search(self, grid: Grid) -> Genotype:
        cfg, f, s = self.cfg, self.cfg.federation, self.cfg.search
        t0 = time.perf_counter()
        space = client.make_space(cfg)
        strategy = phase_strategy(cfg, "search", space, self.node_partitions, self.accountant)
        test = self._server_test()
        proxy = self.data.val_x[: f.bn_calibration_samples]  # server-side split, no client's

        casd = self._casd_hook(space, f.rounds)

        def server_eval(state: dict[str, torch.Tensor]) -> dict[str, Any]:
            record = casd(state)  # CASD (compression.casd-every) updates α in place
            space.load_state_dict(state)
            genotype = space.genotype()
            subnet = recalibrate_bn(space.subnet(genotype), proxy, batch_size=s.batch_size,
                                    device=self.device)
            result = evaluate(subnet, test, batch_size=cfg.runtime.eval_batch_size,
                              device=self.device)
            return {"test_loss": result["eval_loss"], "test_acc": result["eval_acc"],
                    "genotype": genotype, "alpha_entropy": alpha_entropy(space),
                    "alpha": alpha_snapshot(space), **record}

        state = self._rounds(grid, "search", strategy, space.state_dict(), f.rounds,
                             (s.lr, s.lr_min), {}, server_eval, [])
        space.load_state_dict(state)
        genotype = space.genotype()
        save_genotype(genotype, self.rundir.path / "genotype.json")
        self._plot_alpha(space)
        plot_alpha_evolution(self.rundir.metrics, alpha_columns(space),
                             self.rundir.path / "plots")
        self.rundir.save_model("supernet", space)
        self.timings["search"] = self.elapsed("search", t0)
        self.search_state = state
        return genotype

    def trained_supernet(self) -> Any:
        """The aggregated supernet of this run's search (from memory or supernet.pt)."""
        space = client.make_space(self.cfg)
        space.load_state_dict(getattr(self, "search_state", None)
                              or torch.load(self.rundir.path / "supernet.pt")["state_dict"])
        return space

    def federated_train(self, grid: Grid, phase: str, spec: dict[str, Any],
                        done: list[str], init: torch.nn.Module | None = None,
                        rounds: int = 0, wrap: Any = None) -> dict[str, Any]:
        """FedAvg of a fixed model (derived subnet or baseline) for ``subnet-rounds``.

        ``init`` gives the initial weights (a model built from ``spec``), ``rounds`` overrides
        the round count, ``wrap`` wraps the strategy (see :func:`phase_strategy`).
        """
        cfg, f, r = self.cfg, self.cfg.federation, self.cfg.retrain
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + PHASE_SEED[phase])
        model = client.build_fixed_model(cfg, spec)
        if init is not None:
            model = init.cpu()
        elif phase in ("retrain", "random") and r.inherit_weights and not (r.channels
                                                                           or r.layers):
            model = self.trained_supernet().subnet(spec["genotype"])
        strategy = phase_strategy(cfg, phase, None, self.node_partitions, self.accountant,
                                  wrap=wrap)
        test = self._server_test()
        extra = {"model": client.encode_spec(spec)}

        proxy = self.data.val_x[: f.bn_calibration_samples]

        server_bn = bool(cfg.server_bn_reason())  # central DP: clients' BN stats are not private

        def server_eval(state: dict[str, torch.Tensor]) -> dict[str, Any]:
            model.load_state_dict(state)
            if server_bn:
                recalibrate_bn(model, proxy, batch_size=r.batch_size, device=self.device)
                fresh = model.state_dict()
                state.update({k: fresh[k].detach().cpu().clone() for k in state
                              if k.endswith(STAT_SUFFIXES)})
            result = evaluate(model, test, batch_size=cfg.runtime.eval_batch_size,
                              device=self.device)
            return {"test_loss": result["eval_loss"], "test_acc": result["eval_acc"]}

        lr_end = 0.0 if r.schedule == "cosine" else r.lr
        ema = ModelEMA(f.ema_decay) if f.ema_decay > 0 else None
        state = self._rounds(grid, phase, strategy, model.state_dict(),
                             rounds or f.subnet_rounds, (r.lr, lr_end), extra, server_eval, done,
                             ema=ema)
        if ema is not None and ema.updates:  # the average is the phase's model
            state = ema.state
        model.load_state_dict(state)
        final = evaluate(model, self._split("test"), batch_size=cfg.runtime.eval_batch_size,
                         device=self.device)
        self.rundir.save_model(MODEL_NAME[phase], model, spec=spec)
        self.timings[phase] = self.elapsed(phase, t0)
        return {"test_acc": final["eval_acc"], "test_loss": final["eval_loss"],
                "params": count_params(model), "flops": count_flops(model, self.data.input_shape),
                "rounds": sum(m["phase"] == phase for m in self.rundir.metrics)}
