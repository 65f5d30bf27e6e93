"""FedNAS with secure aggregation: a training round as four Flower message stages.

:meth:`SecAggFedNAS.train_round` replaces the protocol's ``configure_train →
send_and_receive → aggregate_train`` (:class:`strategies.base.RoundStrategy`). The clients' side is
:mod:`simulations.secagg_client`, the wire format :mod:`fednas.privacy.secagg_wire`, the
cryptography :mod:`fednas.privacy.secagg` and :mod:`fednas.privacy.secagg_server`.
What the server holds: public keys, ciphertexts it cannot open, masked vectors that are
uniform in Z_{2^64}, Shamir shares of survivors' self-mask seeds and of dropped clients' mask
keys (never both for one client), and finally Σ w·Δ, Σ w and Σ w·m, from which it takes the
sample-weighted mean update (FedAvg) and metrics, up to the fixed-point error recorded as
``secagg_error_bound``. Full shards only; honest-but-curious server (no consistency check).
"""

from __future__ import annotations

import math
import secrets
import time
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fednas.privacy import secagg_wire as flow
from fednas.privacy.secagg import SecAggError
from fednas.privacy.secagg_server import SecAggServer
from strategies.fednas import FedNAS
from strategies.replies import placement_record


class SecAggFedNAS(FedNAS):
    """FedNAS whose training rounds run under SecAgg (double masking, Shamir dropouts).

    Parameters
    ----------
    secagg_threshold
        Shamir threshold as a fraction of the sampled clients (t = ceil(fraction · n), ≥ 2):
        a round needs t clients to the end, and any t colluding with the server could unmask.
    secagg_clip
        Bound on each entry of a client's update and metrics (clipped beyond).
    **fednas
        As for :class:`FedNAS` (``shard_size`` must be 0: full shards).
    """

    def __init__(self, space: Any = None, *, secagg_threshold: float = 0.66,
                 secagg_clip: float = 1024.0, **fednas: Any) -> None:
        super().__init__(space, **fednas)
        if self.shard_size:
            raise ValueError("secure aggregation needs full shards (shard_size = 0)")
        self.secagg_threshold = secagg_threshold
        self.secagg_clip = secagg_clip

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        raise TypeError("SecAggFedNAS aggregates only masked updates: call train_round")

    # -- the round -----------------------------------------------------------------------
    def train_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                     grid: Grid, timeout: float | None = None
                     ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One training round under secure aggregation; (None, None) when it fails."""
        t0 = time.perf_counter()
        plain = {int(m.content["config"]["partition-id"]): m
                 for m in self.configure_train(server_round, arrays, config, grid)}
        self._nodes = {pid: m.metadata.dst_node_id for pid, m in plain.items()}
        self._counts = dict.fromkeys(("client_errors", "client_timeouts", "bytes_down",
                                      "bytes_up"), 0)
        self.placements = []
        n = len(plain)
        t = max(2, math.ceil(self.secagg_threshold * n - 1e-9))
        quantizer = flow.quantizer_for(n, self.secagg_clip)
        server = SecAggServer(t, quantizer)
        session = secrets.token_hex(8)
        diverged, metrics = 0, None
        try:
            keys = self._stage(grid, flow.ADVERTISE, timeout, {
                pid: _record(session=session, **{"partition-id": pid}) for pid in plain})
            if len(keys) < t:
                raise SecAggError(f"{len(keys)} clients advertised keys < threshold {t}")
            roster = server.advertise({pid: (bytes(r[flow.RECORD]["c-pk"]),
                                             bytes(r[flow.RECORD]["s-pk"]))
                                       for pid, r in keys.items()})
            ids = sorted(roster)
            shared = self._stage(grid, flow.SHARE, timeout, {pid: _record(
                session=session, ids=ids, threshold=t, clip=quantizer.clip_range,
                **{"c-pks": [roster[i][0] for i in ids], "s-pks": [roster[i][1] for i in ids],
                   "scale-log2": int(math.log2(quantizer.scale))}) for pid in ids})
            inbox = server.route({pid: {int(j): bytes(ct) for j, ct in zip(
                r[flow.RECORD]["to"], r[flow.RECORD]["cts"], strict=True)}
                for pid, r in shared.items()})
            masked, names, lay, diverged = self._masked_stage(grid, timeout, server_round,
                                                              session, plain, inbox)
            survivors, dropped = server.collect(masked)
            if len(survivors) < max(self.min_train_nodes, 1):
                raise SecAggError(f"{len(survivors)} survivors < min {self.min_train_nodes}")
            reveals = self._stage(grid, flow.UNMASK, timeout, {pid: _record(
                session=session, survivors=survivors, dropped=dropped) for pid in survivors})
            total = server.aggregate({pid: _shares(r[flow.RECORD])
                                      for pid, r in reveals.items()})
            arrays_out, metrics, bound = self._apply(total, lay, names, n / quantizer.scale / 2)
        except SecAggError as exc:
            arrays_out, metrics = None, None
            log(WARNING, "round %d failed under secure aggregation: %s; global state kept",
                server_round, exc)
        survivors, dropped = server.transcript.survivors, server.transcript.dropped
        self.round_stats.update(
            clients_ok=len(survivors),
            clients_diverged=diverged, round_failed=int(arrays_out is None),
            secagg_survivors=len(survivors), secagg_dropped=len(dropped),
            secagg_threshold=t, secagg_wall_s=time.perf_counter() - t0, **self._counts)
        if arrays_out is not None:
            self.round_stats["secagg_error_bound"] = bound
        return arrays_out, metrics

    # -- stages ----------------------------------------------------------------------------
    def _stage(self, grid: Grid, route: str, timeout: float | None,
               contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send one message per partition; the good replies by partition id."""
        messages = [Message(content, dst_node_id=self._nodes[pid], message_type=route)
                    for pid, content in contents.items()]
        self._counts["bytes_down"] += sum(_bytes(m.content) for m in messages)
        replies: dict[int, RecordDict] = {}
        errors = 0
        for msg in grid.send_and_receive(messages, timeout=timeout):
            pid = self.node_partitions.get(msg.metadata.src_node_id)
            if msg.has_error() or pid not in contents or pid in replies:
                errors += 1
                log(WARNING, "%s: reply dropped (%s)", route,
                    msg.error.reason if msg.has_error() else f"node {msg.metadata.src_node_id}")
                continue
            self._counts["bytes_up"] += _bytes(msg.content)
            replies[pid] = msg.content
        self._counts["client_errors"] += errors
        self._counts["client_timeouts"] += max(len(contents) - len(replies) - errors, 0)
        return replies

    def _masked_stage(self, grid: Grid, timeout: float | None, server_round: int, session: str,
                      plain: dict[int, Message], inbox: dict[int, dict[int, bytes]]
                      ) -> tuple[dict[int, np.ndarray], list[str], flow.Layout, int]:
        """Stage 3: training messages plus each client's shares; the masked vectors."""
        contents = {}
        for pid, cts in inbox.items():
            content = RecordDict(dict(plain[pid].content))
            conf = ConfigRecord(dict(content["config"]))
            conf["secagg-route"] = self.train_route
            content["config"] = conf
            content[flow.RECORD] = ConfigRecord({"session": session, "from": list(cts),
                                                 "cts": list(cts.values())})
            contents[pid] = content
        first = next(iter(plain.values())).content["arrays"].to_torch_state_dict()
        lay = flow.layout(first)
        size = sum(math.prod(s) for _, s in lay) + 1
        replies = self._stage(grid, flow.MASKED, timeout, contents)
        masked, names, diverged = {}, None, 0
        for pid, content in sorted(replies.items()):
            m = content.metric_records["metrics"]
            self.placements.append(placement_record(server_round, pid, m))
            if m.get("diverged", 0) or flow.RECORD not in content.config_records:
                diverged += 1
                log(WARNING, "partition %d diverged: it sent no masked update", pid)
                continue
            rec = content.config_records[flow.RECORD]
            vector = np.frombuffer(bytes(rec["masked"]), dtype="<u8").astype(np.uint64)
            these = [str(k) for k in rec["metric-names"]]
            names = these if names is None else names
            if these != names or vector.size != size + len(these):
                self._counts["client_errors"] += 1
                log(WARNING, "partition %d: masked vector of another layout dropped", pid)
                continue
            masked[pid] = vector
        return masked, names or [], lay, diverged

    def _apply(self, total: np.ndarray, lay: flow.Layout, names: list[str], sum_error: float
               ) -> tuple[ArrayRecord, MetricRecord, float]:
        """Mean update = ΣwΔ / Σw onto the global state, then the server optimiser.

        ``sum_error`` bounds the fixed-point error ε of every decoded sum entry (ΣwΔ and Σw
        alike); the returned bound on each mean entry is ε (1 + max |mean|) / (Σw − ε).
        """
        sums, weight, metric_sums = flow.decode_sum(total, lay, names)
        if not weight > sum_error:
            raise SecAggError(f"decoded total weight {weight} is within the fixed-point error")
        average, largest = dict(self._state), 0.0
        for key, s in sums.items():
            base, mean = self._state[key], torch.from_numpy(s / weight)
            largest = max(largest, float(mean.abs().max()) if mean.numel() else 0.0)
            average[key] = (base.double() + mean).to(base.dtype)
        new_state = self.server_opt.step(self._state, average)
        metrics = MetricRecord({k: v / weight for k, v in metric_sums.items()})
        return ArrayRecord(new_state), metrics, sum_error * (1 + largest) / (weight - sum_error)


def _record(**values: Any) -> RecordDict:
    return RecordDict({flow.RECORD: ConfigRecord(values)})


def _bytes(content: RecordDict) -> int:
    """Payload bytes (Flower's ConfigRecord.count_bytes fails on empty lists: skip them)."""
    return sum(ConfigRecord({k: v for k, v in r.items() if v != []}).count_bytes()
               if isinstance(r, ConfigRecord) else r.count_bytes() for r in content.values())


def _shares(rec: ConfigRecord) -> dict[str, dict[int, tuple[int, int]]]:
    return {kind: {int(i): flow.unpack_share(bytes(s)) for i, s in zip(
        rec[f"{kind}-ids"], rec[f"{kind}-shares"], strict=True)} for kind in ("b", "s")}
