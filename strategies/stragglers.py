"""The straggler deadline of a FedNAS round (device tiers; the clock's maths is
:mod:`fednas.federated.stragglers`).

A mixin of :class:`strategies.fednas.FedNAS`: with ``sim_times`` (per partition id its
simulated local seconds, set by the runner when ``[devices]`` has tiers) every training round
advances a simulated clock by its slowest kept client (or the deadline), and clients later
than ``deadline`` are not sent the round at all.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message

from fednas.federated.stragglers import deadline_round


class StragglerDeadline:
    """Straggler state and the round filter (see the module docstring)."""

    sim_times: dict[int, float]
    deadline: float
    sim_clock: float
    _plan: dict[int, Any]
    round_stats: dict[str, float]
    arrayrecord_key: str

    def _drop_late(self, messages: list[Message], pids: list[int]) -> list[Message]:
        """The straggler deadline: late clients are not sent (their replies would come after
        the deadline and be discarded; their shards were drawn all the same, so the generator
        does not depend on the deadline); the round's simulated time is recorded."""
        kept, late, seconds = deadline_round({p: self.sim_times[p] for p in pids},
                                             self.deadline)
        for pid in late:
            del self._plan[pid]
        self.sim_clock += seconds
        self.round_stats.update(clients_late=len(late), sim_round_s=seconds,
                                sim_time_s=self.sim_clock)
        keep = set(kept)
        out = [m for m, pid in zip(messages, pids, strict=True) if pid in keep]
        self.round_stats["clients_sampled"] = len(out)
        self.round_stats["bytes_down"] = sum(m.content[self.arrayrecord_key].count_bytes()
                                             for m in out)
        return out
