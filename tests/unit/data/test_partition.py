"""Tests of fednas.data.partition (flwr-datasets partitioners on in-memory labels)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fednas.data.partition import SCHEMES, client_train_val, partition_indices, partition_stats
from fednas.errors import ConfigError


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2,000 shuffled labels of 10 classes (200 each)."""
    y = np.repeat(np.arange(10), 200)
    np.random.default_rng(0).shuffle(y)
    return y


def total_variation(parts: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per client: TV distance between its class distribution and the global one."""
    glob = np.bincount(labels, minlength=10) / len(labels)
    return np.array([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - glob).sum()
                     for p in parts])


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "natural"])  # test_natural.py
def test_partitions_are_disjoint_deterministic_and_seeded(labels, scheme):
    parts = partition_indices(labels, 8, scheme, seed=1)
    assert len(parts) == 8 and all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    assert joined.min() >= 0 and joined.max() < len(labels)
    if scheme != "pathological":
        assert len(joined) == len(labels)  # covers everything
    again = partition_indices(labels, 8, scheme, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, 8, scheme, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_is_balanced_and_mixed(labels):
    parts = partition_indices(labels, 10, "iid", seed=0)
    assert {len(p) for p in parts} == {200}
    assert total_variation(parts, labels).max() < 0.15


def test_dirichlet_is_non_iid(labels):
    parts = partition_indices(labels, 10, "dirichlet", alpha=0.1, seed=0, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert total_variation(parts, labels).mean() > 0.4
    hists = [np.bincount(labels[p], minlength=10) for p in parts]
    assert len({h.argmax() for h in hists}) > 1  # clients are dominated by different classes
    iid = partition_indices(labels, 10, "iid", seed=0)
    assert total_variation(parts, labels).mean() > 3 * total_variation(iid, labels).mean()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_k_classes_per_client(labels, k):
    parts = partition_indices(labels, 10, "pathological", classes_per_client=k, seed=0)
    stats = partition_stats(parts, labels, 10)
    assert all(c["num_classes"] == k for c in stats["clients"])
    assert len(np.unique(labels[np.concatenate(parts)])) == 10  # 10 clients ≥ 10 classes


def test_stats_sum_to_total_and_are_json(labels):
    parts = partition_indices(labels, 5, "dirichlet", alpha=0.5, seed=3)
    stats = partition_stats(parts, labels, 10)
    json.dumps(stats)
    assert stats["summary"]["total"] == len(labels) == sum(c["samples"] for c in stats["clients"])
    assert sum(sum(c["class_hist"]) for c in stats["clients"]) == len(labels)
    assert [c["client"] for c in stats["clients"]] == list(range(5))
    sizes = [len(p) for p in parts]
    assert stats["summary"]["min"] == min(sizes) and stats["summary"]["max"] == max(sizes)
    assert stats["summary"]["mean"] == pytest.approx(len(labels) / 5)
    assert np.array_equal(np.sum([c["class_hist"] for c in stats["clients"]], 0),
                          np.bincount(labels, minlength=10))


@pytest.mark.parametrize("kwargs, key", [
    ({"num_clients": 0}, "partition.num-clients"),
    ({"num_clients": 3000}, "partition.num-clients"),
    ({"scheme": "dirichlet", "alpha": 0.0}, "partition.alpha"),
    ({"scheme": "dirichlet", "alpha": -1.0}, "partition.alpha"),
    ({"scheme": "pathological", "classes_per_client": 0}, "partition.classes-per-client"),
    ({"scheme": "pathological", "classes_per_client": 11}, "partition.classes-per-client"),
    ({"scheme": "shards"}, "partition.scheme"),
])
def test_bad_arguments_raise_config_error_naming_key(labels, kwargs, key):
    args = {"num_clients": 4, "scheme": "iid"} | kwargs
    with pytest.raises(ConfigError, match=key):
        partition_indices(labels, args.pop("num_clients"), args.pop("scheme"), **args)


def test_dirichlet_min_size_unreachable_suggests_larger_alpha(labels):
    with pytest.raises(ConfigError, match="larger partition.alpha or fewer clients"):
        partition_indices(labels[:100], 20, "dirichlet", alpha=0.05, min_size=10)


def test_pathological_impossible_assignment_is_config_error():
    y = np.array([0, 1, 1, 1, 1, 1])  # class 0 has one sample but two clients need it
    with pytest.raises(ConfigError, match="partition.classes-per-client"):
        partition_indices(y, 4, "pathological", classes_per_client=2, seed=0)


def test_client_train_val_split():
    idx = np.arange(100, 150)
    train, val = client_train_val(idx, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert np.array_equal(np.sort(np.concatenate([train, val])), idx)
    t2, v2 = client_train_val(idx, 0.2, seed=0)
    assert np.array_equal(train, t2) and np.array_equal(val, v2)
    assert not np.array_equal(val, client_train_val(idx, 0.2, seed=1)[1])
    assert len(client_train_val(idx[:3], 0.1, seed=0)[1]) == 1  # at least one val sample
    assert len(client_train_val(idx, 0.0, seed=0)[1]) == 0
    with pytest.raises(ConfigError, match="val_fraction"):
        client_train_val(idx, 1.0, seed=0)


def test_large_partition_is_fast_and_quiet(capfd):
    y = np.repeat(np.arange(10), 6000)
    np.random.default_rng(1).shuffle(y)
    partition_indices(y[:50], 2, "iid")  # warm up imports
    capfd.readouterr()
    start = time.perf_counter()
    for scheme in SCHEMES:
        parts = partition_indices(y, 10, scheme, seed=0, groups=np.arange(len(y)) % 10)
        assert sum(len(p) for p in parts) == 60000
    assert time.perf_counter() - start < 6.0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
