"""Federated searched subnet vs a FedAvg-trained hand-designed CNN, same rounds, several seeds.

Runs ``simulations/federated_fashion.toml`` (Fashion-MNIST, 10 clients, Dirichlet 0.5,
half-size shards) once per seed through the sweep runner (``fednas sweep``: resumable, one
process per run, kept under ``--out-dir``) and prints one JSON line with the test accuracy
(mean ± std over seeds) and size of both models; ``fednas report SWEEP_DIR`` gives the CI
table and plots of the same runs.

Usage: ``python bench/federated_vs_baseline.py [--seeds 0,1] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import json
import statistics

from _common import sweep_summaries


def main() -> None:
    root, results = sweep_summaries("federated_vs_baseline", "federated_fashion", __doc__,
                                    seeds="0,1")
    seeds = [r["seed"] for r in results]

    def stat(model: str, key: str) -> list[float]:
        return [r["models"][model][key] for r in results]

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    searched, baseline = stat("searched", "test_acc"), stat("baseline", "test_acc")
    print(json.dumps({
        "searched_acc_mean": round(100 * statistics.mean(searched), 2),
        "searched_acc_std": round(100 * sd(searched), 2),
        "baseline_acc_mean": round(100 * statistics.mean(baseline), 2),
        "baseline_acc_std": round(100 * sd(baseline), 2),
        "searched_params": stat("searched", "params")[0],
        "baseline_params": stat("baseline", "params")[0],
        "searched_flops": stat("searched", "flops")[0],
        "baseline_flops": stat("baseline", "flops")[0],
        "rounds": results[0]["rounds"], "seeds": seeds,
        "searched_ge_baseline": statistics.mean(searched) >= statistics.mean(baseline),
        "wall_s_mean": round(statistics.mean(sum(r["timings"].values()) for r in results), 1),
        "sweep_dir": str(root),
    }))


if __name__ == "__main__":
    main()
