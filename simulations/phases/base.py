"""Phases as objects: what a run consists of, walked in order by a runner.

A run is a sequence of phases (``search``, ``retrain``, ``random``, ``compress``,
``same-size``, ``baseline``, ``pruned``, ``meta``, or one registered by user code). A
:class:`Phase` has one small interface:

* :attr:`Phase.requires`: phases the scenario must also list (checked before any work);
* :attr:`Phase.federated_only`: whether it needs ``mode = "federated"``;
* :meth:`Phase.check`: validation that needs the loaded data (before the run dir exists);
* :meth:`Phase.run`: the work; it reads the run's state (``run.genotype``, ``run.models``,
  ...) and adds its own (a ``run.models`` entry, the genotype, ...).

What a phase needs from the runner are a few primitives that the centralised runner
(:class:`simulations.pipeline.Pipeline`) and the federated one
(:class:`simulations.federated.FederatedPipeline`) each implement their way:
``run.search()``, ``run.train_fixed(phase, spec, ...)``, ``run.random_genotype()``,
``run.meta_rounds()`` and, federated only, ``run.compression``. Registering a phase by a new
name (:func:`register_phase`) also adds the name to the scenario's allowed ``phases``
(:data:`fednas.config.run_config.PHASE_NAMES`); phases run in registration order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from fednas.config.run_config import PHASE_NAMES, RunConfig
from fednas.errors import ConfigError
from fednas.registry import Registry


class Phase(ABC):
    """One phase of a run (see the module docstring). Subclasses set :attr:`name`."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    federated_only: ClassVar[bool] = False

    def check(self, run: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """Fail before the run starts when this phase cannot run (data loaded, no run dir)."""

    @abstractmethod
    def run(self, run: Any) -> None:
        """Do the phase's work on the runner ``run``, adding its results to the run's state."""


PHASES: Registry[type[Phase]] = Registry("phase", "phases", ordered=True)


def register_phase(name: str) -> Callable[[type[Phase]], type[Phase]]:
    """Class decorator: register a :class:`Phase` subclass under ``name`` (its ``name``)."""

    def wrap(cls: type[Phase]) -> type[Phase]:
        PHASES.register(name)(cls)
        cls.name = name
        if name not in PHASE_NAMES:
            PHASE_NAMES.register(name)(name)
        return cls

    return wrap


def plan(cfg: RunConfig) -> list[Phase]:
    """The scenario's phases as objects, in run order; :class:`ConfigError` naming
    ``phases`` when a phase lacks what it requires or needs another mode."""
    chosen = [PHASES.get(name)() for name in PHASE_NAMES.names() if name in cfg.phases]
    for phase in chosen:
        missing = [r for r in phase.requires if r not in cfg.phases]
        if missing:
            raise ConfigError(f"phases: {phase.name!r} needs {missing[0]!r}")
        if phase.federated_only and cfg.mode != "federated":
            raise ConfigError(f"phases: {phase.name!r} runs in federated mode only; set "
                              'mode = "federated"')
    return chosen
