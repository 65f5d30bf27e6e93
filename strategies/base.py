"""One protocol for what the round loop asks of a strategy, with no-op defaults.

The round loop (:class:`simulations.round_loop.RoundLoop`) calls only these methods; it never
probes a strategy with ``hasattr``. :class:`RoundStrategy` gives the defaults:

* :meth:`~RoundStrategy.train_round`: ``configure_train`` → ``send_and_receive`` →
  ``aggregate_train`` (secure aggregation replaces it with its four message stages);
* :meth:`~RoundStrategy.evaluates` / :meth:`~RoundStrategy.evaluate_round`: federated
  evaluation of the global model, when the strategy does it;
* :meth:`~RoundStrategy.privacy_exhausted`: whether one more round would break the ε budget
  (False without DP);
* :meth:`~RoundStrategy.round_record`: what the last round adds to ``metrics.jsonl``
  (``round_stats``) and :meth:`~RoundStrategy.addon_record`: an add-on's own columns, written
  after the clients' metrics (FedEx's θ);
* ``placements`` (where each client ran), :meth:`~RoundStrategy.sampled_clients` (route and
  partitions of the last training round) and ``get_state`` / ``set_state`` (checkpoints);
* ``cohorts`` / :meth:`~RoundStrategy.presummable`: cohort mode, where ``train_round`` packs
  the per-client messages into a few cohort messages (:mod:`strategies.cohorts`).

:class:`strategies.fednas.FedNAS` and :class:`strategies.reptile.FedReptile` implement it.
Add-ons that change a round around a base strategy (FedEx: per-client hyperparameters and
θ; FedDF: server-side distillation after aggregation) are :class:`StrategyWrapper`\\ s,
which forward every method of the protocol to the wrapped strategy and override what they
change. Central DP is the aggregation rule of FedNAS itself (``FedNAS(dp=CentralDP(...))``):
it clips and noises the per-client masked regions that only the base strategy holds, and
reports through the same protocol (``privacy_exhausted``, ``round_stats``, state).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from strategies.cohorts import Cohorts


class RoundStrategy:
    """The round loop's protocol with its defaults (see the module docstring).

    Subclasses also derive from a Flower strategy (``configure_train`` & co.) and keep
    ``round_stats`` (dict) and ``placements`` (list) up to date.
    """

    round_stats: dict[str, Any]
    placements: list[dict[str, int]]
    cohorts: Cohorts | None = None  # cohort mode (strategies/cohorts.py); None: one per client

    def train_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                    grid: Grid, timeout: float | None = None
                    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One training round: the new global arrays (None: keep them) and metrics.

        In cohort mode the per-client messages of ``configure_train`` travel packed into
        cohort messages and the replies are unpacked per client before ``aggregate_train``.
        """
        messages = self.configure_train(server_round, arrays, config, grid)
        cohorts = self.cohorts
        if cohorts is not None:
            messages = cohorts.pack(messages, arrays, presum=self.presummable(),
                                    clip_norm=self.presum_clip_norm())
            self.round_stats["bytes_down"] = arrays.count_bytes() * len(messages)
            self.round_stats["cohorts"] = len(messages)
        replies = grid.send_and_receive(messages, timeout=timeout)
        if cohorts is not None:
            replies = cohorts.unpack(replies)
        return self.aggregate_train(server_round, replies)

    def presummable(self) -> bool:
        """Whether a cohort may send its members' weighted mean instead of every update
        (only when the aggregation is the plain sample-weighted mean)."""
        return False

    def presum_clip_norm(self) -> float:
        """With :meth:`presummable`: > 0 when a cohort sends the sum of its members' deltas
        clipped to this norm (central DP) instead of their weighted mean."""
        return 0.0

    def evaluates(self) -> bool:
        """Whether the strategy asks clients to evaluate the global model."""
        return getattr(self, "fraction_evaluate", 0.0) > 0

    def evaluate_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid, timeout: float | None = None) -> MetricRecord | None:
        """Federated evaluation of ``arrays``; None without replies (cohorts as in
        :meth:`train_round`)."""
        messages = list(self.configure_evaluate(server_round, arrays, config, grid))
        cohorts = self.cohorts
        if cohorts is not None and messages:
            messages = cohorts.pack(messages, arrays, presum=False)
        replies = grid.send_and_receive(messages, timeout=timeout)
        if cohorts is not None:
            replies = cohorts.unpack(replies)
        return self.aggregate_evaluate(server_round, replies)

    def privacy_exhausted(self) -> bool:
        """True when one more round would exceed the privacy budget (no DP: never)."""
        return False

    def sampled_clients(self) -> tuple[str, list[int]]:
        """The route and partitions of the last training round's messages (for the fault
        plan that metrics.jsonl records: :func:`fednas.federated.faults.planned_faults`)."""
        return getattr(self, "_sampled", ("", []))

    def round_record(self) -> dict[str, Any]:
        """The last round's statistics for ``metrics.jsonl``."""
        return dict(self.round_stats)

    def addon_record(self) -> dict[str, Any]:
        """An add-on's own columns for the round's ``metrics.jsonl`` row (none by default)."""
        return {}

    def get_state(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the strategy exactly."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`."""


class StrategyWrapper(RoundStrategy):
    """An add-on around ``base``: every protocol method goes to ``base`` unless overridden.

    ``train_round`` and ``evaluate_round`` are the protocol's defaults, so they call the
    wrapper's own ``configure_*`` / ``aggregate_*`` (which forward to ``base`` unless the
    add-on overrides them). Wrappers do not wrap secure aggregation (config validation
    rules that out: its round is not configure → aggregate).
    """

    def __init__(self, base: Any) -> None:
        self.base = base

    @property
    def round_stats(self) -> dict[str, Any]:
        return self.base.round_stats

    @property
    def placements(self) -> list[dict[str, int]]:
        return self.base.placements

    @property
    def cohorts(self) -> Cohorts | None:
        return self.base.cohorts

    def presummable(self) -> bool:
        return self.base.presummable()

    def presum_clip_norm(self) -> float:
        return self.base.presum_clip_norm()

    @property
    def configrecord_key(self) -> str:
        return self.base.configrecord_key

    @property
    def arrayrecord_key(self) -> str:
        return self.base.arrayrecord_key

    def summary(self) -> None:
        self.base.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.base.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.base.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.base.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.base.aggregate_evaluate(server_round, replies)

    def evaluates(self) -> bool:
        return self.base.evaluates()

    def privacy_exhausted(self) -> bool:
        return self.base.privacy_exhausted()

    def round_record(self) -> dict[str, Any]:
        return self.base.round_record()

    def addon_record(self) -> dict[str, Any]:
        return self.base.addon_record()

    def sampled_clients(self) -> tuple[str, list[int]]:
        return self.base.sampled_clients()

    def get_state(self) -> dict[str, Any]:
        return {"base": self.base.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.base.set_state(state["base"])
