"""FedEx strategy wrapper: per-client sampled local hyperparameters around any base strategy.

Wraps a :class:`strategies.fednas.FedNAS` (search or fixed-model training): in
``configure_train`` every client's message gets its own configuration ``hp.<name>`` drawn
from the tuner's θ; in ``aggregate_train`` the clients' post-training validation losses
(weighted by their validation sizes) update θ by exponentiated gradient
(:class:`fednas.tuning.fedex.FedEx`), then the base strategy aggregates the weights as usual.
Diverged clients (marked diverged, or with a non-finite val loss) score as non-finite losses,
which the tuner penalises (``fedex.divergence-penalty``); clients whose reply is an error or
never came (a crash, a time-out) carry no loss and are left out of the θ update, as they are
of the aggregation. Neither is fatal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fednas.tuning.fedex import FedEx
from strategies.base import StrategyWrapper
from strategies.fednas import FedNAS


class FedExWrapper(StrategyWrapper):
    """Tune clients' local HPs with FedEx while ``base`` does the federated learning.

    Parameters
    ----------
    base
        The wrapped strategy (it sends the messages and aggregates the weights).
    tuner
        The FedEx tuner (its configurations name the ``hp.*`` keys clients read).
    seed
        Seeds the per-client configuration draws.
    """

    def __init__(self, base: FedNAS, tuner: FedEx, seed: int = 0) -> None:
        super().__init__(base)
        self.tuner = tuner
        self.rng = np.random.default_rng(seed)
        self._choices: dict[int, tuple[int, ...]] = {}

    # -- state (for checkpoints) -------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"base": self.base.get_state(), "tuner": self.tuner.state_dict(),
                "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.base.set_state(state["base"])
        self.tuner.load_state_dict(state["tuner"])
        self.rng.bit_generator.state = state["rng"]

    def addon_record(self) -> dict[str, Any]:
        """θ per factor, its entropy and the current best config (for metrics.jsonl)."""
        return {"fedex_theta": [t.tolist() for t in self.tuner.theta()],
                "fedex_entropy": self.tuner.entropy(), "fedex_best": self.tuner.best()}

    # -- training ----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        reports = 2 if self.tuner.options["use_improvement"] else 1
        messages = list(self.base.configure_train(server_round, arrays, config, grid))
        self._choices = {}
        for msg in messages:
            conf = msg.content[self.base.configrecord_key]
            indices, hp = self.tuner.sample(self.rng)
            self._choices[int(conf["partition-id"])] = indices
            for name, value in hp.items():
                conf[f"hp.{name}"] = float(value)
            conf["report-val"] = reports
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        rows: list[tuple[int, float, float, float]] = []
        for msg in replies:
            if msg.has_error():
                continue
            m = next(iter(msg.content.metric_records.values()))
            pid = int(m["partition-id"])
            if pid not in self._choices:
                continue
            loss = float("nan") if m.get("diverged", 0) else float(m.get("val_loss", np.nan))
            rows.append((pid, loss, float(m.get("val_loss_pre", np.nan)),
                         float(m.get("num-val", 1))))
        rows.sort()
        if rows:
            pre = [r[2] for r in rows] if self.tuner.options["use_improvement"] else None
            self.tuner.update([self._choices[r[0]] for r in rows], [r[1] for r in rows],
                              [r[3] for r in rows], pre)
        return self.base.aggregate_train(server_round, replies)


def build_tuner(fx: Any, phase: str, centre_hps: dict[str, float], seed: int) -> FedEx:
    """The FedEx tuner of a scenario's ``[fedex]`` section (``fx``) for one phase.

    ``centre_hps`` are the phase's own local HPs (``[search]``'s for the search,
    ``[retrain]``'s for fixed-model training: :func:`fednas.federated.setup.local_hps`),
    the centre of the configurations; ``arch-lr`` is tuned in the search only. ``seed`` is
    the scenario's seed.
    """
    from fednas.tuning.fedex_space import centre_and_perturbations, product_grid

    names = tuple(n for n in fx.tune if phase == "search" or n != "arch-lr")
    ranges = fx.hp_ranges(names)
    centre = {k: v for k, v in centre_hps.items() if k in names}
    rng = np.random.default_rng(seed + (0 if phase == "search" else 101))
    options = {"eta0": fx.eta0 or None, "schedule": fx.schedule,
               "baseline_discount": fx.baseline_discount, "entropy_cutoff": fx.entropy_cutoff,
               "use_improvement": fx.use_improvement,
               "divergence_penalty": fx.divergence_penalty or None}
    if fx.mode == "product":
        return FedEx(grid=product_grid(ranges, fx.configs, rng), base=centre, **options)
    configs = centre_and_perturbations(centre, ranges, fx.configs, rng, fx.perturbation_scale)
    return FedEx(configs=configs, **options)
