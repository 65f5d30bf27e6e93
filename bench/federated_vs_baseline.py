"""Federated searched subnet vs a FedAvg-trained hand-designed CNN, same rounds, several seeds.

Runs ``simulations/federated_fashion.toml`` (Fashion-MNIST, 10 clients, Dirichlet 0.5,
half-size shards) once per seed, each in its own process, and prints one JSON line with the
test accuracy (mean ± std over seeds) and size of both models.

Usage: ``python bench/federated_vs_baseline.py [--seeds 0,1] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCENARIO = "simulations/federated_fashion.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"seed{seed}"
            sets = [a for o in [f"seed={seed}", "runtime.progress=false", *args.overrides]
                    for a in ("--set", o)]
            proc = subprocess.run([sys.executable, "-m", "fednas", "run", SCENARIO, *sets,
                                   "--out-dir", str(out)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
            (run_dir,) = list(out.iterdir())
            results.append(json.loads((run_dir / "summary.json").read_text()))

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
    }))


if __name__ == "__main__":
    main()
