"""The ``search`` phase: the supernet's weights and α are trained; its genotype is derived."""

from __future__ import annotations

from typing import Any

from simulations.phases.base import Phase, register_phase


@register_phase("search")
class Search(Phase):
    """Weight-sharing search (first-order DARTS; FedNAS with shards when federated): sets
    ``run.genotype`` and writes genotype.json, supernet.pt and the α plots."""

    def run(self, run: Any) -> None:
        run.genotype = run.search()
