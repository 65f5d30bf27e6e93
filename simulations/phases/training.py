"""Phases that train one fixed model under the run's training budget (``[retrain]``,
``federation.subnet-rounds``): the searched subnet, a random architecture, the baseline."""

from __future__ import annotations

from typing import Any

from simulations.phases.base import Phase, register_phase


@register_phase("retrain")
class Retrain(Phase):
    """The searched subnet (``run.genotype``), from the supernet's weights when
    ``retrain.inherit-weights``: ``models["searched"]``."""

    requires = ("search",)

    def run(self, run: Any) -> None:
        spec = {"kind": "subnet", "genotype": run.genotype}
        run.models["searched"] = run.train_fixed("retrain", spec)


@register_phase("random")
class RandomArchitecture(Phase):
    """A random genotype of the space (a function of the seed), trained like the searched
    one: the random-search baseline of Li & Talwalkar (2019). ``models["random"]``."""

    requires = ("search",)

    def run(self, run: Any) -> None:
        genotype = run.random_genotype()
        entry = run.train_fixed("random", {"kind": "subnet", "genotype": genotype})
        run.models["random"] = {**entry, "genotype": genotype}


@register_phase("baseline")
class Baseline(Phase):
    """The hand-designed model of ``[baseline]``, from scratch: ``models["baseline"]``."""

    def run(self, run: Any) -> None:
        run.models["baseline"] = run.train_fixed("baseline", {"kind": "baseline"})
