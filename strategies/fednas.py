"""FedNAS strategy: per-client supernet shards, masked sample-weighted aggregation of w and α.

A thin :class:`flwr.serverapp.strategy.FedAvg` subclass that implements the round loop's
protocol (:class:`strategies.base.RoundStrategy`). What it changes:

* **per-client messages**: each sampled client gets its own shard (Gumbel-top-s over
  softmax(α) per edge/layer; within its device tier's candidates when it has one, see
  :mod:`fednas.federated.tiers`) and only the shard's tensor regions;
* **aggregation**: every entry of every tensor is averaged over the clients that trained it,
  weighted by ``num-examples`` (:func:`fednas.federated.aggregation.masked_weighted_mean`); full
  shards
  are exactly FedNAS (He et al. 2020) / FedAvg;
* **robustness**: error replies, diverged (NaN) clients and time-outs are dropped and counted;
  a round with fewer than ``min_train_nodes`` successes leaves the global state unchanged;
* **server optimiser**: ``server_lr``/``server_momentum`` turn the averaging into FedAvgM
  (:class:`fednas.federated.server_opt.FedAvgM`); the defaults (1, 0) are FedAvg exactly;
* **determinism**: clients are sampled by partition id from a seeded generator and replies are
  aggregated in partition order, so a seed fixes the run (and a resumed run matches).

With ``space=None`` it trains a fixed model: the same FedAvg, deterministic and robust.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from fednas.federated.aggregation import Contribution, masked_weighted_mean
from fednas.federated.codec import to_record, to_state_dict
from fednas.federated.server_opt import FedAvgM
from fednas.federated.shards import (
    Masks,
    Slices,
    encode_masks,
    full_masks,
    gumbel_top_s,
    slice_state,
)
from fednas.federated.tiers import tier_shard
from fednas.spaces.base import SearchSpace
from strategies.base import RoundStrategy
from strategies.cohorts import WEIGHT, Cohorts
from strategies.registry import register_strategy
from strategies.replies import PLACEMENT_KEYS, screen_replies
from strategies.stragglers import StragglerDeadline

SEARCH_ROUTE = "train.search"
TRAIN_ROUTE = "train"
EVALUATE_ROUTE = "evaluate"


@register_strategy("fednas")
class FedNAS(StragglerDeadline, FedAvg, RoundStrategy):
    """Federated NAS over supernet shards (see the module docstring).

    Parameters
    ----------
    space
        The server's supernet (defines α keys and shard slicing), or None for a fixed model.
    shard_size
        Candidates per edge/layer each client trains; 0 or ≥ all = the full supernet.
    include_argmax
        Every shard keeps each edge's current best candidate.
    seed
        Seeds client sampling and shard sampling.
    train_route
        Message type of training messages (``train.search`` or ``train``).
    server_lr, server_momentum
        Server step on the aggregated update (FedAvgM); 1 and 0 = plain averaging.
    dp
        Central differential privacy (:class:`strategies.dp.CentralDP`): clipped, noised,
        uniformly weighted masked mean instead of the sample-weighted one.
    **fedavg
        ``fraction_train``, ``min_train_nodes``, ``fraction_evaluate``, ... as in FedAvg.
    """

    def __init__(self, space: SearchSpace | None = None, *, shard_size: int = 0,
                 include_argmax: bool = True, seed: int = 0, train_route: str | None = None,
                 server_lr: float = 1.0, server_momentum: float = 0.0, dp: Any = None,
                 **fedavg: Any) -> None:
        fedavg.setdefault("min_available_nodes", 1)
        super().__init__(**fedavg)
        self.space = space
        self.shard_size = shard_size
        self.include_argmax = include_argmax
        self.train_route = train_route or (SEARCH_ROUTE if space is not None else TRAIN_ROUTE)
        self.generator = torch.Generator().manual_seed(seed)
        self.server_opt = FedAvgM(server_lr, server_momentum)
        self.dp = dp  # strategies.dp.CentralDP or None
        self.node_partitions: dict[int, int] = {}
        self.alpha_keys: list[str] = []
        if space is not None:
            names = {id(p): n for n, p in space.named_parameters()}
            self.alpha_keys = [names[id(a)] for a in space.arch_parameters()]
        self._state: dict[str, torch.Tensor] = {}
        self._plan: dict[int, tuple[Masks | None, Slices]] = {}
        self.round_stats: dict[str, float] = {}
        self.placements: list[dict[str, int]] = []  # per reply: where the client ran
        self.keep_client_states = False  # FedDF distils the client models of a round
        self.client_states: list[dict[str, torch.Tensor]] = []
        self.cohorts: Cohorts | None = None  # cohort mode (set by the runner)
        # device tiers: per partition id, the candidates its device may train (set by the
        # runner; fednas.federated.tiers); a partition without an entry may train any
        self.allowed: dict[int, Masks] = {}
        # straggler simulation (fednas.federated.stragglers; set by the runner with tiers):
        # per partition id its simulated local seconds this phase, the deadline (0 = none)
        # and the phase's simulated clock
        self.sim_times: dict[int, float] = {}
        self.deadline = 0.0
        self.sim_clock = 0.0

    # -- bookkeeping -------------------------------------------------------------------
    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> FedNAS: shard size %s, route %s, server lr %s, momentum %s",
            self.shard_size or "all", self.train_route, self.server_opt.lr,
            self.server_opt.momentum)

    def get_state(self) -> dict[str, Any]:
        """What a checkpoint needs to resume this strategy exactly."""
        state = {"generator": self.generator.get_state(),
                 "server_opt": self.server_opt.state_dict(),
                 "dp": self.dp.get_state() if self.dp is not None else None}
        if self.sim_times:
            state["sim_clock"] = self.sim_clock
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.server_opt.load_state_dict(state.get("server_opt", {}))
        if self.dp is not None and state.get("dp"):
            self.dp.set_state(state["dp"])
        self.sim_clock = float(state.get("sim_clock", 0.0))

    def sample_rate(self) -> float:
        """Clients per training round ÷ all clients (the DP accountant's q)."""
        n = len(self.node_partitions)
        size = min(n, max(int(n * self.fraction_train), self.min_train_nodes, 1))
        return size / max(n, 1)

    def privacy_exhausted(self) -> bool:
        """True when one more round would exceed the scenario's ε budget."""
        return self.dp is not None and self.dp.exhausted(self.sample_rate())

    def _sample(self, fraction: float, minimum: int) -> list[tuple[int, int]]:
        """(partition id, node id) pairs sampled with the seeded generator, in id order."""
        if not self.node_partitions:
            raise RuntimeError("FedNAS.node_partitions is empty: map node ids to partition "
                               "ids (the server app's handshake) before configuring rounds")
        pairs = sorted((pid, node) for node, pid in self.node_partitions.items())
        size = min(len(pairs), max(int(len(pairs) * fraction), minimum, 1))
        chosen = torch.randperm(len(pairs), generator=self.generator)[:size].sort().values
        return [pairs[i] for i in chosen.tolist()]

    # -- training ----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._state = to_state_dict(arrays)
        self._plan = {}
        sampled = self._sample(self.fraction_train, self.min_train_nodes)
        messages, bytes_down = [], 0
        for pid, node in sampled:
            masks, slices = self._shard(pid)
            if self.cohorts is None:
                regions = to_record(slice_state(self._state, slices))
                bytes_down += regions.count_bytes()
            else:  # the cohort message carries the whole state once (strategies/cohorts.py)
                regions = ArrayRecord()
            cfg = ConfigRecord({**dict(config), "server-round": server_round,
                                "partition-id": pid})
            if masks is not None:
                cfg["shard"] = encode_masks(masks)
            self._plan[pid] = (masks, slices)
            messages.append(Message(RecordDict({self.arrayrecord_key: regions,
                                                self.configrecord_key: cfg}),
                                    dst_node_id=node, message_type=self.train_route))
        self.round_stats = {"clients_sampled": len(messages), "bytes_down": bytes_down}
        if self.sim_times:
            messages = self._drop_late(messages, [pid for pid, _ in sampled])
        self._sampled = (self.train_route, [pid for pid, _ in sampled])
        log(INFO, "configure_train: %d clients", len(messages))
        return messages

    def presummable(self) -> bool:
        """Cohorts may pre-sum their update: fixed-model training (no shards, no FedDF client
        models) with the plain weighted mean (``average`` not overridden) or central DP
        with one clip norm (:meth:`presum_clip_norm`)."""
        if self.space is not None or self.keep_client_states:
            return False
        if self.dp is not None:
            return True  # no shards: no α, so one joint clip norm
        return type(self).average is FedNAS.average

    def presum_clip_norm(self) -> float:
        return self.dp.clip_norm if self.dp is not None and self.presummable() else 0.0

    def _shard(self, pid: int = -1) -> tuple[Masks | None, Slices]:
        if self.space is None:
            return None, dict.fromkeys(self._state)
        alphas = [self._state[k] for k in self.alpha_keys]
        if pid in self.allowed:  # a device tier: the shard is drawn within its candidates
            masks = tier_shard(alphas, self.allowed[pid], self.shard_size, self.generator,
                               self.include_argmax)
        elif self.shard_size and self.shard_size < max(a.shape[-1] for a in alphas):
            masks = [gumbel_top_s(a, self.shard_size, self.generator, self.include_argmax)
                     for a in alphas]
        else:
            masks = full_masks(alphas)
        slices = self.space.shard_slices(masks)
        for key in self.alpha_keys:
            slices[key] = None
        return masks, slices

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        screened = screen_replies(replies, self._plan, self.arrayrecord_key)
        good = screened.good
        if self.keep_client_states:
            self.client_states = [r.state for r in good]
        self.placements = [r.placement(server_round) for r in good]
        timeouts = max(len(self._plan) - len(replies), 0)
        bytes_up = sum(r.record.count_bytes() for r in good if r.record is not None)
        self.round_stats.update(clients_ok=len(good), client_errors=screened.errors,
                                clients_diverged=screened.diverged, client_timeouts=timeouts,
                                bytes_up=bytes_up)
        if screened.actor_deaths:
            self.round_stats["actor_deaths"] = screened.actor_deaths
        if len(good) < max(self.min_train_nodes, 1):
            self.round_stats["round_failed"] = 1
            log(WARNING, "round %d failed: %d successful clients < min %d; global state kept",
                server_round, len(good), self.min_train_nodes)
            return None, None
        self.round_stats["round_failed"] = 0
        contributions, sums = [], []
        for r in good:
            masks, slices = self._plan[r.pid]
            weight = float(r.metrics[self.weighted_by_key])
            lead = r.content.config_records.get(WEIGHT)
            if lead is not None and "clipped" in lead:  # a DP cohort's clipped sum
                sums.append((Contribution(r.state, slices, 1.0, {},
                                          clients=int(lead["weight"])),
                             [float(n) for n in lead["norms"]]))
                continue
            if lead is not None:  # a cohort's pre-summed mean
                weight = float(lead["weight"])
            elif self.dp is not None and r.record is None:
                continue  # a member of a clipped sum (its update is in the sum)
            entry = {} if masks is None else dict(zip(self.alpha_keys, masks, strict=True))
            contributions.append(Contribution(r.state, slices, weight, entry))
        t0 = time.perf_counter()
        if self.dp is not None:
            average = self.dp.aggregate(self._state, contributions,
                                        len(self._plan) / max(len(self.node_partitions), 1),
                                        alpha_keys=self.alpha_keys, sums=sums)
            self.round_stats.update(self.dp.last)
        else:
            average = self.average(self._state, contributions)
        new_state = self.server_opt.step(self._state, average)
        # seconds of the server's aggregation (DP: clipping, noise and accounting included)
        self.round_stats["agg_wall_s"] = time.perf_counter() - t0
        metrics = aggregate_metricrecords([r.content for r in good], self.weighted_by_key)
        for key in ("partition-id", "diverged", "num-val", *PLACEMENT_KEYS):
            metrics.pop(key, None)
        return to_record(new_state), metrics

    def average(self, state: dict[str, torch.Tensor], contributions: list[Contribution]
                ) -> dict[str, torch.Tensor]:
        """The aggregation rule without DP: every entry averaged over the clients that
        trained it, weighted by their example counts. Subclasses change the rule here (the
        server optimiser step and the bookkeeping around it stay)."""
        return masked_weighted_mean(state, contributions)

    # -- evaluation --------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        messages = []
        for pid, node in self._sample(self.fraction_evaluate, self.min_evaluate_nodes):
            cfg = ConfigRecord({**dict(config), "server-round": server_round,
                                "partition-id": pid})
            messages.append(Message(RecordDict({self.arrayrecord_key: arrays,
                                                self.configrecord_key: cfg}),
                                    dst_node_id=node, message_type=EVALUATE_ROUTE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        good = []
        for msg in replies:
            if msg.has_error():
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            good.append((int(metrics["partition-id"]), msg.content))
        if not good:
            return None
        good.sort(key=lambda t: t[0])
        metrics = aggregate_metricrecords([c for _, c in good], self.weighted_by_key)
        metrics.pop("partition-id", None)
        return metrics

