"""What the meta phase reads of a scenario: :class:`MetaSetup`, a few sections, not the tree.

The meta phase rebuilds the run's searched network (``[space]``, ``[retrain]``'s
resizing), Conv-4 of the baseline's width (``[baseline]``), reads few-shot data under
``meta.root`` or ``data.root`` (``[data]``), seeds everything from the run's seed, and its
Flower clients honour fault injection (``[federation]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fednas.config.meta import MetaConfig
from fednas.config.run_config import (
    BaselineConfig,
    DataConfig,
    FederationConfig,
    RunConfig,
    SpaceConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class MetaSetup:
    """The scenario's sections the meta phase reads (see the module docstring)."""

    seed: int
    meta: MetaConfig
    data: DataConfig
    space: SpaceConfig
    retrain: TrainConfig
    baseline: BaselineConfig
    federation: FederationConfig


def meta_setup(cfg: RunConfig) -> MetaSetup:
    """The :class:`MetaSetup` of a run config."""
    return MetaSetup(seed=cfg.seed, meta=cfg.meta, data=cfg.data, space=cfg.space,
                     retrain=cfg.retrain, baseline=cfg.baseline, federation=cfg.federation)
