"""The FedEx wrapper on mock replies: per-client HPs out, θ updated from val losses in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fednas.config.loading import load_config
from fednas.spaces.registry import build_space
from fednas.tuning.fedex import FedEx
from strategies.fedex import FedExWrapper, build_tuner
from strategies.fednas import FedNAS


@pytest.fixture(autouse=True)
def _identity(task_identity):
    """Build Flower messages outside a ServerApp."""


def make(n_clients: int = 6):
    torch.manual_seed(0)
    space = build_space("cell", input_shape=(1, 8, 8), num_classes=3, channels=4, layers=2,
                        nodes=2, ops=("skip_connect", "conv_3x3"))
    base = FedNAS(space, seed=0, min_train_nodes=1)
    base.node_partitions = {1000 + i: i for i in range(n_clients)}
    tuner = FedEx(configs=[{"lr": 0.01}, {"lr": 0.1}, {"lr": 1.0}])
    return FedExWrapper(base, tuner, seed=0), space.state_dict()


def reply(msg: Message, val_loss: float, diverged: int = 0) -> Message:
    conf = msg.content["config"]
    metrics = MetricRecord({"num-examples": 10, "partition-id": int(conf["partition-id"]),
                            "diverged": diverged, "val_loss": val_loss, "num-val": 5,
                            "train_loss": 1.0})
    arrays = msg.content["arrays"] if not diverged else ArrayRecord({})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def test_each_client_gets_a_sampled_configuration():
    strategy, state = make()
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.05}),
                                             grid=None))
    lrs = [float(m.content["config"]["hp.lr"]) for m in messages]
    assert set(lrs) <= {0.01, 0.1, 1.0} and len(set(lrs)) > 1
    assert all(int(m.content["config"]["report-val"]) == 1 for m in messages)


def test_low_validation_loss_configs_gain_probability_and_weights_still_aggregate():
    strategy, state = make()
    for rnd in range(1, 6):
        messages = list(strategy.configure_train(rnd, ArrayRecord(state), ConfigRecord({}),
                                                 grid=None))
        replies = []
        for m in messages:
            lr = float(m.content["config"]["hp.lr"])
            if lr == 1.0:
                replies.append(reply(m, float("nan"), diverged=1))  # diverges: penalised
            else:
                replies.append(reply(m, 0.2 if lr == 0.1 else 1.0))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        assert arrays is not None  # the base strategy still aggregated the good clients
    theta = strategy.tuner.theta()[0]
    assert theta[1] > theta[0] > theta[2]
    np.testing.assert_allclose(theta.sum(), 1.0)
    record = strategy.addon_record()
    assert record["fedex_best"] == {"lr": 0.1}


def test_state_round_trip_reproduces_the_next_round():
    a, state = make()
    list(a.configure_train(1, ArrayRecord(state), ConfigRecord({}), grid=None))
    saved = a.get_state()
    first = [float(m.content["config"]["hp.lr"])
             for m in a.configure_train(2, ArrayRecord(state), ConfigRecord({}), grid=None)]
    b, _ = make()
    b.set_state(saved)
    again = [float(m.content["config"]["hp.lr"])
             for m in b.configure_train(2, ArrayRecord(state), ConfigRecord({}), grid=None)]
    assert first == again


def scenario_tuner(cfg, phase: str):
    from fednas.federated.setup import local_hps
    from simulations.client_app import client_setup

    return build_tuner(cfg.fedex, phase, local_hps(client_setup(cfg), phase, {}), cfg.seed)


def test_build_tuner_from_the_scenario():
    cfg = load_config(None, ["mode=federated", "fedex.enabled=true", "fedex.configs=5",
                             'fedex.tune=["lr", "arch-lr", "batch-size"]'])
    tuner = scenario_tuner(cfg, "search")
    assert len(tuner.theta()) == 1 and len(tuner.theta()[0]) == 5
    assert tuner.config((0,)) == {"lr": 0.05, "arch-lr": 3e-3, "batch-size": 64}  # the centre
    for j in range(5):
        c = tuner.config((j,))
        assert 1e-3 <= c["lr"] <= 0.3 and isinstance(c["batch-size"], int)
    train = scenario_tuner(cfg, "retrain")
    assert "arch-lr" not in train.config((0,))
    product = scenario_tuner(load_config(None, ["mode=federated", "fedex.enabled=true",
                                                "fedex.mode=product", "fedex.configs=3"]),
                             "search")
    assert len(product.theta()) == 3  # one factor per tuned HP (lr, momentum, weight-decay)


def test_fedex_config_errors_name_the_key():
    from fednas.errors import ConfigError

    with pytest.raises(ConfigError, match="fedex.ranges.lr"):
        load_config(None, ["fedex.ranges.lr.low=-1"])
    with pytest.raises(ConfigError, match="fedex.enabled"):
        load_config(None, ["fedex.enabled=true"])  # centralised mode
    with pytest.raises(ConfigError, match="fedex.tune"):
        load_config(None, ['fedex.tune=["dropout"]'])
