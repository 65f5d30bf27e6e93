"""The federated runner on a Flower Grid: the scenario's phases as Flower rounds.

Runs inside a ServerApp (``simulations/server_app.py``). It owns the round loop (instead of
``Strategy.start``; :class:`simulations.round_loop.RoundLoop`) so that it can log every
round, evaluate server-side, checkpoint, and resume from a checkpoint to exactly the result
of an uninterrupted run. The phases (:mod:`simulations.phases`) call its primitives:
:meth:`FederatedPipeline.search` (FedNAS rounds) and :meth:`FederatedPipeline.train_fixed`
(FedAvg rounds of a fixed model); the compression phases work through
:attr:`FederatedPipeline.compression`, the meta phase's Flower rounds through
:attr:`FederatedPipeline.meta`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from fednas.config.tools import to_dict
from fednas.federated.ema import ModelEMA
from fednas.federated.server_opt import STAT_SUFFIXES
from fednas.federated.setup import build_fixed_model, encode_spec, make_space
from fednas.models.flops import count_flops, count_params
from fednas.reporting.checkpoint import load_checkpoint, verify_config, verify_data
from fednas.reporting.fingerprint import config_fingerprint, data_fingerprint
from fednas.reporting.plots import plot_alpha_evolution, plot_curves, plot_fedex_theta
from fednas.reporting.rundir import RunDir
from fednas.reporting.summary import alpha_summary
from fednas.spaces.base import Genotype, save_genotype
from fednas.spaces.stats import alpha_columns, alpha_entropy, alpha_snapshot, random_genotype
from fednas.training.protocol import COMPARED_PHASES
from fednas.training.train import evaluate, recalibrate_bn, steps_per_epoch
from fednas.version import __version__
from simulations.client_app import client_setup
from simulations.compression_phases import Compression
from simulations.crash import note_run_dir
from simulations.handshake import wait_for_nodes
from simulations.meta_rounds import MetaRounds
from simulations.phase_strategy import check_strategy, phase_strategy
from simulations.round_loop import RoundLoop, RunPaused
from simulations.runner import MODEL_NAME, Runner
from simulations.tier_phases import Tiers
from strategies.cohorts import Cohorts
from strategies.dp import privacy_summary

PHASE_SEED = {"baseline": 1, "retrain": 2, "random": 3, "compress": 4, "same-size": 5,
              "pruned": 6}


class FederatedPipeline(Runner):
    """Federated run of a :class:`RunConfig` (``mode = "federated"``).

    ``stop_after = (phase, k)`` pauses the run after round ``k`` of ``phase``: it writes a
    checkpoint and returns without a summary; :func:`simulations.simulation.run_federated`
    with ``resume_dir`` continues it (successive halving advances runs this way).
    """

    def __init__(self, cfg, console=None, resume_dir: Path | None = None,
                 stop_after: tuple[str, int] | None = None) -> None:
        super().__init__(cfg, console)
        self.resume_dir = resume_dir
        self.state.stop_after = stop_after
        if cfg.privacy.mode == "central":
            from fednas.privacy.mechanism import PrivacyAccountant

            self.state.accountant = PrivacyAccountant()
        self.search_state: dict[str, torch.Tensor] | None = None  # the aggregated supernet
        self.cohort_slots: int | None = None  # Ray worker slots (fednas run sets it)
        self.result: tuple[Path, dict[str, Any]] | None = None
        self.error: BaseException | None = None
        self.compression = Compression(self)
        self.tiers = Tiers(self)
        self.meta = MetaRounds(self)
        self.loop = RoundLoop(cfg.federation, cfg.privacy.epsilon_budget, self.console,
                              self.state, cfg.seed)

    # -- server-side setup ---------------------------------------------------------------
    def prepare(self) -> None:
        """Check the strategy, load the checkpoint being resumed and verify its config, load
        the data (and verify it against the checkpoint): all before Ray starts."""
        check_strategy(self.cfg)  # federation.strategy names a registered FedNAS strategy
        state, config = self.state, config_fingerprint(to_dict(self.cfg))
        if self.resume_dir is not None:
            state.checkpoint = load_checkpoint(self.resume_dir)
            verify_config(state.checkpoint, config, self.resume_dir)
        super().prepare()
        if self.resume_dir is not None or self.cfg.federation.checkpoint_every or \
                state.stop_after:
            state.fingerprint = {"config": config,
                                 "data": data_fingerprint(self.data, self.parts)}
        if self.resume_dir is not None and not verify_data(
                state.checkpoint, state.fingerprint["data"], self.resume_dir):
            self.console.print(f"[yellow]warning:[/] {self.resume_dir}'s checkpoint has no "
                               "config/data fingerprint (an older fednas): not verified")

    def open_run_dir(self) -> None:
        state = self.state
        if self.resume_dir is None:
            state.rundir = RunDir(self.cfg.runtime.out_dir, self.cfg.name)
            self.rundir.write_config(self.cfg)
            self.rundir.write_json("partitions.json", self.partition_record())
        else:
            state.rundir = RunDir.reopen(self.resume_dir)
            ck = state.checkpoint
            self.rundir.truncate_metrics(ck["metrics_count"])
            if "side_counts" in ck:  # older checkpoints did not count them
                self.rundir.truncate_side_logs(ck["side_counts"])
            state.models, state.timings = ck["models"], ck["timings"]
            if state.accountant is not None:
                state.accountant.load_state_dict(ck["accountant"])
            state.privacy_stop = ck.get("privacy_stop")
            state.done = list(ck.get("phases_done", []))
            state.genotype = ck.get("genotype")
        note_run_dir(self.rundir.path)  # a bug's traceback goes there (simulations/crash.py)
        self.console.print(f"[bold]fednas[/] run dir: {self.rundir.path}")

    def partition_record(self) -> dict[str, Any]:
        """partitions.json, with every client's device tier when ``[devices]`` has tiers."""
        return self.tiers.record(super().partition_record())

    def cohorts(self, phase: str) -> Cohorts | None:
        """The cohort packing of ``phase``'s rounds (None: one client per message).

        Cohorts are balanced by each client's local steps in the phase (the search caps
        them at ``local-steps`` per epoch, so its costs are not its sizes). Only ``fednas
        run``/``sweep`` sets ``cohort_slots`` (the Ray worker slots); under ``flwr run`` every
        SuperNode is one real client, so cohort mode stays off.
        """
        cfg = self.cfg
        if cfg.federation.cohort_size == 1 or self.cohort_slots is None:
            return None
        if phase.startswith("meta-"):  # every meta client runs meta-batch equal tasks
            return Cohorts(cfg.federation.cohort_size, self.cohort_slots)
        cap = cfg.federation.local_steps if phase == "search" else 0
        batch = cfg.search.batch_size if phase == "search" else cfg.retrain.batch_size
        val = cfg.partition.client_val_fraction
        costs = {pid: steps_per_epoch(len(part) - int(round(val * len(part))), batch, cap)
                 for pid, part in enumerate(self.parts)}
        return Cohorts(cfg.federation.cohort_size, self.cohort_slots, costs)

    def wait_for_nodes(self, grid: Grid) -> dict[int, int]:
        """Wait until every client node registered; map node id -> partition id."""
        return wait_for_nodes(grid, self.cfg.partition.num_clients, self.cfg.federation.node_wait)

    # -- the run ---------------------------------------------------------------------------
    def run_on_grid(self, grid: Grid) -> tuple[Path, dict[str, Any]]:
        """Every phase of the scenario, on ``grid``; returns the run dir and summary."""
        self.grid = grid
        self.open_run_dir()
        self.node_partitions = self.wait_for_nodes(grid)
        try:
            self.walk()
        except RunPaused as paused:
            phase, rnd = paused.args
            self.result = (self.rundir.path, {"paused": {"phase": phase, "round": rnd},
                                              "run_dir": str(self.rundir.path)})
            return self.result
        self.result = (self.rundir.path, self.write_summary())
        return self.result

    def write_summary(self) -> dict[str, Any]:
        cfg, f = self.cfg, self.cfg.federation
        summary = {
            "scenario": cfg.name, "seed": cfg.seed, "mode": "federated",
            "dataset": self.data.describe(), "device": str(self.device), "models": self.models,
            "genotype": self.genotype, "timings": self.timings,
            "run_dir": str(self.rundir.path),
            "protocol": cfg.retrain.protocol,
            "rounds": {"search": f.rounds, "train": f.subnet_rounds,
                       "fine_tune": cfg.compression.fine_tune_rounds or f.subnet_rounds},
            "versions": {"fednas": __version__, "torch": torch.__version__},
        }
        alpha = alpha_summary(self.rundir.metrics)
        if alpha is not None:
            summary["alpha"] = alpha
        rounds = sum(1 for m in self.rundir.metrics if "clients_ok" in m)
        privacy = privacy_summary(cfg.privacy, self.state.accountant, rounds,
                                  self.state.privacy_stop)
        if privacy is not None:
            summary["privacy"] = privacy
        if self.meta_result is not None:
            summary["meta"] = self.meta_result
        self.rundir.write_json("summary.json", summary)
        plot_curves(self.rundir.metrics, self.rundir.path / "plots", unit="round")
        plot_fedex_theta(self.rundir.metrics, self.rundir.path / "plots")
        return summary

    def elapsed(self, phase: str, t0: float) -> float:
        """Seconds of ``phase`` since ``t0``, plus those it ran before a resume."""
        return self.state.prior_elapsed.get(phase, 0.0) + time.perf_counter() - t0

    def _server_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg.federation.server_eval_samples
        x, y = self._split("test")
        return (x[:n], y[:n]) if n else (x, y)

    # -- the primitives of the phases
    def search(self) -> Genotype:
        """FedNAS rounds over supernet shards; the aggregated supernet's genotype."""
        cfg, f, s = self.cfg, self.cfg.federation, self.cfg.search
        t0 = time.perf_counter()
        space = self.make_space()
        strategy = phase_strategy(cfg, "search", space, self.node_partitions,
                                  self.state.accountant, cohorts=self.cohorts("search"),
                                  allowed=self.tiers.allowed(space),
                                  sim_times=self.tiers.search_times())
        test = self._server_test()
        proxy = self.data.val_x[: f.bn_calibration_samples]  # server-side split, no client's

        casd = self.compression.casd_hook(space, f.rounds)

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

        state = self.loop.run(self.grid, "search", strategy, space.state_dict(), f.rounds,
                              (s.lr, s.lr_min), {"warmup-rounds": f.warmup_rounds}, server_eval,
                              arch_lr=(s.arch_lr, s.arch_lr_min)
                              if s.arch_lr_schedule == "cosine" else None)
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

    def random_genotype(self) -> Genotype:
        r = self.cfg.random
        return random_genotype(self.make_space(), self.cfg.seed, searched=self.genotype,
                               tolerance=r.params_tolerance, draw=r.draw)

    def meta_rounds(self) -> Any:
        """With ``meta.clients``, the meta models are meta-trained by Flower rounds."""
        return self.meta.train if self.cfg.meta.clients else None

    def make_space(self) -> Any:
        """The scenario's supernet, freshly initialised (seeded as the clients' is)."""
        return make_space(self.cfg.space, self.cfg.seed, self.data.input_shape,
                          self.data.num_classes)

    def fixed_model(self, spec: dict[str, Any]) -> torch.nn.Module:
        """The fixed model of ``spec`` (derived subnet or baseline), as clients build it."""
        return build_fixed_model(client_setup(self.cfg), spec, self.data.input_shape,
                                 self.data.num_classes)

    def trained_supernet(self) -> Any:
        """The aggregated supernet of this run's search (from memory or supernet.pt)."""
        space = self.make_space()
        space.load_state_dict(self.search_state
                              or torch.load(self.rundir.path / "supernet.pt",
                                            weights_only=True)["state_dict"])
        return space

    def _fixed_times(self, model: torch.nn.Module) -> dict[int, float]:
        """The straggler clock of FedAvg rounds of ``model`` (empty without tiers)."""
        if self.tiers.of is None:
            return {}
        return self.tiers.sim_times(count_flops(model, self.data.input_shape), 1, capped=False)

    def train_fixed(self, phase: str, spec: dict[str, Any], *,
                    init: torch.nn.Module | None = None, rounds: int = 0,
                    wrap: Any = None, clients: dict[int, int] | None = None,
                    model_name: str = "") -> dict[str, Any]:
        """FedAvg of a fixed model (derived subnet or baseline) for ``subnet-rounds``.

        ``init`` gives the initial weights (a model built from ``spec``), ``rounds`` overrides
        the round count, ``wrap`` wraps the strategy (see :func:`phase_strategy`),
        ``clients`` restricts the rounds to those nodes (node id -> partition id; a device
        tier's), ``model_name`` names the saved weights (default: the phase's).
        """
        cfg, f, r = self.cfg, self.cfg.federation, self.cfg.retrain
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + PHASE_SEED.get(phase, sum(map(ord, phase))))
        model = self.fixed_model(spec)
        budget = None
        if init is not None:
            model = init.cpu()
        elif phase in COMPARED_PHASES:  # retrain.protocol: rounds and inheritance
            budget = self.comparison_budget(phase)
            rounds = rounds or budget.units
            if budget.inherits:
                model = self.trained_supernet().subnet(spec["genotype"])
        strategy = phase_strategy(cfg, phase, None, clients or self.node_partitions,
                                  self.state.accountant, wrap=wrap, cohorts=self.cohorts(phase),
                                  sim_times=self._fixed_times(model))
        test = self._server_test()
        extra = {"model": encode_spec(spec)}

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
        state = self.loop.run(self.grid, phase, strategy, model.state_dict(),
                              rounds or f.subnet_rounds, (r.lr, lr_end), extra, server_eval,
                              ema=ema)
        if ema is not None and ema.updates:  # the average is the phase's model
            state = ema.state
        model.load_state_dict(state)
        final = evaluate(model, self._split("test"), batch_size=cfg.runtime.eval_batch_size,
                         device=self.device)
        self.rundir.save_model(model_name or MODEL_NAME[phase], model, spec=spec)
        self.timings[phase] = self.elapsed(phase, t0)
        entry = {"test_acc": final["eval_acc"], "test_loss": final["eval_loss"],
                 "params": count_params(model), "flops": count_flops(model, self.data.input_shape),
                 "rounds": sum(m["phase"] == phase for m in self.rundir.metrics)}
        return entry if budget is None else {**entry, "inherited": budget.inherited}
