"""The ``[space]`` section: which search space, and the options of the cell and width spaces.

Split from :mod:`fednas.config.run_config` (which re-exports these classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.tools import option, section
from fednas.errors import ConfigError
from fednas.spaces.ops import DARTS_OPS, OPS
from fednas.spaces.registry import SPACES


@dataclass(frozen=True)
class CellSpaceConfig:
    channels: int = option(8, ge=2, doc="channels of the first cell (even)")
    layers: int = option(4, ge=1, doc="number of cells")
    nodes: int = option(4, ge=1, doc="intermediate nodes per cell")
    stem_stride: int = option(2, choices=(1, 2), doc="2: search 28×28 inputs at 14×14")
    ops: tuple[str, ...] = option(DARTS_OPS, subset_of=tuple(OPS), doc="candidate ops")
    partial_channels: int = option(1, ge=1, doc="PC-DARTS K: MixedOps run on 1/K of the "
                                   "channels (1 = off; must divide channels); the derived "
                                   "subnet's cell ops then start fresh, not inherited")
    edge_normalisation: bool = option(False, doc="PC-DARTS β: softmax-weighted edges per "
                                      "node; derivation ranks by softmax(α)·softmax(β)")

    def check(self) -> None:
        if self.channels % 2:
            raise ConfigError(f"space.cell.channels: must be even (got {self.channels})")
        if self.channels % self.partial_channels:  # later cells have 2^r × channels
            raise ConfigError(f"space.cell.partial-channels = {self.partial_channels} must "
                              f"divide the channel count of every cell, but cell 0 has "
                              f"{self.channels} channels")


@dataclass(frozen=True)
class WidthSpaceConfig:
    depth: int = option(20, ge=8, doc="ResNet depth, 6n+2 (20, 32, 44, 56, 110)")
    base_channels: int = option(16, ge=1, doc="channels of the first stage")
    width_choices: tuple[float, ...] = option((0.25, 0.5, 0.75, 1.0), gt=0.0, le=1.0)
    stem_stride: int = option(1, choices=(1, 2))

    def check(self) -> None:
        if (self.depth - 2) % 6:
            raise ConfigError(f"space.width.depth: must be 6n+2, e.g. 20, 32, 56 "
                              f"(got {self.depth})")


@dataclass(frozen=True)
class SpaceConfig:
    name: str = option("cell", choices=SPACES, doc="which search space (a registered name: "
                       "cell, width or one registered by user code)")
    cell: CellSpaceConfig = section(CellSpaceConfig)
    width: WidthSpaceConfig = section(WidthSpaceConfig)

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`fednas.spaces.registry.build_space`."""
        sub = {"cell": self.cell, "width": self.width}.get(self.name)
        if sub is None:  # a space registered by user code: its constructor's defaults
            return {}
        return {k: getattr(sub, k) for k in sub.__dataclass_fields__}
