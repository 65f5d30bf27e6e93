"""Screening of training replies, shared by the strategies: which replies count.

A reply is dropped as an *error* when Flower reports one, when it comes from a partition that
was not sent a message this round, when it lacks arrays that the strategy needs, or when its
arrays are malformed; it is dropped as *diverged* when it says so (``diverged`` metric) or
when any metric or tensor is not finite. The good replies come back in partition order, which
makes aggregation independent of arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from logging import WARNING

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from fednas.federated.codec import to_state_dict

PLACEMENT_KEYS = ("pid", "ray-node", "gpu-id", "cuda")


@dataclass
class Reply:
    """One good reply: its partition, content, first metric record and decoded arrays."""

    pid: int
    content: RecordDict
    metrics: MetricRecord
    state: dict[str, torch.Tensor]
    record: ArrayRecord | None

    def placement(self, server_round: int) -> dict[str, int | str]:
        """Where the client ran, for ``clients.jsonl`` (:func:`placement_record`)."""
        return placement_record(server_round, self.pid, self.metrics)


def placement_record(server_round: int, pid: int, metrics: MetricRecord
                     ) -> dict[str, int | str]:
    """A ``clients.jsonl`` row: round, partition, worker pid, Ray node id prefix (hex), Ray
    GPU id and whether the client used CUDA, from its reply's metrics."""
    out: dict[str, int | str] = {"round": server_round, "partition": pid}
    for key in PLACEMENT_KEYS:
        if key in metrics:
            out[key.replace("-", "_")] = int(metrics[key])
    if "ray_node" in out:
        node = int(out["ray_node"])
        out["ray_node"] = f"{node:08x}" if node >= 0 else ""
    return out


@dataclass
class Screened:
    """The good replies in partition order and the counts of the dropped ones."""

    good: list[Reply]
    errors: int = 0
    diverged: int = 0
    actor_deaths: int = 0  # errors because the client's worker process died


def screen_replies(replies: Iterable[Message], expected: Container[int], arrays_key: str, *,
                   need_arrays: bool = False,
                   well_formed: Callable[[dict[str, torch.Tensor]], bool] | None = None
                   ) -> Screened:
    """Sort ``replies`` into good ones (in partition order), errors and diverged clients."""
    out = Screened([])
    for msg in replies:
        if msg.has_error():
            out.errors += 1
            out.actor_deaths += worker_died(msg.error.reason)
            log(WARNING, "client error dropped: %s", msg.error.reason)
            continue
        metrics = next(iter(msg.content.metric_records.values()))
        pid = int(metrics["partition-id"])
        record = msg.content.array_records.get(arrays_key)
        if pid not in expected or (need_arrays and record is None):
            out.errors += 1
            log(WARNING, "reply from partition %s dropped (unexpected or no arrays)", pid)
            continue
        state = to_state_dict(record) if record is not None else {}
        if well_formed is not None and not well_formed(state):
            out.errors += 1
            log(WARNING, "partition %d sent a malformed update: dropped", pid)
            continue
        if metrics.get("diverged", 0) or not finite(msg.content, state):
            out.diverged += 1
            log(WARNING, "partition %d diverged (non-finite loss/weights): dropped", pid)
            continue
        out.good.append(Reply(pid, msg.content, metrics, state, record))
    out.good.sort(key=lambda r: r.pid)
    return out


WORKER_DEATHS = ("ActorDiedError", "RayActorError", "ActorUnavailableError",
                 "WorkerCrashedError")
"""Ray's exceptions for a worker process that died while running a message."""


def worker_died(reason: str) -> bool:
    """Whether an error reply's reason says the client's worker process died."""
    return any(name in reason for name in WORKER_DEATHS)


def finite(content: RecordDict, state: dict[str, torch.Tensor]) -> bool:
    """True when every metric of a reply and every tensor of its state is finite."""
    for record in content.metric_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return False
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
