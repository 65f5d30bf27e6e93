"""Cohort messages: the clients of a round packed into a few messages, one per worker.

A strategy's ``configure_train`` still describes every sampled client by its own message
(its config: partition id, shard, FedEx hyperparameters); in cohort mode those messages carry
no arrays. :meth:`Cohorts.pack` groups them into cohorts balanced by client cost (greedy
longest-first onto the lightest cohort; the runner passes each client's local steps) and
sends each cohort as one ``train.cohort`` message (``evaluate.cohort`` for evaluation): the
global state once, the members' configs, and whether the worker may pre-sum the update.
:meth:`Cohorts.unpack` turns each cohort reply back into one reply per member, so screening,
FedEx, central DP and aggregation see exactly what they see without cohorts:

* a member that failed on the worker becomes an error reply of its own (its cohort-mates
  are not affected); a cohort message that failed as a whole (its worker died) makes each
  of its members an error, and the members of an unanswered cohort count as time-outs;
* with a pre-summed cohort (the plain sample-weighted mean: no DP, no FedDF, no custom
  ``average``) the cohort's usable members' mean arrives once, on the reply of the first
  usable member, with the cohort's total weight in its ``cohort`` config record; the other
  members' replies carry their metrics only;
* under central DP on a whole model (no shards, one clip norm) the pre-summed update is the
  sum of the members' deltas, each clipped to the round's clip norm on the worker
  (client-side clipping), with ``clipped``, the member count as weight and every member's
  norm before clipping (for the DP statistics and adaptive clipping) in that record; noise
  and accounting stay on the server.

The wire format (keys of the RecordDicts) is shared with the client side,
``simulations/client_app.py``'s ``train.cohort`` route.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from copy import copy
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

ROUTES = {"train": "train.cohort", "evaluate": "evaluate.cohort"}
WEIGHT = "cohort"  # config record of the lead member's reply: {"weight": total}


@dataclass
class Cohorts:
    """How a round's clients are packed into cohort messages.

    Parameters
    ----------
    size
        Clients per cohort message; 0 = as many cohorts as ``slots`` (one per worker).
    slots
        Workers that run cohorts at the same time (``size = 0``).
    client_costs
        Partition id → the client's cost, e.g. its local steps (balances the cohorts;
        missing ids count 1).
    """

    size: int
    slots: int = 1
    client_costs: Mapping[int, int] = field(default_factory=dict)
    _members: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)  # node

    def groups(self, pids: list[int]) -> list[list[int]]:
        """``pids`` split into balanced cohorts (each in partition order)."""
        if not pids:
            return []
        count = max(self.slots, 1) if self.size == 0 else math.ceil(len(pids) / self.size)
        count = min(count, len(pids))
        heap = [(0, i) for i in range(count)]
        out: list[list[int]] = [[] for _ in range(count)]
        for pid in sorted(pids, key=lambda p: (-self.client_costs.get(p, 1), p)):
            load, i = heapq.heappop(heap)
            out[i].append(pid)
            heapq.heappush(heap, (load + self.client_costs.get(pid, 1), i))
        return [sorted(g) for g in out if g]

    def pack(self, messages: Iterable[Message], arrays: ArrayRecord, *, presum: bool,
             clip_norm: float = 0.0, arrays_key: str = "arrays", config_key: str = "config"
             ) -> list[Message]:
        """One ``train.cohort`` message per cohort of the per-client ``messages``
        (``presum`` with ``clip_norm`` > 0: the cohort sends its members' deltas clipped to
        ``clip_norm`` and summed, for central DP)."""
        by_pid: dict[int, Message] = {}
        for msg in messages:
            by_pid[int(msg.content[config_key]["partition-id"])] = msg
        self._members = {}
        out = []
        for group in self.groups(list(by_pid)):
            first = by_pid[group[0]]
            content = RecordDict({arrays_key: arrays, config_key: ConfigRecord({
                "cohort-route": first.metadata.message_type, "cohort-size": len(group),
                "cohort-presum": int(presum), "cohort-clip": float(clip_norm)})})
            for i, pid in enumerate(group):
                content[f"member.{i}"] = by_pid[pid].content[config_key]
            node = first.metadata.dst_node_id
            kind = first.metadata.message_type.split(".")[0]
            out.append(Message(content, dst_node_id=node, message_type=ROUTES[kind]))
            self._members[node] = group
        return out

    def unpack(self, replies: Iterable[Message]) -> list[Message]:
        """One reply per member of every cohort answered (see the module docstring); the
        members of an unanswered cohort have no reply (the strategy counts time-outs)."""
        out: list[Message] = []
        for reply in replies:
            group = self._members.get(reply.metadata.src_node_id)
            if group is not None:
                out.extend(_members_of(reply, group))
        return out


def _members_of(reply: Message, group: list[int]) -> list[Message]:
    if reply.has_error():
        return [Message(error=reply.error, metadata=copy(reply.metadata)) for _ in group]
    content = reply.content
    # RecordDict's typed views are rebuilt on every access: read each once
    metric_records = content.metric_records
    array_records = content.array_records
    config_records = content.config_records
    errors = config_records.get("errors", ConfigRecord())
    lead = config_records.get("presum")
    out = []
    for i, pid in enumerate(group):
        meta = copy(reply.metadata)
        if str(pid) in errors:
            out.append(Message(error=Error(code=0, reason=f"partition {pid}: "
                                                          f"{errors[str(pid)]}"), metadata=meta))
            continue
        metrics = metric_records.get(f"metrics.{i}")
        if metrics is None:
            out.append(Message(error=Error(code=0, reason=f"partition {pid}: no reply in its "
                                                          "cohort"), metadata=meta))
            continue
        member = RecordDict({"metrics": metrics})
        arrays = array_records.get(f"arrays.{i}")
        if arrays is not None:
            member["arrays"] = arrays
        if lead is not None and int(lead["partition-id"]) == pid:
            member["arrays"] = array_records["arrays.mean"]
            weight = ConfigRecord({"weight": float(lead["weight"])})
            if "clipped" in lead:  # central DP: a sum of clipped deltas and its norms
                weight["clipped"] = 1
                weight["norms"] = list(lead["norms"])
            member[WEIGHT] = weight
        out.append(Message(content=member, metadata=meta))
    return out
