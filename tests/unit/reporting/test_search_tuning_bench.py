"""``bench/search_tuning.py`` (issue 29.1): search settings chosen on the clients' validation
accuracy. Its figures from fake finished runs, and its sweep only planned (the real runs take
~10 minutes each)."""

from __future__ import annotations

import pytest
from conftest import bench_module

from simulations.sweep import plan


@pytest.fixture
def bench():
    return bench_module("search_tuning")


def run(group: str, seed: int, searched: float, random: float, ratio: float) -> dict:
    metrics = [{"phase": "search", "step": 1},
               {"phase": "retrain", "step": 1, "client_val_acc": 0.1},
               {"phase": "retrain", "step": 2, "client_val_acc": searched},
               {"phase": "random", "step": 1, "client_val_acc": random}]
    return {"group": group, "seed": seed, "metrics": metrics, "wall_s": 10.0,
            "summary": {"alpha": {"max_softmax_ratio": ratio}}}


def test_the_point_with_the_largest_validation_gap_is_best(bench):
    runs = [run("arch-lr=a", 100, 0.80, 0.79, 1.2), run("arch-lr=a", 101, 0.82, 0.80, 1.4),
            run("arch-lr=b", 100, 0.78, 0.75, 2.0), run("arch-lr=b", 101, 0.79, 0.77, 2.2)]
    line = bench.summarise(runs)
    a, b = line["points"]["arch-lr=a"], line["points"]["arch-lr=b"]
    assert a["val_gap_mean"] == pytest.approx(1.5)  # (1 + 2) / 2 points, the last round's
    assert b["val_gap_mean"] == pytest.approx(2.5) and b["searched_val_acc_mean"] == 78.5
    assert b["alpha_max_ratio_mean"] == pytest.approx(2.1) and b["seeds"] == [100, 101]
    assert line["best"] == "arch-lr=b"  # larger gap, although its accuracy is lower
    assert line["seeds"] == [100, 101] and line["wall_s"] == 40.0
    tie = bench.summarise([run("x", 100, 0.80, 0.79, 1.0), run("y", 100, 0.90, 0.89, 1.0)])
    assert tie["best"] == "y"  # equal gaps: the larger searched accuracy


def test_a_run_without_client_validation_is_named(bench):
    bad = run("x", 100, 0.8, 0.7, 1.0)
    bad["metrics"] = [m for m in bad["metrics"] if m["phase"] != "random"]
    with pytest.raises(KeyError, match="phase 'random'"):
        bench.summarise([bad])


def test_the_default_sweep_plans_valid_configs(bench, tmp_path):
    root, runs, _ = plan(bench.SCENARIO, bench.SETS, bench.GRID, [100, 101], str(tmp_path))
    assert len(runs) == 12  # 3 arch-lr × 2 warm-up × 2 seeds
    assert {r.values["federation.warmup-rounds"] for r in runs} == {"0", "1"}
    assert "federation.fraction-evaluate=0.5" in bench.SETS  # the score needs client val
    assert "random.params-tolerance=0.15" in bench.SETS  # size-matched, else any size
