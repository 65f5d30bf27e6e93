"""The ``[federation.faults]`` section: seeded random client faults of four kinds."""

from __future__ import annotations

from dataclasses import dataclass

from fednas.config.tools import option
from fednas.errors import ConfigError

KINDS = ("raise", "nan", "hang", "exit")
"""Fault kinds, in the order their probabilities split the unit interval."""


@dataclass(frozen=True)
class FaultsConfig:
    p_raise: float = option(0.0, ge=0.0, le=1.0, doc="chance that a sampled client raises an "
                            "error instead of training (per client, per round)")
    p_nan: float = option(0.0, ge=0.0, le=1.0, doc="chance that it returns a non-finite "
                          "update and loss (NaN or Inf; the server drops it as diverged)")
    p_hang: float = option(0.0, ge=0.0, le=1.0, doc="chance that it hangs past "
                           "federation.round-timeout (a straggler; its late reply is dropped)")
    p_exit: float = option(0.0, ge=0.0, le=1.0, doc="chance that it kills its worker "
                           "process (os._exit in the Ray actor; Ray restarts the actor, the "
                           "lost clients count as failed; fednas run/sweep only)")
    hang_s: float = option(0.0, ge=0.0, doc="how long a hanging client sleeps (0 = "
                           "federation.round-timeout + 1 s)")
    seed: int = option(0, ge=0, doc="fault seed: the draws depend on (run seed, this seed, "
                       "route, round, partition), so they replay exactly on resume")

    def check(self) -> None:
        total = sum(self.probabilities())
        if total > 1.0:
            raise ConfigError(f"federation.faults: p-raise + p-nan + p-hang + p-exit = "
                              f"{total:g} exceeds 1")

    @property
    def enabled(self) -> bool:
        return sum(self.probabilities()) > 0.0

    def probabilities(self) -> tuple[float, ...]:
        """The chance of each kind of :data:`KINDS`."""
        return self.p_raise, self.p_nan, self.p_hang, self.p_exit


def check_faults(faults: FaultsConfig, round_timeout: float) -> None:
    """A hanging client must outlast a finite ``federation.round-timeout``."""
    if faults.p_hang and (round_timeout == float("inf") or
                          (faults.hang_s and faults.hang_s <= round_timeout)):
        raise ConfigError(f"federation.faults.p-hang: a hanging client must outlast "
                          f"federation.round-timeout ({round_timeout:g} s): make the timeout "
                          f"finite and faults.hang-s ({faults.hang_s:g}) 0 or above it")
