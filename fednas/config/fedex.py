"""The ``[fedex]`` section: which local hyperparameters FedEx tunes, over which ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.tools import option, section

TUNABLE_HPS = ("lr", "momentum", "weight-decay", "batch-size", "local-epochs", "arch-lr")


@dataclass(frozen=True)
class HPRangeConfig:
    low: float = option(0.0, doc="lowest value")
    high: float = option(1.0, doc="highest value")
    log: bool = option(False, doc="sample in log space (needs low > 0)")


def _range(low: float, high: float, log: bool = False):
    from dataclasses import field

    return field(default_factory=lambda: HPRangeConfig(low, high, log))


@dataclass(frozen=True)
class HPRangesConfig:
    lr: HPRangeConfig = _range(1e-3, 0.3, True)
    momentum: HPRangeConfig = _range(0.0, 0.95)
    weight_decay: HPRangeConfig = _range(1e-6, 1e-2, True)
    batch_size: HPRangeConfig = _range(16, 128, True)
    local_epochs: HPRangeConfig = _range(1, 3)
    arch_lr: HPRangeConfig = _range(3e-4, 3e-2, True)


@dataclass(frozen=True)
class FedExConfig:
    enabled: bool = option(False, doc="tune the clients' local HPs with FedEx")
    mode: str = option("joint", choices=("joint", "product"),
                       doc="one distribution over configs, or one per hyperparameter")
    tune: tuple[str, ...] = option(("lr", "momentum", "weight-decay"), subset_of=TUNABLE_HPS,
                                   doc="local hyperparameters to tune")
    configs: int = option(8, ge=1, doc="joint: configs (centre + perturbations); "
                                       "product: values per hyperparameter")
    perturbation_scale: float = option(0.5, gt=0.0, le=1.0, doc="joint: perturbation size as "
                                       "a fraction of each range (log space for log ranges)")
    eta0: float = option(0.0, ge=0.0, doc="step size (0 = sqrt(2 ln k))")
    schedule: str = option("aggressive", choices=("aggressive", "constant", "adaptive",
                                                  "auto", "scale"),
                           doc="step size of the exponentiated gradient (mkhodak/FedEx sched): "
                               "eta0/|grad|_inf, eta0, eta0/sqrt(sum |grad|_inf^2), "
                               "eta0/sqrt(t), eta0*sqrt(2 ln k)")
    baseline_discount: float = option(0.9, ge=0.0, le=1.0)
    entropy_cutoff: float = option(1e-4, ge=0.0)
    use_improvement: bool = option(False, doc="score L_after - L_before instead of L_after")
    divergence_penalty: float = option(0.0, ge=0.0, doc="score of a diverged client "
                                       "(0 = twice the worst finite score seen)")
    ranges: HPRangesConfig = section(HPRangesConfig)

    def hp_ranges(self, names: tuple[str, ...] | None = None) -> list[Any]:
        """:class:`fednas.tuning.fedex.HPRange` of each tuned hyperparameter (kebab-case names)."""
        from fednas.tuning.fedex_space import HPRange

        out = []
        for name in self.tune if names is None else names:
            r = getattr(self.ranges, name.replace("-", "_"))
            out.append(HPRange(name, r.low, r.high, r.log,
                               integer=name in ("batch-size", "local-epochs")))
        return out

    def check(self) -> None:
        for r in self.hp_ranges():
            r.check()
