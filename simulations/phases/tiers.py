"""The ``tiers`` phase of a federated run (the work: :mod:`simulations.tier_phases`)."""

from __future__ import annotations

from typing import Any

from simulations.phases.base import Phase, register_phase


@register_phase("tiers")
class TiersPhase(Phase):
    """One model per device tier of ``[devices]``: derived under the tier's budget,
    distilled and fine-tuned by FedAvg: ``models["tier_<name>"]``."""

    requires = ("search",)
    federated_only = True

    def check(self, run: Any) -> None:
        run.tiers.plan()  # every tier's budget reachable, before the run dir exists

    def run(self, run: Any) -> None:
        run.tiers.run_phase()
