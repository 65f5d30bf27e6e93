"""Cost and utility of central DP: round time and test accuracy at ε ≈ 6 vs no DP.

Runs ``simulations/dp_fashion.toml`` (federated search + subnet training, Fashion-MNIST,
Dirichlet(0.5)) through the sweep runner for every seed, once without DP and once with the
noise multiplier that reaches ε ≈ ``--eps`` (δ = 1e-5) after all rounds at the scenario's
sampling rate (``fednas.privacy.noise_multiplier_for``). Prints one JSON line:

``dp_time_ratio``  mean round time with DP ÷ without (``train_wall_s``: clients + aggregation)
``acc_no_dp_mean``, ``acc_no_dp_std``, ``acc_dp_eps6_mean``, ``acc_dp_eps6_std`` (%)
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

from fednas.config import load_config
from fednas.privacy import noise_multiplier_for
from fednas.sweep import parse_seeds, run_sweep
from fednas.sweep_report import collect

SCENARIO = Path(__file__).parents[1] / "simulations" / "dp_fashion.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eps", type=float, default=6.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default="runs/bench")
    args = parser.parse_args()
    cfg = load_config(SCENARIO, args.overrides)
    f, n = cfg.federation, cfg.partition.num_clients
    per_round = min(n, max(int(n * f.fraction_train), f.min_fit_clients, 1))
    rounds = f.rounds * ("search" in cfg.phases) + f.subnet_rounds * ("retrain" in cfg.phases)
    sigma = noise_multiplier_for(args.eps, cfg.privacy.delta, per_round / n, rounds)
    overrides = [*args.overrides, "runtime.progress=false", "privacy.epsilon-budget=0",
                 f"privacy.noise-multiplier={sigma:.6g}"]
    root, manifest = run_sweep(SCENARIO, overrides, ["privacy.mode=off,central"],
                               parse_seeds(args.seeds), out_dir=args.out_dir)
    runs, failed = collect([root])
    if failed:
        sys.exit(f"bench/privacy: failed runs: {failed}")
    acc: dict[str, list[float]] = {"off": [], "central": []}
    wall: dict[str, list[float]] = {"off": [], "central": []}
    eps = []
    for run in runs:
        mode = run["group"].split("=")[-1]
        acc[mode].append(100 * run["summary"]["models"]["searched"]["test_acc"])
        wall[mode] += [m["train_wall_s"] for m in run["metrics"] if "train_wall_s" in m]
        if mode == "central":
            eps.append(run["summary"]["privacy"]["epsilon"])

    def sd(xs: list[float]) -> float:
        return round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0

    print(json.dumps({
        "dp_time_ratio": round(statistics.fmean(wall["central"]) / statistics.fmean(wall["off"]),
                               3),
        "acc_no_dp_mean": round(statistics.fmean(acc["off"]), 2), "acc_no_dp_std": sd(acc["off"]),
        "acc_dp_eps6_mean": round(statistics.fmean(acc["central"]), 2),
        "acc_dp_eps6_std": sd(acc["central"]), "eps": round(statistics.fmean(eps), 3),
        "noise_multiplier": round(sigma, 4), "delta": cfg.privacy.delta,
        "sample_rate": per_round / n, "rounds": rounds, "seeds": args.seeds,
        "sweep_dir": str(root)}))


if __name__ == "__main__":
    main()
