"""The ``[devices]`` section: device tiers of a heterogeneous fleet (issue 31).

A fleet has devices of several generations, each with its own budget. A tier is one entry of
the parallel lists below (``names[t]``, ``fractions[t]``, ``params[t]``, ``flops[t]``,
``speed[t]``); clients are assigned to tiers by a seeded draw (:mod:`fednas.federated.tiers`)
recorded in ``partitions.json``. No tiers (``names = []``, the default) is a homogeneous fleet.
The lists are flat so that ``flwr run``'s flat config and ``--set`` overrides can carry them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.tools import option
from fednas.errors import ConfigError


@dataclass(frozen=True)
class DevicesConfig:
    names: tuple[str, ...] = option((), doc="tier names, smallest device first (empty = one "
                                    "homogeneous fleet)")
    fractions: tuple[float, ...] = option((), ge=0.0, le=1.0,
                                          doc="share of the clients in each tier (sums to 1)")
    params: tuple[float, ...] = option((), ge=0.0, doc="params budget per tier: 0 < x <= 1 a "
                                       "fraction of the reference, > 1 an absolute count, 0 = "
                                       "no params limit")
    flops: tuple[float, ...] = option((), ge=0.0, doc="FLOPs budget per sample per tier, same "
                                      "convention (empty = no FLOPs limits)")
    speed: tuple[float, ...] = option((), gt=0.0, doc="relative speed per tier (1 = the "
                                      "reference device; a client's simulated local time is "
                                      "its work divided by it; empty = all 1)")
    deadline_s: float = option(0.0, ge=0.0, doc="straggler deadline in simulated seconds: a "
                               "sampled client whose simulated local time exceeds it is "
                               "dropped from the round, as a real round-timeout would "
                               "(counted as clients_late; 0 = no deadline)")
    sample_s: float = option(1e-3, gt=0.0, doc="simulated seconds a speed-1 device needs for "
                             "one sample's forward + backward pass through the reference "
                             "model (the unit of the straggler clock)")
    reference: str = option("largest", choices=("largest", "baseline"),
                            doc="what a fractional budget refers to: the largest subnet of the "
                                "search space, or the hand-designed baseline of [baseline]")
    seed: int = option(0, ge=0, doc="the tier draw uses the run seed + this offset")
    fine_tune: str = option("able", choices=("able", "own"),
                            doc="who fine-tunes a tier's model in the 'tiers' phase: every "
                                "client whose device can run it (its tier and those with "
                                "larger budgets; more data for the small models), or only the "
                                "tier's own clients")

    def check(self) -> None:
        n = len(self.names)
        if not n:
            for key in ("fractions", "params", "flops", "speed"):
                if getattr(self, key):
                    raise ConfigError(f"devices.{key}: set devices.names first (one name per "
                                      "tier, smallest device first)")
            if self.deadline_s:
                raise ConfigError("devices.deadline-s: the straggler clock needs device tiers "
                                  "(their speeds); set devices.names first")
            return
        if len(set(self.names)) != n or not all(self.names):
            raise ConfigError(f"devices.names: distinct non-empty names needed, got "
                              f"{list(self.names)}")
        for key, optional in (("fractions", False), ("params", True), ("flops", True),
                              ("speed", True)):
            values = getattr(self, key)
            if (values or not optional) and len(values) != n:
                raise ConfigError(f"devices.{key}: one value per tier ({n}: "
                                  f"{list(self.names)}), got {list(values)}")
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) <= 0:
            raise ConfigError(f"devices.fractions: positive shares summing to 1, got "
                              f"{list(self.fractions)}")
        for t, name in enumerate(self.names):
            if self.budget(t) == (None, None):
                raise ConfigError(f"devices.params / devices.flops: tier {name!r} has no "
                                  "budget (give it a params or FLOPs limit, or 1.0 for the "
                                  "whole reference)")

    @property
    def tiers(self) -> int:
        """Number of tiers (0 = no tiers)."""
        return len(self.names)

    def budget(self, t: int) -> tuple[float | None, float | None]:
        """``(params, flops)`` budget of tier ``t``; ``None`` where it sets no limit."""
        p = self.params[t] if self.params else 0.0
        f = self.flops[t] if self.flops else 0.0
        return (p or None, f or None)

    def speed_of(self, t: int) -> float:
        """Relative speed of tier ``t``."""
        return self.speed[t] if self.speed else 1.0


def check_devices(cfg: Any) -> None:
    """The tiers' constraints on the rest of the run config (``cfg``)."""
    d = cfg.devices
    if not d.tiers:
        for phase in ("tiers", "heterofl", "smallest", "tier-alone"):
            if phase in cfg.phases:
                raise ConfigError(f"phases: {phase!r} trains one model per device tier; set "
                                  "[devices] names, fractions and budgets")
        return
    if cfg.mode != "federated":
        raise ConfigError('devices.names: device tiers are clients of a federation; set '
                          'mode = "federated"')
    if cfg.space.name not in ("width", "cell") and "search" in cfg.phases:
        raise ConfigError(f"devices.names: device tiers restrict the width space's channels "
                          f"or the cell space's ops; space.name = {cfg.space.name!r} is not "
                          "supported")
    static = sorted({"heterofl", "smallest", "tier-alone"} & set(cfg.phases))
    if cfg.space.name != "width" and static:
        raise ConfigError(f"phases: {static} train HeteroFL-style static widths of the width "
                          f"space; space.name = {cfg.space.name!r} (use 'width' or drop them)")
    if d.tiers > cfg.partition.num_clients:
        raise ConfigError(f"devices.names: {d.tiers} tiers need at least as many clients; "
                          f"partition.num-clients = {cfg.partition.num_clients}")
    if cfg.privacy.mode != "off" or cfg.privacy.secure_aggregation:
        raise ConfigError("devices.names: device tiers with differential privacy or secure "
                          "aggregation are not supported yet (their accounting assumes every "
                          "client can train every region); turn privacy off")
    if "tiers" in cfg.phases and cfg.compression.teacher == "searched" \
            and "retrain" not in cfg.phases:
        raise ConfigError("compression.teacher: 'searched' distils the retrained searched "
                          "subnet into every tier's model; add 'retrain' to phases or pick "
                          "'supernet' / 'none'")
    if "tiers" in cfg.phases and cfg.compression.selection == "dap" \
            and cfg.compression.dap_rounds:
        raise ConfigError("compression.dap-rounds: the 'tiers' phase trains each tier's DAP "
                          "gates on the server's proxy split, not in client rounds; set "
                          "dap-rounds = 0")
    if d.reference == "baseline" and cfg.baseline.model != "cnn":
        raise ConfigError("devices.reference: 'baseline' budgets are fractions of the "
                          "hand-designed CNN; set baseline.model = 'cnn' or use 'largest'")
