"""Refine evaluation (fednas/federated/refine.py): per-client test shards that follow the
clients' label counts, and the global vs fine-tuned accuracy on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.config.loading import load_config
from fednas.data.run_data import run_dataset
from fednas.federated.client import LocalClients
from fednas.federated.refine import client_test_shards, refine_accuracy
from fednas.training.train import evaluate
from simulations.client_app import client_setup

CPU = torch.device("cpu")


def test_shards_follow_the_label_counts_by_largest_remainder():
    clients = [np.array([0, 0, 0]), np.array([0, 1, 1]), np.array([2])]
    test = np.array([0] * 8 + [1] * 3 + [2] * 2 + [3] * 5)
    shards = client_test_shards(clients, test, 4, seed=0)
    got = [np.bincount(test[s], minlength=4).tolist() for s in shards]
    # class 0: 8 × (3, 1)/4 = (6, 2); class 1 and 2 to their only holder; class 3: nobody's
    assert got == [[6, 0, 0, 0], [2, 3, 0, 0], [0, 0, 2, 0]]
    every = np.concatenate(shards)
    assert len(every) == len(set(every.tolist())) == 13  # disjoint, class 3 left out

    tie = client_test_shards([np.array([0])] * 3, np.zeros(4, np.int64), 1, seed=0)
    assert [len(s) for s in tie] == [2, 1, 1]  # 4/3 each: the remainder to the lowest id


def test_shards_are_seeded():
    clients = [np.array([0, 1]), np.array([0, 1])]
    test = np.repeat([0, 1], 50)
    a = client_test_shards(clients, test, 2, seed=1)
    b = client_test_shards(clients, test, 2, seed=1)
    c = client_test_shards(clients, test, 2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert [len(s) for s in a] == [50, 50]


@pytest.fixture
def clients(tiny_overrides) -> LocalClients:
    cfg = load_config(None, [*tiny_overrides, "partition.num-clients=4",
                             "partition.scheme=dirichlet", "partition.alpha=0.5",
                             "retrain.batch-size=16", "retrain.momentum=0.0"])
    return LocalClients(client_setup(cfg), lambda: run_dataset(cfg.data, cfg.seed))


def _setup(clients: LocalClients):
    spec = {"kind": "baseline"}
    torch.manual_seed(3)
    model = clients.fixed_model(spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = clients.data
    labels = [clients.splits(pid)[0][1].numpy() for pid in range(4)]
    shards = client_test_shards(labels, data.test_y.numpy(), data.num_classes, seed=0)
    return spec, state, (data.test_x, data.test_y), shards


def test_global_accuracy_is_the_models_accuracy_on_the_shards_and_refine_trains(clients):
    spec, state, test, shards = _setup(clients)
    out = refine_accuracy(clients, state, spec, {"hp.lr": 0.1}, 5, test, shards, device=CPU)
    union = torch.as_tensor(np.concatenate(shards))
    model = clients.fixed_model(spec)
    model.load_state_dict(state)
    whole = evaluate(model, (test[0][union], test[1][union]), batch_size=64, device=CPU)
    assert out["samples"] == len(union) == sum(r["samples"] for r in out["clients"])
    assert out["global_acc"] == pytest.approx(whole["eval_acc"], abs=1e-6)
    assert out["diverged"] == 0
    # an untrained net: fine-tuning on each client's own labels must beat it on that client
    assert out["refine_acc"] > out["global_acc"] + 0.05
    again = refine_accuracy(clients, state, spec, {"hp.lr": 0.1}, 5, test, shards, device=CPU)
    assert again["refine_acc"] == out["refine_acc"]  # seeded by the round and the client


def test_a_diverged_fine_tuning_scores_zero(clients):
    spec, state, test, shards = _setup(clients)
    out = refine_accuracy(clients, state, spec, {"hp.lr": 1e30}, 5, test, shards, device=CPU)
    assert out["diverged"] == sum(len(s) > 0 for s in shards)
    assert out["refine_acc"] == 0.0
