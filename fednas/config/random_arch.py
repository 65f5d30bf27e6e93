"""The ``[random]`` section: how the random-architecture phase draws its architecture."""

from __future__ import annotations

from dataclasses import dataclass

from fednas.config.tools import option


@dataclass(frozen=True)
class RandomConfig:
    params_tolerance: float = option(0.0, ge=0.0, lt=1.0, doc="draw the random architecture "
                                     "among those whose params are within ± this fraction of "
                                     "the searched subnet's (0 = any size: the seed's first "
                                     "uniform draw); a size-matched random baseline (Li & "
                                     "Talwalkar 2019)")
    draw: int = option(0, ge=0, doc="which architecture of the seed's sequence of (size-"
                       "matched) random draws: several random baselines per seed")
