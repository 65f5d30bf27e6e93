"""The ``meta`` phase: few-shot adaptation of the run's models (:mod:`fednas.meta.phase`)."""

from __future__ import annotations

import time
from typing import Any

from fednas.meta.phase import run_meta
from fednas.meta.setup import meta_setup
from simulations.phases.base import Phase, register_phase


@register_phase("meta")
class Meta(Phase):
    """Meta-train and score every model of ``[meta]`` on the same few-shot tasks; with
    ``meta.clients`` in a federated run, as Flower rounds (``run.meta_rounds()``)."""

    def check(self, run: Any) -> None:
        from fednas.meta.tasks import check_tasks

        check_tasks(meta_setup(run.cfg))  # task sizes fail now, not after the search

    def run(self, run: Any) -> None:
        t0 = time.perf_counter()
        train = run.meta_rounds()
        trained = train() if train is not None else None
        run.meta_result = run_meta(meta_setup(run.cfg), run.rundir, run.device, run.console,
                                   trained)
        run.timings["meta"] = time.perf_counter() - t0
