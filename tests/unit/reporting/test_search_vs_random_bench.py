"""``bench/search_vs_random.py`` (issue 29.2): the JSON line from fake finished runs, against
figures computed by hand (the real runs take ~25 minutes per seed: the lead runs the bench)."""

from __future__ import annotations

import math

import pytest
from conftest import bench_module

UNIFORM_ALPHA = {"normal": [[0.2] * 5, [0.2] * 5]}


@pytest.fixture
def bench():
    return bench_module("search_vs_random")


def run_a(seed: int, searched: float, random: float, cnn: float, entropy: float) -> dict:
    return {"seed": seed, "summary": {
        "models": {"searched": {"test_acc": searched, "params": 100},
                   "random": {"test_acc": random, "params": 90 + 20 * seed},
                   "baseline": {"test_acc": cnn}},
        "timings": {"search": 100.0, "retrain": 50.0}, "rounds": {"search": 3}},
        "metrics": [{"phase": "search", "alpha_entropy": 9.0, "alpha": UNIFORM_ALPHA},
                    {"phase": "search", "alpha_entropy": entropy, "alpha": UNIFORM_ALPHA},
                    {"phase": "retrain"}]}


def run_b(seed: int, random: float) -> dict:
    return {"seed": seed, "summary": {"models": {"random": {"test_acc": random, "params": 120}},
                                      "timings": {"search": 100.0, "random": 50.0}}}


def test_the_line_from_hand_computed_figures(bench):
    """Two seeds, two draws each. Seed 0: searched 0.86, draws 0.84 / 0.85 (mean 0.845);
    seed 1: searched 0.83, draws 0.80 / 0.82 (mean 0.81). t(0.975, 1) = 12.706."""
    runs_a = [run_a(0, 0.86, 0.84, 0.87, 1.5), run_a(1, 0.83, 0.80, 0.85, 1.3)]
    runs_b = [run_b(0, 0.85), run_b(1, 0.82)]
    line = bench.summarise(runs_a, runs_b, [0, 1], 2, 0.15)
    t = 12.7062047
    assert line["searched_acc_mean"] == pytest.approx(84.5)
    assert line["searched_acc_ci95"] == pytest.approx(round(t * 1.5, 2))  # sd 3/√2, ÷ √2
    assert line["random_acc_mean"] == pytest.approx(82.75)
    assert line["random_acc_ci95"] == pytest.approx(round(t * 1.75, 2))
    assert line["cnn_acc_mean"] == pytest.approx(86.0)
    # paired gaps 1.5 and 2.0 points: mean 1.75, half-width t · 0.25
    assert line["paired_gap_mean"] == pytest.approx(1.75)
    assert line["paired_gap_ci95"] == pytest.approx(round(t * 0.25, 2))
    assert line["searched_beats_all_draws"] == 2
    assert line["searched_beats_random"] is False  # gap 1.75 < both half-widths
    assert line["alpha_entropy_final"] == pytest.approx(1.4)  # the last search round's
    assert line["alpha_entropy_uniform"] == pytest.approx(math.log(5), abs=1e-5)
    assert line["wall_s_per_seed"] == pytest.approx(300.0)
    # draws of 90 and 120 params (seed 0), 110 and 120 (seed 1) vs 100 searched
    assert line["random_params_ratio"] == pytest.approx(1.1)
    assert (line["seeds"], line["random_per_seed"], line["search_rounds"]) == (2, 2, 3)


def test_separated_intervals_beat_random_and_one_seed_never_does(bench):
    runs_a = [run_a(s, 0.90 + 0.001 * s, 0.80, 0.85, 1.0) for s in range(3)]
    runs_b = [run_b(s, 0.80 + 0.001 * s) for s in range(3)]
    line = bench.summarise(runs_a, runs_b, [0, 1, 2], 2, 0.15)
    assert line["searched_beats_random"] is True
    assert line["searched_beats_all_draws"] == 3
    one = bench.summarise(runs_a[:1], runs_b[:1], [0], 2, 0.15)
    assert one["searched_beats_random"] is False and one["searched_acc_ci95"] == 0.0
    worse = [run_a(s, 0.80, 0.84, 0.85, 1.0) for s in range(3)]
    line = bench.summarise(worse, runs_b, [0, 1, 2], 2, 0.15)
    assert line["searched_beats_random"] is False and line["searched_beats_all_draws"] == 0
    assert line["paired_gap_mean"] < 0
