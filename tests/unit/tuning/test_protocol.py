"""The FedEx paper's tuning protocol (issue 29.3): budget accounting, seeded sampling inside
the space, poor starting points, halving over given configurations, and the bench."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_module

import simulations.simulation
from fednas.errors import ConfigError
from fednas.tuning.halving import successive_halving
from fednas.tuning.protocol import (
    ANCHOR,
    LR_SPAN,
    SPACE,
    Axis,
    equal_budget,
    poor_start,
    sample_configs,
    sha_rounds,
)
from simulations.halving_runs import run_halving

START = {"federation.server-lr": 1.0, "federation.server-momentum": 0.0, "retrain.lr": 0.05,
         "retrain.momentum": 0.9, "retrain.weight-decay": 3e-4, "federation.local-epochs": 1}


@pytest.mark.parametrize(("n", "rounds", "eta"), [(9, 3, 3), (2, 2, 2), (4, 3, 2), (9, 6, 3),
                                                  (27, 4, 3), (1, 5, 3)])
def test_rs_and_sha_spend_the_same_rounds(n, rounds, eta):
    budget = equal_budget(n, rounds, eta)
    assert budget == n * rounds == sha_rounds(n, budget, eta)
    spent = successive_halving(list(range(n)), lambda i, c, r: float(i), budget=budget,
                               eta=eta).rounds_used  # what the halving loop really spends
    assert spent == budget


@pytest.mark.parametrize(("n", "rounds", "eta"), [(9, 4, 3), (5, 3, 2), (8, 6, 2)])
def test_unequal_budgets_are_refused(n, rounds, eta):
    assert sha_rounds(n, n * rounds, eta) < n * rounds
    with pytest.raises(ConfigError, match="successive halving over"):
        equal_budget(n, rounds, eta)
    with pytest.raises(ConfigError, match="halving.budget"):  # too few for the first rung
        equal_budget(8, 2, 2)


def test_sampling_is_seeded_inside_the_ranges_and_starts_at_the_start():
    a = sample_configs(SPACE, START, 50, np.random.default_rng(3))
    assert a == sample_configs(SPACE, START, 50, np.random.default_rng(3))
    assert a != sample_configs(SPACE, START, 50, np.random.default_rng(4))
    assert a[0] == START and len(a) == 50
    for config in a:
        assert set(config) == {ax.key for ax in SPACE}
        for ax in SPACE:
            assert ax.low <= config[ax.key] <= ax.high, ax.key
        assert isinstance(config["federation.local-epochs"], int)
        ratio = math.log10(config[ANCHOR] / START[ANCHOR])
        assert abs(ratio) <= LR_SPAN + 1e-9  # the local lr stays near the starting point
    assert {c["federation.local-epochs"] for c in a} == {1, 2}
    moms = [c["federation.server-momentum"] for c in a[1:]]
    assert min(moms) < 0.1 and max(moms) > 0.4  # the other axes span their whole range


def test_poor_starts_scale_the_local_lr_and_share_the_draws():
    low, high = poor_start(START, 0.1), poor_start(START, 10)
    assert low["retrain.lr"] == pytest.approx(0.005) and high["retrain.lr"] == pytest.approx(0.5)
    assert {k: v for k, v in low.items() if k != "retrain.lr"} == {
        k: v for k, v in START.items() if k != "retrain.lr"}
    assert START["retrain.lr"] == 0.05  # not modified in place
    good = sample_configs(SPACE, START, 9, np.random.default_rng(0))
    poor = sample_configs(SPACE, high, 9, np.random.default_rng(0))
    for g, p in zip(good, poor, strict=True):  # the same draws, the lr shifted by 10x
        assert p["retrain.lr"] == pytest.approx(10 * g["retrain.lr"])
        assert p["retrain.momentum"] == g["retrain.momentum"]
    with pytest.raises(ConfigError, match="factor"):
        poor_start(START, 0.0)


def test_a_start_outside_the_space_names_the_key():
    with pytest.raises(ConfigError, match="retrain.lr"):
        sample_configs(SPACE, poor_start(START, 1e4), 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="federation.server-lr"):
        sample_configs(SPACE, {k: v for k, v in START.items() if k != "federation.server-lr"},
                       3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="low < high"):
        Axis("x", 1.0, 1.0).check()


def test_halving_over_given_configs_ranks_by_val_accuracy(tmp_path, monkeypatch):
    """Candidates given as a list (not a grid), ranked by client_val_acc, higher better."""

    def fake_run(cfg, console=None, resume_dir=None, stop_after=None, backend=None):
        acc = {0.5: 0.2, 2.0: 0.9, 1.0: 0.6}[cfg.federation.server_lr]
        run_dir = resume_dir or Path(cfg.runtime.out_dir) / f"{cfg.name}-x"
        run_dir.mkdir(parents=True, exist_ok=True)
        end = stop_after[1] if stop_after else cfg.federation.subnet_rounds
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"phase": "baseline", "step": end, "client_val_acc": acc,
                                 "client_val_loss": acc}) + "\n")  # loss would pick 0.5
        if stop_after is None:
            (run_dir / "summary.json").write_text(json.dumps(
                {"models": {"baseline": {"test_acc": acc, "rounds": end}}}))
        return run_dir, {}

    monkeypatch.setattr(simulations.simulation, "run_federated", fake_run)
    fed = ["mode=federated", 'phases=["baseline"]', "federation.fraction-evaluate=1.0",
           f'runtime.out-dir="{tmp_path}"']
    cands = [{"federation.server-lr": v, "retrain.lr": "0.01"} for v in ("0.5", "2.0", "1.0")]
    record = run_halving(None, fed, [], budget=6, eta=3, cands=cands,
                         score_keys=("client_val_acc",), maximize=True)
    assert record["best"]["index"] == 1 and record["rounds_used"] == 6
    assert "higher=better" in record["score"]




def test_bench_prints_the_keys_and_reuses_its_records(tmp_path, monkeypatch, capsys):
    """The bench's bookkeeping in-process, its federated runs replaced by fakes (the real
    runners are tested with the sweep and halving runners; ``--quick`` runs them all in
    ~20 minutes): every key, equal budgets, the records, and a rerun that reuses them."""
    bench = bench_module("fedex_protocol")
    calls = []

    def accuracy(sets: list[str], config: dict) -> float:
        fedex = "fedex.enabled=true" in sets
        return float(0.6 + 0.05 * fedex - 0.1 * abs(np.log10(config["retrain.lr"] / 0.05)))

    def fake_rs(configs, sets, seed, rounds, out):
        calls.append(("rs", seed))
        runs = [{"val_acc": accuracy(sets, c), "test_acc": accuracy(sets, c)} for c in configs]
        return {"best": 0, "test_acc": runs[0]["test_acc"],
                "rounds_used": rounds * len(configs), "runs": runs}

    def fake_sha(configs, sets, seed, budget, eta, out):
        calls.append(("sha", seed))
        return {"best": 0, "test_acc": accuracy(sets, configs[0]) + 0.02, "rounds_used": budget,
                "rungs": []}

    def fake_refine(run_dir):
        calls.append(("refine", run_dir))
        fedex = "fedex" in run_dir.parts[-2]
        return {"conf": {}, "global_acc": 0.5, "refine_acc": 0.7 + 0.02 * fedex, "samples": 10,
                "diverged": 0}

    monkeypatch.setattr(bench, "random_search", fake_rs)
    monkeypatch.setattr(bench, "halving", fake_sha)
    monkeypatch.setattr(bench, "pick_dir", lambda out, start, m, best: out / start / m / "run")
    monkeypatch.setattr(bench, "refine_run", fake_refine)
    argv = ["fedex_protocol.py", "--seeds", "0,1", "--out-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    for m in ("rs", "sha", "rs_fedex", "sha_fedex"):
        for prefix in ("", "poor_"):
            assert 0 <= line[f"{prefix}{m}_acc_mean"] <= 100
            assert line[f"{prefix}{m}_acc_std"] == 0.0  # the fakes ignore the seed
        for factor in ("lr-x0.1", "lr-x10"):
            assert 0 <= line["poor_by_factor"][factor][f"{m}_acc_mean"] <= 100
    assert line["sha_fedex_acc_mean"] == pytest.approx(line["sha_acc_mean"] + 5)
    assert line["aim_sha_fedex_ge_sha_plus_1"] is True
    assert line["budget_rounds"] == 27 and line["seeds"] == [0, 1]
    assert line["sha_fedex_refine_acc_mean"] == pytest.approx(72.0)
    assert line["poor_rs_refine_acc_mean"] == pytest.approx(70.0)
    assert line["aim_sha_fedex_ge_sha_plus_1_refine"] is True  # 72 vs 70
    assert line["aim_poor_fedex_within_2_refine"] is True  # the fake ignores the start
    assert line["poor_by_factor"]["lr-x10"]["rs_fedex_refine_acc_mean"] == pytest.approx(72.0)
    # seeds × starts × (rs, sha) × (with, without FedEx), then every pick's refine evaluation
    assert len([c for c in calls if c[0] != "refine"]) == 2 * 3 * 4
    assert len([c for c in calls if c[0] == "refine"]) == 2 * 3 * 4
    calls.clear()
    bench.main()  # the records are reused: no run at all, the same line
    assert calls == [] and json.loads(capsys.readouterr().out.splitlines()[-1]) == line


def test_pick_dir_finds_the_finished_run_of_each_pick(tmp_path):
    bench = bench_module("fedex_protocol")
    rs = tmp_path / "default" / "rs" / "c02" / "sweep-1" / "p00-s0"
    (rs / "p00-s0-1.incomplete").mkdir(parents=True)
    (rs / "p00-s0-1.incomplete" / "summary.json").write_text("{}")
    (rs / "p00-s0-2").mkdir()
    (rs / "p00-s0-2" / "summary.json").write_text("{}")
    assert bench.pick_dir(tmp_path, "default", "rs", 2) == rs / "p00-s0-2"
    halving = tmp_path / "default" / "sha" / "x-halving-1"
    (halving / "c03-1").mkdir(parents=True)
    (halving / "halving.json").write_text(json.dumps(
        {"best": {"run_dir": "/elsewhere/x-halving-1/c03-1"}}))
    assert bench.pick_dir(tmp_path, "default", "sha", 3) == halving / "c03-1"
    with pytest.raises(SystemExit, match="candidate 1"):
        bench.pick_dir(tmp_path, "default", "rs", 1)
