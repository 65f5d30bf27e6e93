"""Cohort mode through the real round loop, strategies and ClientApp routes, in process.

Every run is compared with the same scenario at ``cohort-size = 1`` (one client per
message): the search on supernet shards (members run one by one: equal), fixed-model FedAvg
(vectorised and pre-summed), FedEx (per-client hyperparameters and θ) and central DP. The
tolerance is that of the vectorised trainer (fednas/training/vectorised.py).
"""

from __future__ import annotations

import pytest
from conftest import federated_sets, in_process_run

TOL = dict(rel=1e-4, abs=1e-5)
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "clients_ok", "client_errors",
        "clients_diverged", "epsilon", "fedex_entropy", "client_val_loss", "client_val_acc")


def both(sets: list[str], tmp_path, slots: int = 2):
    plain, _, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "one"}"'])
    packed, summary, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "cohort"}"',
                                                "federation.cohort-size=0"], slots)
    return plain, packed, summary


def assert_same_rounds(plain: list[dict], packed: list[dict]) -> None:
    assert [m["phase"] for m in packed] == [m["phase"] for m in plain]
    for p, c in zip(plain, packed, strict=True):
        for key in KEYS:
            if key in p:
                assert c[key] == pytest.approx(p[key], **TOL), (p["phase"], key)


@pytest.mark.parametrize("extra", [
    # FedNAS shards (search) + FedAvg (baseline) with federated evaluation
    ["federation.shard-size=2", "federation.fraction-evaluate=1.0"],
    ["fedex.enabled=true", 'fedex.tune=["lr", "momentum"]', "fedex.configs=3"],
], ids=["fedavg-shards", "fedex"])
def test_cohorts_equal_one_client_per_message(tiny_overrides, tmp_path, no_plots, extra,
                                              task_identity):
    sets = federated_sets(tiny_overrides) + ["runtime.threads=1", "federation.rounds=2",
                                             *extra]
    plain, packed, _ = both(sets, tmp_path)
    assert all(m["cohorts"] == 2 for m in packed)
    assert all("cohorts" not in m for m in plain)
    assert_same_rounds(plain, packed)
    if "federation.fraction-evaluate=1.0" in extra:
        assert all("client_val_loss" in m for m in packed if m["phase"] == "baseline")
    fixed = [m for m in packed if m["phase"] == "baseline"]
    one = [m for m in plain if m["phase"] == "baseline"]
    # pre-summed: one mean per cohort instead of one update per client
    assert all(c["bytes_up"] < p["bytes_up"] for c, p in zip(fixed, one, strict=True))


@pytest.mark.parametrize("slots", [1, 3])
def test_cohorts_with_central_dp(tiny_overrides, tmp_path, no_plots, task_identity, slots):
    sets = federated_sets(tiny_overrides) + [
        "runtime.threads=1", "privacy.mode=central", "privacy.noise-multiplier=0.5",
        "privacy.clip-norm=1.0", "federation.bn-calibration-samples=50"]
    plain, packed, summary = both(sets, tmp_path, slots=slots)
    assert all(m["cohorts"] == slots for m in packed)
    assert_same_rounds(plain, packed)
    for p, c in zip(plain, packed, strict=True):  # the same clipping, noise and accounting
        for key in ("dp_epsilon", "dp_clip_norm", "dp_noise_std", "dp_update_norm_median",
                    "dp_clipped_fraction"):
            assert c[key] == pytest.approx(p[key], **TOL), (p["phase"], key)
    assert summary["privacy"]["epsilon"] > 0
    # fixed-model rounds: one cohort sends the (float64) sum of its 3 members' clipped
    # deltas instead of 3 float32 updates
    fixed = [(p, c) for p, c in zip(plain, packed, strict=True) if p["phase"] == "baseline"]
    assert fixed and all((c["bytes_up"] < p["bytes_up"]) == (slots == 1) for p, c in fixed)


def test_a_failing_member_drops_alone(tiny_overrides, tmp_path, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + [
        "runtime.threads=1", "federation.fault-partitions=[1]", "federation.min-fit-clients=1"]
    plain, packed, _ = both(sets, tmp_path, slots=1)  # all three clients in one cohort
    assert all(m["client_errors"] == 1 and m["clients_ok"] == 2 for m in packed)
    assert_same_rounds(plain, packed)


def test_resume_in_cohort_mode_is_exact(tiny_overrides, tmp_path, no_plots, task_identity):
    """Paused after a round and resumed, a cohort-mode run ends bit-identical to the run
    that was never interrupted."""
    from pathlib import Path

    sets = federated_sets(tiny_overrides) + [
        "runtime.threads=1", "federation.cohort-size=2", "federation.checkpoint-every=1",
        "federation.subnet-rounds=3", "federation.shard-size=2"]
    whole, summary, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "w"}"'], 2)
    paused, info, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "p"}"'], 2,
                                     stop_after=("baseline", 1))
    assert info["paused"] == {"phase": "baseline", "round": 1}
    resumed, final, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "p"}"'], 2,
                                       resume_dir=Path(info["run_dir"]))
    strip = [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in resumed]
    assert strip == [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in whole]
    assert all(m["cohorts"] == 2 for m in resumed)
    assert final["models"]["baseline"]["test_acc"] == summary["models"]["baseline"]["test_acc"]


def test_cohorts_balance_client_costs():
    from strategies.cohorts import Cohorts

    sizes = {0: 50, 1: 40, 2: 30, 3: 20, 4: 10, 5: 10}
    groups = Cohorts(0, slots=2, client_costs=sizes).groups(list(sizes))
    assert sorted(sum(sizes[p] for p in g) for g in groups) == [80, 80]
    assert all(g == sorted(g) for g in groups)
    assert [len(g) for g in Cohorts(4, client_costs=sizes).groups(list(range(6)))] == [3, 3]
    assert Cohorts(0, slots=8).groups([3, 1]) == [[1], [3]] or \
        Cohorts(0, slots=8).groups([3, 1]) == [[3], [1]]


def test_worker_slots():
    from fednas.config.loading import load_config
    from simulations.simulation import worker_slots

    cfg = load_config(None, ["federation.client-cpus=1"])
    backend = {"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
               "init_args": {"num_cpus": 16}}
    assert worker_slots(cfg, backend) == 16
    backend = {"client_resources": {"num_cpus": 2.0, "num_gpus": 0.25},
               "init_args": {"num_cpus": 16, "num_gpus": 1}}
    assert worker_slots(cfg, backend) == 4


@pytest.mark.parametrize("sets, culprit", [
    (["privacy.secure-aggregation=true"], "privacy.secure-aggregation"),
    (["privacy.mode=local"], "federation.cohort-size"),
])
def test_cohorts_refuse_per_client_privacy(sets, culprit):
    from fednas.config.loading import load_config
    from fednas.errors import ConfigError

    with pytest.raises(ConfigError, match=culprit):
        load_config(None, ["mode=federated", "federation.cohort-size=0",
                           "partition.num-clients=4", "federation.min-fit-clients=2", *sets])


def test_client_app_ships_as_its_scenario(tiny_config):
    """Flower pickles the ClientApp with every message: ours travels as its scenario and a
    worker builds it once."""
    import pickle

    import ray.cloudpickle as cloudpickle

    from simulations.client_app import make_client_app

    app = make_client_app(tiny_config)

    def loader():  # what Flower's simulation engine pickles per message
        return app

    data = cloudpickle.dumps(loader)
    assert len(data) < len(cloudpickle.dumps(tiny_config)) + 1500
    first, second = pickle.loads(data)(), pickle.loads(data)()
    assert first is second and first.cfg == tiny_config
