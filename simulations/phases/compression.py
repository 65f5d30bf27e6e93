"""The compression phases of a federated run (the work: :mod:`simulations.compression_phases`)."""

from __future__ import annotations

from typing import Any

from simulations.phases.base import Phase, register_phase


class CompressionPhase(Phase):
    """A phase under ``[compression]``'s budget: federated only, the budget checked first."""

    federated_only = True

    def check(self, run: Any) -> None:
        run.compression.check_budget()


@register_phase("compress")
class Compress(CompressionPhase):
    """The student derived under the budget, distilled on the server's proxy split and
    fine-tuned by FedAvg: ``models["distilled"]``."""

    requires = ("search",)

    def run(self, run: Any) -> None:
        run.models["distilled"] = run.compression.compress()


@register_phase("same-size")
class SameSize(CompressionPhase):
    """The student's architecture trained by FedAvg from scratch, same rounds:
    ``models["same_size"]``."""

    requires = ("search",)

    def run(self, run: Any) -> None:
        run.models["same_size"] = run.compression.same_size()


@register_phase("pruned")
class Pruned(CompressionPhase):
    """The baseline pruned uniformly (L1 filter norms) to the budget, then fine-tuned:
    ``models["pruned"]``."""

    def run(self, run: Any) -> None:
        run.models["pruned"] = run.compression.pruned()
