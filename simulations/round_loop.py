"""The resumable round loop of the federated runner (one phase on a Flower Grid).

Each round: the strategy's training round (:meth:`strategies.base.RoundStrategy.train_round`;
secure aggregation's is four message stages), fold the result into an optional EMA, the
clients' and the server's evaluation, one metrics row and, every ``checkpoint-every``
rounds, a checkpoint from which :class:`~simulations.federated.FederatedPipeline` resumes to
exactly the uninterrupted result. The loop calls only the strategy protocol of
:mod:`strategies.base`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from rich.console import Console

from fednas.config.run_config import FederationConfig
from fednas.federated.ema import ModelEMA
from fednas.federated.faults import planned_faults
from fednas.reporting.checkpoint import save_checkpoint
from fednas.training.train import cosine
from simulations.runner import RunState
from strategies.base import RoundStrategy

ServerEval = Callable[[dict[str, torch.Tensor]], dict[str, Any]]


class RunPaused(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the round loop when the run reaches its ``stop_after`` round."""


class RoundLoop:
    """The rounds of one phase at a time, over the run's :class:`RunState`.

    Parameters
    ----------
    federation
        The scenario's ``[federation]`` section (timeouts, evaluation, checkpoints).
    epsilon_budget
        ``privacy.epsilon-budget``, for the message when the budget stops a phase.
    console
        Where a line per round is printed.
    state
        The run's state: it reads the checkpoint being resumed and the pause point, and
        records the privacy stop; a checkpoint saves it.
    seed
        The run seed (the client fault plan derives from it).
    """

    def __init__(self, federation: FederationConfig, epsilon_budget: float, console: Console,
                 state: RunState, seed: int = 0) -> None:
        self.f = federation
        self.seed = seed
        self.epsilon_budget = epsilon_budget
        self.console = console
        self.state = state

    def run(self, grid: Grid, phase: str, strategy: RoundStrategy,
            weights: dict[str, torch.Tensor], total: int, lr: tuple[float, float],
            extra: dict[str, Any], server_eval: ServerEval, ema: ModelEMA | None = None,
            arch_lr: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """The rounds of ``phase`` (resumable); returns the final global state.

        ``lr`` (and ``arch_lr``, when α's lr is scheduled) are cosine-annealed over the
        rounds, from the first value to the second, and sent with every round.

        With ``ema``, the average of the global models is folded in after every round and is
        what ``server_eval`` scores (``iterate_test_*``: the last iterate); it is checkpointed.
        """
        run, f = self.state, self.f
        start, entered = 1, time.perf_counter()
        ck = run.checkpoint
        if ck is not None and ck["phase"] == phase:
            weights, start = ck["state"], ck["round"] + 1
            strategy.set_state(ck["strategy"])
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            run.prior_elapsed[phase] = ck.get("phase_elapsed", 0.0)  # before the resume
            run.checkpoint = None
        for rnd in range(start, total + 1):
            if run.privacy_stop is not None or strategy.privacy_exhausted():
                run.privacy_stop = run.privacy_stop or {"phase": phase, "round": rnd - 1}
                self.console.print(f"\\[{phase}] stopped before round {rnd}: it would exceed "
                                   f"privacy.epsilon-budget = {self.epsilon_budget}")
                break
            t0 = time.perf_counter()
            config = ConfigRecord({"lr": cosine(rnd - 1, total, lr[0], lr[1]), **extra})
            if arch_lr is not None:
                config["arch-lr"] = cosine(rnd - 1, total, arch_lr[0], arch_lr[1])
            arrays, train_metrics = strategy.train_round(rnd, ArrayRecord(weights), config,
                                                         grid, f.round_timeout)
            if arrays is not None:
                weights = arrays.to_torch_state_dict()
            if ema is not None:
                ema.update(weights)
            record: dict[str, Any] = {**strategy.round_record(), "lr": float(config["lr"])}
            if arch_lr is not None:
                record["arch_lr"] = float(config["arch-lr"])
            if f.faults.enabled or f.fault_partitions:  # the plan, beside what was observed
                route, pids = strategy.sampled_clients()
                record.update(planned_faults(f, self.seed, route, rnd, pids))
                record.setdefault("actor_deaths", 0)
            if train_metrics is not None:
                record.update({k.replace("-", "_"): v for k, v in train_metrics.items()
                               if k != "steps"})
            if f.fraction_evaluate > 0 and phase != "search" and strategy.evaluates():
                client_eval = strategy.evaluate_round(rnd, ArrayRecord(weights),
                                                      ConfigRecord(extra), grid, f.round_timeout)
                if client_eval is not None:
                    record["client_val_loss"] = client_eval["eval_loss"]
                    record["client_val_acc"] = client_eval["eval_acc"]
            record.update(strategy.addon_record())
            record["clients_on_cuda"] = sum(p.get("cuda", 0) for p in strategy.placements)
            run.rundir.append_jsonl("clients.jsonl", [{"phase": phase, **p}
                                                      for p in strategy.placements])
            t_eval = time.perf_counter()
            scores = server_eval(weights)
            if ema is not None:
                record.update({f"iterate_{k}": v for k, v in scores.items()})
                scores = server_eval(ema.state)
            record.update(scores)
            now = time.perf_counter()
            record.update(wall_s=now - t0, eval_wall_s=now - t_eval,
                          train_wall_s=t_eval - t0)
            run.rundir.log(phase, rnd, **record)
            self.console.print(f"\\[{phase}] round {rnd}/{total}: " + ", ".join(
                f"{k} {record[k]:.4g}" for k in ("train_loss", "test_acc", "wall_s")
                if isinstance(record.get(k), float)))
            pause = run.stop_after == (phase, rnd) and rnd < total
            if pause or (f.checkpoint_every and (rnd % f.checkpoint_every == 0 or rnd == total)):
                self._save_round(phase, rnd, weights, strategy, ema, entered)
            if pause:
                self.console.print(f"\\[{phase}] paused after round {rnd}/{total}")
                raise RunPaused(phase, rnd)
        return weights

    def _save_round(self, phase: str, rnd: int, weights: dict[str, torch.Tensor],
                    strategy: RoundStrategy, ema: ModelEMA | None, entered: float) -> None:
        """Checkpoint everything a resume after round ``rnd`` of ``phase`` needs."""
        run = self.state
        save_checkpoint(run.rundir.path, {
            "phase": phase, "round": rnd, "state": weights,
            "strategy": strategy.get_state(), "models": run.models,
            "timings": run.timings, "genotype": run.genotype,
            "phase_elapsed": run.prior_elapsed.get(phase, 0.0) + time.perf_counter() - entered,
            "phases_done": list(run.done), "privacy_stop": run.privacy_stop,
            "meta_done": run.meta_done,
            "accountant": run.accountant.state_dict() if run.accountant else None,
            "ema": ema.state_dict() if ema is not None else None,
            "metrics_count": len(run.rundir.metrics),
            "side_counts": dict(run.rundir.side_counts), "fingerprint": run.fingerprint})
