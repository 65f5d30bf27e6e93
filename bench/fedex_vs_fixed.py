"""FedEx vs fixed default HPs vs random search, same total round budget, several seeds.

Federated FedAvg training of the hand-designed CNN on Fashion-MNIST, Dirichlet(0.5), 10
clients (phase ``baseline`` of ``simulations/fedex_fashion.toml``), tuning the clients'
local lr / momentum / weight decay:

* **fedex**: one run of ``budget`` rounds with FedEx sampling each client's HPs;
* **fixed**: one run of ``budget`` rounds with the scenario's default HPs;
* **random**: ``n`` runs of ``budget / n`` rounds, HPs drawn from the same ranges; the one
  with the best final client-validation accuracy is reported (its test accuracy).

Prints one JSON line (accuracies in %): ``fedex_acc_mean``, ``fedex_acc_std``,
``fixed_acc_mean``, ``fixed_acc_std``, ``random_acc_mean``, ``random_acc_std``,
``fedex_rounds_to_fixed_final`` (mean first round where FedEx's test accuracy reaches the
fixed run's final one; null if never), ``budget_rounds``.

Every run goes through the sweep runner (``fednas sweep``; kept under ``--out-dir``, so an
interrupted benchmark continues where it stopped and ``fednas report`` can tabulate it).

Usage: ``python bench/fedex_vs_fixed.py [--seeds 0,1,2] [--budget 12] [--random-configs 4]
[--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from fednas.config.loading import load_config
from fednas.reporting.sweep_report import collect
from fednas.tuning.fedex_space import centre_and_perturbations
from simulations.sweep import run_sweep

SCENARIO = Path(__file__).parents[1] / "simulations" / "fedex_fashion.toml"
BASE = ['phases=["baseline"]', "federation.fraction-evaluate=1.0",
        "federation.server-eval-samples=0", "federation.checkpoint-every=0",
        "runtime.progress=false"]


def run(overrides: list[str], seed: int, out_dir: str) -> tuple[dict, list[dict]]:
    """One run through the sweep runner (resumable: a finished run is not repeated)."""
    root, _ = run_sweep(SCENARIO, BASE + overrides, [], [seed], out_dir=out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"run failed ({overrides}, seed {seed}): {failed}")
    return runs[0]["summary"], runs[0]["metrics"]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return (round(100 * statistics.mean(xs), 2),
            round(100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=12, help="rounds per method")
    parser.add_argument("--random-configs", type=int, default=4)
    parser.add_argument("--out-dir", default="runs/bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra override for every run (e.g. a quick check on digits)")
    args = parser.parse_args()
    BASE.extend(args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(SCENARIO, args.overrides)
    ranges = cfg.fedex.hp_ranges(("lr", "momentum", "weight-decay"))
    keys = {"lr": "retrain.lr", "momentum": "retrain.momentum",
            "weight-decay": "retrain.weight-decay"}
    rounds = f"federation.subnet-rounds={args.budget}"
    fedex, fixed, rand, to_target = [], [], [], []
    for seed in seeds:
        fx, fx_metrics = run([rounds, "fedex.enabled=true"], seed, args.out_dir)
        fd, _ = run([rounds, "fedex.enabled=false"], seed, args.out_dir)
        fedex.append(fx["models"]["baseline"]["test_acc"])
        fixed.append(fd["models"]["baseline"]["test_acc"])
        hits = [m["step"] for m in fx_metrics if m["test_acc"] >= fixed[-1]]
        to_target.append(hits[0] if hits else None)
        centre = {"lr": cfg.retrain.lr, "momentum": cfg.retrain.momentum,
                  "weight-decay": cfg.retrain.weight_decay}
        configs = centre_and_perturbations(centre, ranges, args.random_configs + 1,
                                           np.random.default_rng(1000 + seed), 1.0)[1:]
        per = max(1, args.budget // args.random_configs)
        best = None
        for hp in configs:
            sets = [f"federation.subnet-rounds={per}", "fedex.enabled=false",
                    *(f"{keys[k]}={v}" for k, v in hp.items())]
            summary, metrics = run(sets, seed, args.out_dir)
            val = metrics[-1].get("client_val_acc", 0.0)
            if best is None or val > best[0]:
                best = (val, summary["models"]["baseline"]["test_acc"])
        rand.append(best[1])
    reached = [r for r in to_target if r is not None]
    out = {"budget_rounds": args.budget, "seeds": seeds,
           "fedex_rounds_to_fixed_final": (round(statistics.mean(reached), 2) if reached
                                           else None),
           "fedex_reached_fixed_final": f"{len(reached)}/{len(to_target)}"}
    for name, xs in (("fedex", fedex), ("fixed", fixed), ("random", rand)):
        out[f"{name}_acc_mean"], out[f"{name}_acc_std"] = mean_sd(xs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
