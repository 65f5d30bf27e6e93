"""The client fault model: seeded plan, what each kind does, config checks."""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest
import torch

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.federated.faults import client_fault, planned_faults, poison, start_fault


def federation(*sets: str):
    return load_config(None, list(sets)).federation


RANDOM = ("federation.faults.p-raise=0.1", "federation.faults.p-nan=0.05",
          "federation.faults.p-hang=0.05", "federation.faults.p-exit=0.1",
          "federation.round-timeout=5")


def test_the_plan_is_seeded_and_has_the_configured_rates():
    f = federation(*RANDOM)
    draws = [client_fault(f, 0, "train", rnd, pid) for rnd in range(1, 201)
             for pid in range(50)]
    assert draws == [client_fault(f, 0, "train", rnd, pid) for rnd in range(1, 201)
                     for pid in range(50)]
    counts = Counter(draws)
    n = len(draws)
    for kind, p in (("raise", 0.1), ("nan", 0.05), ("hang", 0.05), ("exit", 0.1)):
        assert abs(counts[kind] / n - p) < 4 * math.sqrt(p * (1 - p) / n), kind
    other_seed = [client_fault(f, 1, "train", rnd, pid) for rnd in range(1, 201)
                  for pid in range(50)]
    assert other_seed != draws
    search = [client_fault(f, 0, "train.search", rnd, pid) for rnd in range(1, 201)
              for pid in range(50)]
    assert search != draws  # another route, other draws
    assert client_fault(f, 0, "evaluate", 1, 0) is None  # evaluation never fails on purpose


def test_fixed_partitions_keep_failing_and_the_plan_counts_them():
    f = federation("partition.num-clients=4", "federation.fault-partitions=[2]",
                   "federation.fault-kind=nan")
    assert [client_fault(f, 0, "train", 3, p) for p in range(4)] == [None, None, "nan", None]
    assert planned_faults(f, 0, "train", 3, range(4)) == {
        "faults_raise": 0, "faults_nan": 1, "faults_hang": 0, "faults_exit": 0}


def test_what_each_kind_does_outside_a_ray_worker():
    f = federation("federation.faults.p-raise=1")
    with pytest.raises(RuntimeError, match="injected fault on partition 3"):
        start_fault(f, 0, "train", 1, 3)
    assert start_fault(federation("federation.faults.p-nan=1"), 0, "train", 1, 3) is True
    with pytest.raises(RuntimeError, match="not in a Ray worker: raised instead"):
        start_fault(federation("federation.faults.p-exit=1"), 0, "train", 1, 3)
    hang = federation("federation.faults.p-hang=1", "federation.round-timeout=0.05",
                      "federation.faults.hang-s=0.2")
    t0 = time.perf_counter()
    assert start_fault(hang, 0, "train", 1, 3) is False
    assert time.perf_counter() - t0 >= 0.2
    assert start_fault(federation(), 0, "train", 1, 3) is False


def test_poison_makes_the_loss_and_the_update_non_finite_without_touching_the_source():
    w = torch.ones(3)
    state, metrics = {"n": torch.tensor([1]), "w": w}, {"train_loss": 0.5}
    poison(state, metrics, 2, 0)
    assert math.isnan(metrics["train_loss"]) and math.isnan(float(state["w"][0]))
    assert torch.equal(w, torch.ones(3)) and torch.equal(state["n"], torch.tensor([1]))
    state, metrics = {"w": torch.ones(3)}, {}
    poison(state, metrics, 2, 1, loss_key="meta-loss")
    assert metrics["meta-loss"] == math.inf and float(state["w"][0]) == math.inf


@pytest.mark.parametrize("sets, culprit", [
    (("federation.faults.p-raise=0.6", "federation.faults.p-exit=0.5"), "exceeds 1"),
    (("federation.faults.p-hang=0.1", "federation.round-timeout=inf"), "p-hang"),
    (("federation.faults.p-hang=0.1", "federation.round-timeout=10",
      "federation.faults.hang-s=5"), "p-hang"),
    (("federation.faults.p-nan=1.5",), "p-nan"),
])
def test_bad_fault_settings_are_config_errors(sets, culprit):
    with pytest.raises(ConfigError, match=culprit):
        federation(*sets)


def test_poison_also_spoils_a_reported_val_loss():
    metrics = {"train_loss": 0.5, "val_loss": 0.4}
    poison({"w": torch.ones(2)}, metrics, 1, 0)
    assert not math.isfinite(metrics["val_loss"]) and not math.isfinite(metrics["train_loss"])
