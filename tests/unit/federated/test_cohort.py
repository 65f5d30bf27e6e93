"""A cohort of virtual clients equals its members run one by one (fednas/federated/cohort.py).

The vectorised path is compared with each client's own ``LocalClients.train`` (the
one-client-per-message path) within 1e-4 (float32 rounding: vmap runs grouped convolutions
and a per-client lr tensor, see fednas/training/vectorised.py); the sequential cohort path
(search, Adam) is compared bit for bit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fednas.config.loading import load_config
from fednas.data.run_data import run_dataset
from fednas.federated.client import LocalClients
from fednas.federated.cohort import Outcome, presum, run_cohort
from fednas.federated.setup import encode_spec
from fednas.federated.shards import encode_masks, gumbel_top_s
from fednas.meta.setup import meta_setup
from fednas.spaces.stats import random_genotype
from simulations.client_app import client_setup

TOL = 1e-4


def clients_for(cfg) -> LocalClients:
    return LocalClients(client_setup(cfg), lambda: run_dataset(cfg.data, cfg.seed,
                                                               meta_setup(cfg)))


@pytest.fixture
def cfg(tiny_overrides):
    # 8 clients of unequal size (Dirichlet), batch 8: 2-5 steps per epoch, two epochs,
    # Nesterov momentum and weight decay so every part of the optimiser matters
    return load_config(None, [*tiny_overrides, "partition.num-clients=8",
                              "partition.scheme=dirichlet", "partition.alpha=0.5",
                              "retrain.batch-size=8", "retrain.momentum=0.9",
                              "retrain.weight-decay=1e-3", "retrain.grad-clip=1.0",
                              "federation.local-epochs=2"])


def fixed_spec(clients: LocalClients) -> dict:
    return {"kind": "subnet", "genotype": random_genotype(clients.make_space(), 0)}


def start_state(clients: LocalClients, spec: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    model = clients.fixed_model(spec)
    for p in model.parameters():  # a non-trivial global state
        p.data.normal_(0, 0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def confs_for(pids, spec, **extra) -> list[dict]:
    return [{"partition-id": p, "server-round": 3, "lr": 0.05, "model": encode_spec(spec),
             **extra} for p in pids]


def assert_close(a: dict[str, float | torch.Tensor], b: dict, keys=None) -> None:
    for k in keys or a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape, k
            if x.is_floating_point():
                assert torch.allclose(x, y, atol=TOL, rtol=TOL), (k, (x - y).abs().max())
            else:
                assert torch.equal(x, y), k
        else:
            assert x == pytest.approx(y, abs=TOL, rel=TOL), k


def test_vectorised_training_equals_each_clients_own(cfg):
    clients = clients_for(cfg)
    spec = fixed_spec(clients)
    state = start_state(clients, spec)
    pids = list(range(8))
    sizes = {len(clients.splits(p)[0][1]) for p in pids}
    assert len(sizes) > 2  # unequal clients: masked steps and several batch-size groups
    # FedEx-style per-client hyperparameters on half of them, val losses before and after
    confs = confs_for(pids, spec, **{"report-val": 2})
    for c in confs[::2]:
        c.update({"hp.lr": 0.02, "hp.momentum": 0.0, "hp.weight-decay": 0.0})
    cohort = run_cohort(clients, "train", state, confs, vectorise=True)
    assert [o.pid for o in cohort] == pids
    for conf, got in zip(confs, cohort, strict=True):
        want_state, want_metrics = clients.train(got.pid, 3, state, spec, conf)
        assert got.error == "" and set(got.state) == set(want_state)
        assert_close(got.state, want_state)
        assert set(got.metrics) == set(want_metrics)
        assert_close(got.metrics, want_metrics,
                     ["train_loss", "train_acc", "val_loss", "val_loss_pre", "num-examples"])
    first = cohort[0].state  # the clients did train differently
    assert all(any(not torch.equal(first[k], o.state[k]) for k in first) for o in cohort[1:])


def test_failing_and_diverging_members_drop_alone(cfg):
    cfg = dataclasses.replace(cfg, federation=dataclasses.replace(
        cfg.federation, fault_partitions=(2,), fault_kind="raise"))
    clients = clients_for(cfg)
    spec = fixed_spec(clients)
    state = start_state(clients, spec)
    confs = confs_for(range(5), spec)
    confs[3]["hp.lr"] = 1e30  # diverges on its second step
    cohort = run_cohort(clients, "train", state, confs, vectorise=True)
    assert "injected fault on partition 2" in cohort[2].error and not cohort[2].state
    assert cohort[3].metrics["diverged"] == 1 and not cohort[3].usable()
    for o in (cohort[0], cohort[1], cohort[4]):
        want, _ = clients.train(o.pid, 3, state, spec, confs[o.pid])
        assert o.usable()
        assert_close(o.state, want)
    mean, total, used = presum(cohort)
    good = [cohort[i] for i in (0, 1, 4)]
    assert used == [0, 1, 4] and total == sum(o.metrics["num-examples"] for o in good)
    key = next(k for k, v in state.items() if v.is_floating_point())
    expect = sum(o.metrics["num-examples"] * o.state[key].double() for o in good) / total
    assert torch.allclose(mean[key].double(), expect, rtol=1e-6)


def test_sequential_cohort_is_the_one_client_path_exactly(cfg):
    cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, optimizer="adam"))
    clients = clients_for(cfg)
    spec = fixed_spec(clients)
    state = start_state(clients, spec)
    confs = confs_for(range(3), spec)
    for o, conf in zip(run_cohort(clients, "train", state, confs), confs, strict=True):
        want, _ = clients.train(o.pid, 3, state, spec, conf)
        assert all(torch.equal(o.state[k], want[k]) for k in want)
    # the search: each member slices its own shard from the whole state it received
    space = clients.make_space()
    full = {k: v.clone() for k, v in space.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    confs = []
    for pid in range(3):
        masks = [gumbel_top_s(a.detach(), 2, g, True) for a in space.arch_parameters()]
        confs.append({"partition-id": pid, "server-round": 1, "lr": 0.05,
                      "shard": encode_masks(masks)})
    for o, conf in zip(run_cohort(clients, "train.search", full, confs), confs, strict=True):
        from fednas.federated.shards import decode_masks, slice_state

        masks = decode_masks(conf["shard"], list(clients.arch_shapes))
        regions = slice_state(full, clients.shard_slices(masks))
        fresh = clients_for(cfg)  # a new process's clients: no reused supernet
        want, _ = fresh.search(o.pid, 1, regions, masks, conf)
        assert set(o.state) == set(want)
        assert all(torch.equal(o.state[k], want[k]) for k in want)


def test_presum_without_usable_members_and_with_non_finite_weights():
    assert presum([Outcome(1, error="boom")]) == ({}, 0.0, [])
    metrics = {"num-examples": 2.0}
    good = Outcome(1, {"w": torch.ones(2)}, dict(metrics))
    bad = Outcome(0, {"w": torch.tensor([1.0, float("inf")])}, dict(metrics))
    mean, total, used = presum([good, bad])
    assert used == [1] and total == 2.0 and torch.equal(mean["w"], torch.ones(2))
