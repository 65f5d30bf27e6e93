"""The static-width baselines of device tiers (the work: :mod:`simulations.hetero_phases`)."""

from __future__ import annotations

from typing import Any

from simulations.hetero_phases import StaticWidths
from simulations.phases.base import Phase, register_phase


class StaticWidthPhase(Phase):
    """A baseline over ``[devices]``'s tiers: federated only, every tier's width checked
    before the run dir exists."""

    federated_only = True

    def check(self, run: Any) -> None:
        run.tiers.plan()


@register_phase("heterofl")
class HeteroFL(StaticWidthPhase):
    """HeteroFL: every client trains its tier's uniform width of one supernet, no search:
    ``models["heterofl_<tier>"]``."""

    def run(self, run: Any) -> None:
        run.models.update(StaticWidths(run).heterofl())


@register_phase("smallest")
class Smallest(StaticWidthPhase):
    """FedAvg of the weakest tier's model on every client: ``models["smallest_for_all"]``."""

    def run(self, run: Any) -> None:
        run.models["smallest_for_all"] = StaticWidths(run).smallest()


@register_phase("tier-alone")
class TierAlone(StaticWidthPhase):
    """Each tier's model by FedAvg on its own clients only: ``models["alone_<tier>"]``."""

    def run(self, run: Any) -> None:
        StaticWidths(run).alone()
