"""Cost and utility of central DP: round time and test accuracy at ε ≈ 6 vs no DP.

Runs ``simulations/dp_fashion.toml`` (federated search + subnet training, Fashion-MNIST,
2000 clients, Dirichlet(1.0), 400 per round) through the sweep runner for every seed, once
without DP and once with the noise multiplier that reaches ε ≈ ``--eps`` (δ = 1e-5) after all
rounds at the scenario's sampling rate (``fednas.privacy.mechanism.noise_multiplier_for``). The two
modes run one after the other, seed by seed, each with the whole machine (side by side, two
runs of two Ray workers each on 2 cores lost 30-50 % of their round time to contention), so
run it on an otherwise idle machine. Each seed is its own sweep, so a rerun with more seeds
(same ``--out-dir``) reuses the seeds already finished.
Prints one JSON line:

``dp_time_ratio``  mean round time with DP ÷ without (``train_wall_s``: clients + aggregation)
``dp_agg_overhead_s``  mean server aggregation seconds per round (``agg_wall_s``) with DP
                   (clipping, noise, accountant) minus without: the cost DP itself adds
``dp_time_ratio_attributed``  1 + that overhead ÷ the mean round time without DP
``acc_no_dp_mean``, ``acc_no_dp_std``, ``acc_dp_eps6_mean``, ``acc_dp_eps6_std`` (%)
``acc_drop_mean``  mean over seeds of (no DP − DP); ``acc_no_dp``, ``acc_dp_eps6`` per seed
``seed_wall_min``  minutes a seed takes (both runs' data loading, search and training),
                   mean over seeds
``eps``            the ε reached (mean over seeds), ``noise_multiplier``, ``seeds``

Usage: ``python bench/privacy.py [--seeds 0,1,2] [--eps 6] [--set KEY=VALUE ...]``
(``--set`` goes to every run, e.g. ``--set data.dataset=digits`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fednas.config.loading import load_config
from fednas.privacy.mechanism import noise_multiplier_for
from fednas.reporting.sweep_report import collect
from simulations.sweep import parse_seeds, run_sweep

SCENARIO = Path(__file__).parents[1] / "simulations" / "dp_fashion.toml"
MODES = ("off", "central")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eps", type=float, default=6.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"
                                                  / "privacy"))
    args = parser.parse_args()
    cfg = load_config(SCENARIO, args.overrides)
    f, n = cfg.federation, cfg.partition.num_clients
    per_round = min(n, max(int(n * f.fraction_train), f.min_fit_clients, 1))
    rounds = f.rounds * ("search" in cfg.phases) + f.subnet_rounds * ("retrain" in cfg.phases)
    sigma = noise_multiplier_for(args.eps, cfg.privacy.delta, per_round / n, rounds)
    overrides = [*args.overrides, "runtime.progress=false", "privacy.epsilon-budget=0",
                 f"privacy.noise-multiplier={sigma:.6g}"]
    seeds = parse_seeds(args.seeds)

    def sweep(mode: str, seed: int) -> Path:
        return run_sweep(SCENARIO, [*overrides, f"privacy.mode={mode}"], [], [seed],
                         out_dir=args.out_dir, parallel=1)[0]

    # one sweep per seed and mode (a rerun with more seeds finds the finished ones again)
    roots: dict[str, list[Path]] = {m: [] for m in MODES}
    for seed in seeds:
        for mode in MODES:
            roots[mode].append(sweep(mode, seed))
    acc: dict[str, dict[int, float]] = {m: {} for m in MODES}
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    agg: dict[str, list[float]] = {m: [] for m in MODES}
    eps = []
    minutes: dict[int, list[float]] = {s: [] for s in seeds}  # each mode's run, per seed
    for mode, dirs in roots.items():
        runs, failed = collect(dirs)
        if failed:
            sys.exit(f"bench/privacy: failed runs ({mode}): {failed}")
        for run in runs:
            acc[mode][run["seed"]] = 100 * run["summary"]["models"]["searched"]["test_acc"]
            rounds_ = [m for m in run["metrics"] if "train_wall_s" in m]
            wall[mode] += [m["train_wall_s"] for m in rounds_]
            agg[mode] += [m["agg_wall_s"] for m in rounds_ if "agg_wall_s" in m]
            minutes[run["seed"]].append(sum(run["summary"]["timings"].values()) / 60)
            if mode == "central":
                eps.append(run["summary"]["privacy"]["epsilon"])
    overhead = statistics.fmean(agg["central"]) - statistics.fmean(agg["off"])

    def sd(xs: list[float]) -> float:
        return round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0

    print(json.dumps({
        "dp_time_ratio": round(statistics.fmean(wall["central"]) / statistics.fmean(wall["off"]),
                               3),
        "dp_agg_overhead_s": round(overhead, 4),
        "dp_time_ratio_attributed": round(1 + overhead / statistics.fmean(wall["off"]), 4),
        "round_s_no_dp": round(statistics.fmean(wall["off"]), 2),
        "acc_no_dp_mean": round(statistics.fmean(acc["off"].values()), 2),
        "acc_no_dp_std": sd(list(acc["off"].values())),
        "acc_dp_eps6_mean": round(statistics.fmean(acc["central"].values()), 2),
        "acc_dp_eps6_std": sd(list(acc["central"].values())),
        "acc_drop_mean": round(statistics.fmean(acc["off"][s] - acc["central"][s]
                                                for s in seeds), 2),
        "acc_no_dp": [round(acc["off"][s], 2) for s in seeds],
        "acc_dp_eps6": [round(acc["central"][s], 2) for s in seeds],
        "seed_wall_min": round(statistics.fmean(sum(m) for m in minutes.values()), 1),
        "eps": round(statistics.fmean(eps), 3),
        "noise_multiplier": round(sigma, 4), "delta": cfg.privacy.delta,
        "sample_rate": per_round / n, "rounds": rounds, "seeds": args.seeds,
        "sweep_dirs": {m: [str(r) for r in dirs] for m, dirs in roots.items()}}))


if __name__ == "__main__":
    main()
