"""The strategy of one federated phase: ``federation.strategy`` (FedNAS by default; search or
FedAvg training), with the scenario's server optimiser, central DP and FedEx wrapper."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fednas.config.run_config import RunConfig
from fednas.errors import ConfigError
from fednas.spaces.base import SearchSpace
from strategies.cohorts import Cohorts
from strategies.fednas import FedNAS
from strategies.registry import strategy_class

PHASE_OFFSET = {"search": 0, "retrain": 1, "random": 2, "baseline": 3, "compress": 4,
                "same-size": 5, "pruned": 6}


def make_strategy(space: SearchSpace | None, cls: type[FedNAS] = FedNAS, **kwargs: Any
                  ) -> FedNAS:
    """A FedNAS strategy (or subclass ``cls``), without FedAvg's warning that
    fraction_evaluate=0 skips evaluation (server-side evaluation runs every round)."""
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)
    try:
        return cls(space, **kwargs)
    finally:
        flwr_log.setLevel(level)


def check_strategy(cfg: RunConfig) -> type[FedNAS]:
    """The class of ``federation.strategy``; :class:`ConfigError` naming the key when it is
    unknown, not a FedNAS strategy, or combined with secure aggregation (whose rounds are
    FedNAS's own)."""
    name = cfg.federation.strategy
    cls = strategy_class(name)
    if not (isinstance(cls, type) and issubclass(cls, FedNAS)):
        raise ConfigError(f"federation.strategy: {name!r} is registered as {cls!r}, not a "
                          "subclass of strategies.fednas.FedNAS")
    if cfg.privacy.secure_aggregation and cls is not FedNAS:
        raise ConfigError(f"federation.strategy: {name!r} with privacy.secure-aggregation; "
                          "secure aggregation runs FedNAS's own masked rounds (use fednas)")
    return cls


def phase_strategy(cfg: RunConfig, phase: str, space: SearchSpace | None,
                   node_partitions: dict[int, int], accountant: Any = None,
                   wrap: Callable[[FedNAS], Any] | None = None,
                   cohorts: Cohorts | None = None,
                   allowed: dict[int, Any] | None = None,
                   sim_times: dict[int, float] | None = None) -> Any:
    """The strategy of ``phase`` (``space`` for the search, None for fixed-model training).

    ``accountant`` (the run's :class:`fednas.privacy.mechanism.PrivacyAccountant`) turns on central
    DP
    (:class:`strategies.dp.CentralDP`, noise seeded per phase); ``[fedex] enabled`` wraps
    the strategy in :class:`strategies.fedex.FedExWrapper`; ``wrap`` (e.g.
    :class:`strategies.feddf.FedDF`) wraps the FedNAS strategy first;
    ``privacy.secure-aggregation`` makes it a :class:`strategies.secagg.SecAggFedNAS`;
    ``cohorts`` turns on cohort messages (:mod:`strategies.cohorts`); ``allowed`` maps
    partition ids to their device tier's candidates (:mod:`fednas.federated.tiers`),
    ``sim_times`` to their simulated local seconds (``devices.deadline-s`` drops the late
    ones: :mod:`fednas.federated.stragglers`).
    ``node_partitions`` may be a subset of the run's nodes (a tier's clients): at most that
    many clients are then required per round.
    """
    f = cfg.federation
    dp = None
    if accountant is not None:
        from strategies.dp import CentralDP

        dp = CentralDP(cfg.privacy, accountant,
                       seed=cfg.seed + 31 + PHASE_OFFSET.get(phase, 7 + sum(map(ord, phase))))
    common = {"fraction_train": f.fraction_train,
              "min_train_nodes": min(f.min_fit_clients,
                                     len(node_partitions) or f.min_fit_clients),
              "server_lr": f.server_lr, "server_momentum": f.server_momentum, "dp": dp,
              "cls": check_strategy(cfg)}
    if cfg.privacy.secure_aggregation:  # config validation rules out shards, DP and FedEx
        from strategies.secagg import SecAggFedNAS

        common.update(cls=SecAggFedNAS, secagg_threshold=cfg.privacy.secagg_threshold,
                      secagg_clip=cfg.privacy.secagg_clip)
    if phase == "search":
        strategy = make_strategy(space, shard_size=f.shard_size, include_argmax=f.include_argmax,
                                 seed=cfg.seed, fraction_evaluate=0.0, **common)
    else:
        strategy = make_strategy(None, seed=cfg.seed + 7, fraction_evaluate=f.fraction_evaluate,
                                 min_evaluate_nodes=1, **common)
    strategy.node_partitions = node_partitions
    strategy.cohorts = cohorts
    strategy.allowed = dict(allowed or {})
    strategy.sim_times = dict(sim_times or {})
    strategy.deadline = cfg.devices.deadline_s
    if wrap is not None:
        strategy = wrap(strategy)
    if not cfg.fedex.enabled:
        return strategy
    from fednas.federated.setup import local_hps
    from simulations.client_app import client_setup
    from strategies.fedex import FedExWrapper, build_tuner

    tuner = build_tuner(cfg.fedex, phase, local_hps(client_setup(cfg), phase, {}), cfg.seed)
    return FedExWrapper(strategy, tuner, seed=cfg.seed + 13)
