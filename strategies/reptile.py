"""FedReptile: federated Reptile rounds of the meta phase (a thin FedAvg subclass).

Each round every meta client (partition ids ``0 .. meta.clients - 1``, all of them, no
sampling) gets the global meta-model and the task config on route ``train.meta``, runs its
Reptile update on tasks of its own classes (:func:`fednas.meta.fedmeta_client.local_update`) and
replies with its displacement Δ (one tensor per parameter) and its mean loss. The server
steps θ ← θ + ε · mean Δ over the successful replies in partition order
(:func:`fednas.meta.fedmeta.reptile_step`, the in-process path's step: a plain mean, since every
client runs ``meta-batch`` tasks of the same size). Error replies, replies from unexpected
partitions, malformed updates (not one tensor of the right shape per parameter) and
diverged (non-finite) clients are dropped and counted; a round with fewer
than ``min_train_nodes`` successes keeps the global state. No federated evaluation: the
meta-model is scored on the server's meta-test tasks after the rounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fednas.federated.codec import to_record, to_state_dict
from fednas.meta.fedmeta import mean_loss, reptile_step
from strategies.base import RoundStrategy
from strategies.replies import screen_replies

META_ROUTE = "train.meta"


class FedReptile(FedAvg, RoundStrategy):
    """Federated Reptile (see the module docstring).

    Parameters
    ----------
    param_keys
        Names of the meta-model's parameters: what a client's displacement must hold.
    server_lr
        Server step ε on the mean displacement (1 = θ moves to the clients' mean).
    min_train_nodes
        Successful clients a round needs; fewer keep the global state.
    node_partitions
        Node id → partition id of the meta clients (every one takes part in every round).
    """

    def __init__(self, param_keys: Iterable[str], *, server_lr: float = 1.0,
                 min_train_nodes: int = 1, node_partitions: dict[int, int] | None = None
                 ) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0,
                         min_train_nodes=min_train_nodes, min_available_nodes=1)
        self.fraction_evaluate = 0.0  # without FedAvg's warning: the server scores
        self.min_evaluate_nodes = 0
        self.param_keys = list(param_keys)
        self.server_lr = server_lr
        self.node_partitions = dict(node_partitions or {})
        self._state: dict[str, torch.Tensor] = {}
        self._sent: set[int] = set()
        self.round_stats: dict[str, float] = {}
        self.placements: list[dict[str, int]] = []

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> FedReptile: %d meta clients, server lr %s",
            len(self.node_partitions), self.server_lr)

    def get_state(self) -> dict[str, Any]:
        """Nothing to resume: no sampling RNG, no server optimiser state."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """See :meth:`get_state`."""

    # -- training ----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if not self.node_partitions:
            raise RuntimeError("FedReptile.node_partitions is empty: map the meta clients' "
                               "node ids to partition ids before configuring rounds")
        self._state = to_state_dict(arrays)
        messages = []
        for pid, node in sorted((p, n) for n, p in self.node_partitions.items()):
            cfg = ConfigRecord({**dict(config), "server-round": server_round,
                                "partition-id": pid})
            messages.append(Message(RecordDict({self.arrayrecord_key: arrays,
                                                self.configrecord_key: cfg}),
                                    dst_node_id=node, message_type=META_ROUTE))
        self._sent = set(self.node_partitions.values())
        self._sampled = (META_ROUTE, sorted(self._sent))
        self.round_stats = {"clients_sampled": len(messages),
                            "bytes_down": len(messages) * arrays.count_bytes()}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        screened = screen_replies(replies, self._sent, self.arrayrecord_key, need_arrays=True,
                                  well_formed=self._well_formed)
        good = screened.good
        self.placements = [r.placement(server_round) for r in good]
        self.round_stats.update(clients_ok=len(good), client_errors=screened.errors,
                                clients_diverged=screened.diverged,
                                client_timeouts=max(len(self._sent) - len(replies), 0),
                                bytes_up=sum(r.record.count_bytes() for r in good))
        if screened.actor_deaths:
            self.round_stats["actor_deaths"] = screened.actor_deaths
        if len(good) < max(self.min_train_nodes, 1):
            self.round_stats["round_failed"] = 1
            log(WARNING, "meta round %d failed: %d successful clients < min %d; global state "
                "kept", server_round, len(good), self.min_train_nodes)
            return None, None
        self.round_stats["round_failed"] = 0
        state = reptile_step(self._state, [r.state for r in good], self.server_lr)
        loss = mean_loss([float(r.metrics["meta-loss"]) for r in good])
        return to_record(state), MetricRecord({"meta-loss": loss})

    def _well_formed(self, update: dict[str, torch.Tensor]) -> bool:
        return sorted(update) == sorted(self.param_keys) and all(
            update[k].shape == self._state[k].shape for k in self.param_keys)

    # -- evaluation: none (the server scores the meta-model on its meta-test tasks) ------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None
