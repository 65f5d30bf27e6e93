"""Searched vs size-matched random architectures vs the hand-designed CNN, over seeds.

Workload (defaults): ``simulations/federated_fashion.toml`` (Fashion-MNIST, 10 clients,
Dirichlet 0.5, FedNAS with shards), every model given the same total FedAvg rounds on the
same partitions (``retrain.protocol = "equal-total"``: the subnets, which inherit the
supernet's weights, train ``federation.subnet-rounds``; the CNN, from scratch, the search's
rounds + ``subnet-rounds``). Per seed:

* **searched**: the search's subnet (run A: ``search, retrain, random, baseline``);
* **random**: ``--random-draws`` architectures of the same space, each within
  ``--tolerance`` of the searched subnet's params (``[random] params-tolerance``, draws
  0..n-1: draw 0 in run A, the others in runs B of ``search, random``, whose search repeats
  run A's bit for bit) and trained exactly as the searched one (inheriting the same
  supernet's weights);
* **cnn**: the hand-designed baseline (run A).

The per-seed random accuracy is the mean over its draws; means and 95 % intervals
(Student t over seeds) are over seeds. ``searched_beats_random`` is true when the searched
mean exceeds the random mean by more than both half-widths (the intervals do not overlap;
always false with one seed, which has no interval). Because a seed fixes the partitions and
the supernet that the searched and the random subnets share, the line also gives the paired
gap (searched minus the seed's random mean; mean and 95 % interval over seeds,
``paired_gap_mean`` / ``paired_gap_ci95``) and ``searched_beats_all_draws`` (seeds at which
the searched subnet beats every draw).
``alpha_entropy_final`` is the mean entropy of softmax(α) over edges after the last search
round (nats), beside the uniform ``ln k``.

Prints one JSON line. Runs go through the sweep runner, one sweep per seed (run A, then the
runs B), their records kept under ``--out-dir`` (default ``bench/results/search_vs_random``):
a rerun reuses finished runs and prints the same line, and a run with more seeds (or a
single ``--seeds 0`` first) reuses the seeds already finished.

Usage: ``python bench/search_vs_random.py [--seeds 0,1,2,3,4] [--random-draws 5]
[--tolerance 0.15] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from _common import finished_runs
from scipy import stats

from simulations.sweep import parse_seeds, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "federated_fashion.toml"
QUIET = ["runtime.progress=false", "federation.checkpoint-every=0"]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(
        len(values))
    return mean, float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results" /
                                                 "search_vs_random"))
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    matched = [f"random.params-tolerance={args.tolerance}", *QUIET, *args.overrides]
    runs_a: list[dict] = []
    runs_b: list[dict] = []
    draws = ",".join(str(d) for d in range(1, args.random_draws))
    for seed in seeds:  # one sweep per seed and kind: a rerun with other seeds reuses these
        root_a, _ = run_sweep(SCENARIO, ['phases=["search", "retrain", "random", "baseline"]',
                                         "random.draw=0", *matched], [], [seed],
                              out_dir=args.out_dir)
        runs_a += finished_runs("search_vs_random", root_a)
        if args.random_draws > 1:
            root_b, _ = run_sweep(SCENARIO, ['phases=["search", "random"]', *matched],
                                  [f"random.draw={draws}"], [seed], out_dir=args.out_dir)
            runs_b += finished_runs("search_vs_random", root_b)
    print(json.dumps(summarise(runs_a, runs_b, seeds, args.random_draws, args.tolerance)))


def summarise(runs_a: list[dict], runs_b: list[dict], seeds: list[int], draws: int,
              tolerance: float) -> dict:
    """The JSON line from the finished runs (``collect`` records of runs A and B)."""
    acc: dict[str, dict] = {"searched": {}, "cnn": {}, "random": {s: [] for s in seeds}}
    entropy, uniform, walls = [], 0.0, {s: 0.0 for s in seeds}
    params: dict[str, dict] = {"searched": {}, "random": {s: [] for s in seeds}}
    for run in runs_a:
        seed, summary = run["seed"], run["summary"]
        acc["searched"][seed] = 100 * summary["models"]["searched"]["test_acc"]
        acc["cnn"][seed] = 100 * summary["models"]["baseline"]["test_acc"]
        acc["random"][seed].append(100 * summary["models"]["random"]["test_acc"])
        params["searched"][seed] = summary["models"]["searched"]["params"]
        params["random"][seed].append(summary["models"]["random"]["params"])
        walls[seed] += sum(summary["timings"].values())
        search = [m for m in run["metrics"] if m["phase"] == "search"]
        entropy.append(search[-1]["alpha_entropy"])
        k = len(next(iter(search[-1]["alpha"].values()))[0])
        uniform = math.log(k)
    for run in runs_b:
        acc["random"][run["seed"]].append(100 * run["summary"]["models"]["random"]["test_acc"])
        params["random"][run["seed"]].append(run["summary"]["models"]["random"]["params"])
        walls[run["seed"]] += sum(run["summary"]["timings"].values())
    random_mean = {s: statistics.fmean(v) for s, v in acc["random"].items() if v}
    figures = {}
    for name, values in (("searched", list(acc["searched"].values())),
                         ("random", list(random_mean.values())),
                         ("cnn", list(acc["cnn"].values()))):
        mean, half = mean_ci95(values)
        figures[f"{name}_acc_mean"], figures[f"{name}_acc_ci95"] = round(mean, 2), round(half, 2)
    gap = figures["searched_acc_mean"] - figures["random_acc_mean"]
    # paired by seed (same partitions and supernet): the seed-to-seed spread cancels
    paired, paired_half = mean_ci95([acc["searched"][s] - random_mean[s] for s in seeds])
    return {
        **figures,
        "alpha_entropy_final": round(statistics.fmean(entropy), 5),
        "alpha_entropy_uniform": round(uniform, 5),
        "searched_beats_random": bool(len(seeds) > 1 and gap > figures["searched_acc_ci95"]
                                      and gap > figures["random_acc_ci95"]),  # no CI at 1 seed
        "paired_gap_mean": round(paired, 2), "paired_gap_ci95": round(paired_half, 2),
        "searched_beats_all_draws": sum(acc["searched"][s] > max(acc["random"][s])
                                        for s in seeds),
        # the draws' mean params ÷ the searched subnet's, averaged over seeds (1 = no bias)
        "random_params_ratio": round(statistics.fmean(
            statistics.fmean(params["random"][s]) / params["searched"][s] for s in seeds), 4),
        "seeds": len(seeds), "random_per_seed": draws, "params_tolerance": tolerance,
        "search_rounds": int(runs_a[0]["summary"]["rounds"]["search"]),
        "wall_s_per_seed": round(statistics.fmean(walls.values()), 1),
    }


if __name__ == "__main__":
    main()
