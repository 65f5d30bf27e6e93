"""``bench/compression.py --space width`` (issue 32): DAP vs the greedy width derivation. The
figures and the grouping of the sweep's runs are checked on fake summaries; the sweep's
configs are only planned (the real runs take hours: the lead runs the bench)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, bench_module

from simulations.sweep import plan

REQUIRED = {"width_greedy_acc_mean", "width_greedy_acc_std", "width_dap_acc_mean",
            "width_dap_acc_std", "width_dap_params_ratio", "width_greedy_params_ratio",
            "width_dap_after_distillation_acc_mean", "width_same_size_acc_mean",
            "width_teacher_acc_mean", "width_all_within_budget", "width_dap_ge_greedy",
            "seeds", "wall_s"}


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # compression.py imports _common
    return bench_module("compression")


def summary(seed: int, distilled: float, params: int, *, same_size_ok: bool = True,
            wall: float = 100.0) -> dict:
    def model(acc: float, n: int = params, ok: bool = True) -> dict:
        return {"test_acc": acc, "params": n, "within_budget": ok}

    return {"seed": seed, "rounds": 3, "timings": {"search": wall / 2, "compress": wall / 2},
            "models": {"distilled": {**model(distilled),
                                     "after_distillation_acc": distilled - 0.05},
                       "same_size": model(distilled - 0.02, ok=same_size_ok),
                       "searched": model(0.85, 300_000), "baseline": model(0.84, 400_000),
                       "pruned": model(0.83, 200_000)}}


def test_width_figures_keys_and_dap_ge_greedy(bench):
    greedy = [summary(0, 0.80, 200_000), summary(1, 0.82, 180_000)]
    dap = [summary(0, 0.83, 210_000, wall=50.0), summary(1, 0.81, 190_000, wall=50.0)]
    out = bench.width_figures(greedy, dap)
    assert REQUIRED <= set(out)
    assert out["width_greedy_acc_mean"] == 81.0 and out["width_dap_acc_mean"] == 82.0
    assert out["width_greedy_acc_std"] == pytest.approx(1.41, abs=0.01)
    assert out["width_greedy_params_ratio"] == 0.475 and out["width_dap_params_ratio"] == 0.5
    assert out["width_dap_after_distillation_acc_mean"] == 77.0
    assert out["width_same_size_acc_mean"] == 79.0  # the greedy point's same-size
    assert out["width_teacher_acc_mean"] == 85.0
    assert out["width_all_within_budget"] is True and out["width_dap_ge_greedy"] is True
    assert out["seeds"] == [0, 1] and out["wall_s"] == 150.0  # both runs of a seed

    worse = [summary(0, 0.79, 150_000, same_size_ok=False), summary(1, 0.80, 150_000)]
    out = bench.width_figures(greedy, worse)
    assert out["width_dap_ge_greedy"] is False and out["width_all_within_budget"] is False
    with pytest.raises(ValueError, match="same seeds"):
        bench.width_figures(greedy, worse[:1] + [summary(2, 0.8, 1)])


def test_width_arm_splits_the_sweep_by_selection(bench, monkeypatch, tmp_path, capsys):
    """Runs are told apart by the grid value of sweep.json, not by their order; the figures
    need only the summaries (the records kept in git)."""
    runs = []
    for point, selection in reversed(list(enumerate(bench.SELECTIONS))):
        for seed in (0, 1):
            acc = 0.8 + 0.01 * seed + 0.02 * (selection == "dap")
            runs.append({"point": point, "seed": seed,
                         "values": {"compression.selection": f'"{selection}"'},
                         "summary": summary(seed, acc, 200_000)})
    seen = {}

    def fake_sweep(name, scenario, overrides, grid, seeds, out_dir):
        seen.update(scenario=scenario, overrides=overrides, grid=grid, out_dir=out_dir)
        return tmp_path, runs

    monkeypatch.setattr(bench, "sweep", fake_sweep)
    monkeypatch.setattr(sys, "argv", ["compression.py", "--space", "width", "--seeds", "0,1",
                                      "--set", "federation.rounds=1"])
    bench.main()
    out = json.loads(capsys.readouterr().out)
    assert out["width_dap_acc_mean"] == 82.5 and out["width_greedy_acc_mean"] == 80.5
    assert out["width_dap_ge_greedy"] is True and out["seeds"] == [0, 1]
    assert seen["scenario"] == "compress_fashion" and seen["grid"] == bench.GRID
    assert seen["overrides"] == [*bench.WIDTH, "federation.rounds=1"]
    assert seen["out_dir"] == str(REPO / "bench" / "results" / "compression_width")


def test_width_arm_configs_load_for_both_selections(bench, tmp_path):
    """Both grid points validate (width space, DAP's constraints, the budget) and share
    everything but the selection."""
    root, runs, _ = plan(REPO / "simulations" / "compress_fashion.toml",
                         ["runtime.progress=false", *bench.WIDTH], bench.GRID, [0, 1],
                         str(tmp_path))
    assert [(r.point, r.seed, r.values["compression.selection"]) for r in runs] == [
        (0, 0, '"alpha"'), (0, 1, '"alpha"'), (1, 0, '"dap"'), (1, 1, '"dap"')]
    assert root.parent == tmp_path


def test_cell_arm_sweeps_compress_fashion_as_before(bench, monkeypatch):
    """A plain ``python bench/compression.py`` asks for the same sweep as before the width
    arm (same scenario, overrides, no grid, seeds, out dir: the same sweep dir)."""
    import _common

    calls = []

    def fake_run_sweep(*args, **kwargs):
        calls.append((args, kwargs))
        raise SystemExit(0)

    monkeypatch.setattr(_common, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(sys, "argv", ["compression.py"])
    with pytest.raises(SystemExit):
        bench.main()
    assert calls == [((REPO / "simulations" / "compress_fashion.toml",
                       ["runtime.progress=false"], [], [0, 1, 2]), {"out_dir": "runs/bench"})]
