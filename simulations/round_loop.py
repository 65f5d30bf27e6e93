"""The resumable round loop of the federated pipeline (one phase on a Flower Grid).

Each round: configure and send train messages (or a secure-aggregation round), aggregate,
fold the result into an optional EMA, run the clients' and the server's evaluation, log one
metrics row and, every ``checkpoint-every`` rounds, save a checkpoint from which
:class:`~simulations.federated.FederatedPipeline` resumes to exactly the uninterrupted result.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fednas.federated.ema import ModelEMA
from fednas.reporting.checkpoint import save_checkpoint
from fednas.training.train import cosine


class RunPaused(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the round loop when the run reaches its ``stop_after`` round."""


class RoundLoop:
    """Mixin of :class:`~simulations.federated.FederatedPipeline`: the round loop of one phase.

    Uses the pipeline's ``cfg``, ``console``, ``rundir``, ``checkpoint`` (the one being
    resumed, consumed by the first phase that matches it), ``prior_elapsed``,
    ``privacy_stop``, ``stop_after``, ``models``, ``timings`` and ``accountant``.
    """

    def _rounds(self, grid: Grid, phase: str, strategy: Any, state: dict[str, torch.Tensor],
                total: int, lr: tuple[float, float], extra: dict[str, Any], server_eval,
                done: list[str], ema: ModelEMA | None = None) -> dict[str, torch.Tensor]:
        """The round loop of one phase (resumable).

        With ``ema``, the average of the global models is folded in after every round and is
        what ``server_eval`` scores (``iterate_test_*``: the last iterate); it is checkpointed.
        """
        start, entered = 1, time.perf_counter()
        ck = self.checkpoint
        if ck is not None and ck["phase"] == phase:
            state, start = ck["state"], ck["round"] + 1
            strategy.set_state(ck["strategy"])
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            self.prior_elapsed[phase] = ck.get("phase_elapsed", 0.0)  # before the resume
            self.checkpoint = None
        f = self.cfg.federation
        for rnd in range(start, total + 1):
            if self.privacy_stop is not None or getattr(strategy, "privacy_exhausted",
                                                        lambda: False)():
                self.privacy_stop = self.privacy_stop or {"phase": phase, "round": rnd - 1}
                self.console.print(f"\\[{phase}] stopped before round {rnd}: it would exceed "
                                   f"privacy.epsilon-budget = {self.cfg.privacy.epsilon_budget}")
                break
            t0 = time.perf_counter()
            config = ConfigRecord({"lr": cosine(rnd - 1, total, lr[0], lr[1]), **extra})
            if hasattr(strategy, "secure_round"):  # privacy.secure-aggregation
                arrays, train_metrics = strategy.secure_round(rnd, ArrayRecord(state), config,
                                                              grid, f.round_timeout)
            else:
                messages = strategy.configure_train(rnd, ArrayRecord(state), config, grid)
                replies = grid.send_and_receive(messages, timeout=f.round_timeout)
                arrays, train_metrics = strategy.aggregate_train(rnd, replies)
            if arrays is not None:
                state = arrays.to_torch_state_dict()
            if ema is not None:
                ema.update(state)
            record: dict[str, Any] = {**strategy.round_stats, "lr": float(config["lr"])}
            if train_metrics is not None:
                record.update({k.replace("-", "_"): v for k, v in train_metrics.items()
                               if k != "steps"})
            evaluates = getattr(strategy, "fraction_evaluate", 1.0) > 0  # FedReptile: 0
            if f.fraction_evaluate > 0 and phase != "search" and evaluates:
                replies = grid.send_and_receive(
                    strategy.configure_evaluate(rnd, ArrayRecord(state), ConfigRecord(extra),
                                                grid), timeout=f.round_timeout)
                client_eval = strategy.aggregate_evaluate(rnd, replies)
                if client_eval is not None:
                    record["client_val_loss"] = client_eval["eval_loss"]
                    record["client_val_acc"] = client_eval["eval_acc"]
            if hasattr(strategy, "fedex_record"):
                record.update(strategy.fedex_record())
            record["clients_on_cuda"] = sum(p.get("cuda", 0) for p in strategy.placements)
            self.rundir.append_jsonl("clients.jsonl", [{"phase": phase, **p}
                                                       for p in strategy.placements])
            t_eval = time.perf_counter()
            scores = server_eval(state)
            if ema is not None:
                record.update({f"iterate_{k}": v for k, v in scores.items()})
                scores = server_eval(ema.state)
            record.update(scores)
            now = time.perf_counter()
            record.update(wall_s=now - t0, eval_wall_s=now - t_eval,
                          train_wall_s=t_eval - t0)
            self.rundir.log(phase, rnd, **record)
            self.console.print(f"\\[{phase}] round {rnd}/{total}: " + ", ".join(
                f"{k} {record[k]:.4g}" for k in ("train_loss", "test_acc", "wall_s")
                if isinstance(record.get(k), float)))
            pause = self.stop_after == (phase, rnd) and rnd < total
            if pause or (f.checkpoint_every and (rnd % f.checkpoint_every == 0 or rnd == total)):
                self._save_round(phase, rnd, state, strategy, done, ema, entered)
            if pause:
                self.console.print(f"\\[{phase}] paused after round {rnd}/{total}")
                raise RunPaused(phase, rnd)
        return state

    def _save_round(self, phase: str, rnd: int, state: dict[str, torch.Tensor], strategy: Any,
                    done: list[str], ema: ModelEMA | None, entered: float) -> None:
        """Checkpoint everything a resume after round ``rnd`` of ``phase`` needs."""
        save_checkpoint(self.rundir.path, {
            "phase": phase, "round": rnd, "state": state,
            "strategy": strategy.get_state(), "models": self.models,
            "timings": self.timings, "genotype": getattr(self, "genotype", None),
            "phase_elapsed": self.prior_elapsed.get(phase, 0.0) + time.perf_counter() - entered,
            "phases_done": done, "privacy_stop": self.privacy_stop,
            "meta_done": getattr(self, "meta_done", None),
            "accountant": self.accountant.state_dict() if self.accountant else None,
            "ema": ema.state_dict() if ema is not None else None,
            "metrics_count": len(self.rundir.metrics)})
