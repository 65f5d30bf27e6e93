"""Central DP end to end on digits: ε in metrics and summary, the ε budget stops the run,
and a paused + resumed DP run (accountant, noise generator) equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from fednas.config.loading import load_config
from fednas.privacy.mechanism import PrivacyAccountant
from fednas.reporting.rundir import read_metrics

pytestmark = pytest.mark.slow


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("wall_s")} for r in records]


def test_dp_budget_stop_and_exact_resume(tiny_overrides, tmp_path):
    from simulations.simulation import run_federated

    acc = PrivacyAccountant()
    eps = []
    for _ in range(4):
        acc.step(1.0, 1.0)
        eps.append(acc.epsilon(1e-5))
    budget = (eps[2] + eps[3]) / 2  # room for exactly 3 rounds in total
    sets = tiny_overrides + [
        "mode=federated", 'phases=["search", "retrain"]', "federation.rounds=2",
        "federation.subnet-rounds=2", "federation.local-steps=2", "federation.shard-size=2",
        "federation.min-fit-clients=2", "federation.fraction-evaluate=0.0",
        "federation.node-wait=300", "privacy.mode=central", "privacy.noise-multiplier=1.0",
        "privacy.clip-norm=2.0", "privacy.alpha-clip-norm=0.05",
        f"privacy.epsilon-budget={budget}"]
    full_dir, summary = run_federated(load_config(None, sets + [
        f'runtime.out-dir="{tmp_path / "full"}"']))
    metrics = read_metrics(full_dir)
    assert [m["phase"] for m in metrics] == ["search", "search", "retrain"]
    assert [m["dp_epsilon"] for m in metrics] == pytest.approx(eps[:3], rel=1e-6)
    # α clipped and noised apart in the search (same ε: the split composes to σ); the
    # retrained subnet has no α
    assert [m.get("dp_alpha_clip_norm") for m in metrics] == [0.05, 0.05, None]
    assert metrics[0]["dp_alpha_noise_std"] == pytest.approx(0.05 * 2**0.5, rel=1e-5)
    assert metrics[0]["dp_noise_std"] == pytest.approx(2.0 * 2**0.5, rel=1e-5)
    assert metrics[2]["dp_noise_std"] == pytest.approx(2.0, rel=1e-5)
    assert summary["privacy"]["epsilon"] <= budget
    assert summary["privacy"]["stopped_by_budget"] == {"phase": "retrain", "round": 1}
    assert summary["models"]["searched"]["test_acc"] > 0
    assert summary["models"]["searched"]["rounds"] == 1

    cfg = load_config(None, sets + [f'runtime.out-dir="{tmp_path / "paused"}"'])
    paused_dir, paused = run_federated(cfg, stop_after=("search", 1))
    assert paused["paused"] == {"phase": "search", "round": 1}
    resumed_dir, resumed = run_federated(cfg, resume_dir=paused_dir)
    assert strip_time(read_metrics(resumed_dir)) == strip_time(metrics)
    on_disk = json.loads((resumed_dir / "summary.json").read_text())
    assert on_disk["privacy"] == json.loads((full_dir / "summary.json").read_text())["privacy"]
