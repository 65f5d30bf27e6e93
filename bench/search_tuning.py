"""Search settings chosen on validation data: the searched subnet vs a size-matched random one,
scored by the clients' validation accuracy, per grid point of search settings.

Workload (defaults): ``simulations/federated_fashion.toml`` (``make run``'s scenario) with
phases ``search, retrain, random`` and ``federation.fraction-evaluate = 0.5``, so that after
every training round half the clients evaluate the global model on their own validation
split (``client_val_acc``); the test split is never read for the choice. Per grid point and
seed: the searched subnet and random draw 0 (within ±15 % of its params,
``random.params-tolerance``, as in ``bench/search_vs_random.py``), both inheriting the
supernet's weights and trained the same ``subnet-rounds``.
The score of a run is its validation gap: the last ``retrain`` round's ``client_val_acc``
minus the last ``random`` round's. The default seeds (100, 101) are not those of
``bench/search_vs_random.py`` (0–4), whose test figures therefore stay a held-out check.

Default grid: ``search.arch-lr`` 1e-2 / 3e-2 / 1e-1 × ``federation.warmup-rounds`` 0 / 1
(``--grid KEY=V1,V2`` replaces it; any config key may be an axis, e.g.
``space.cell.partial-channels``, ``space.cell.edge-normalisation`` or
``search.arch-lr-schedule``).

Prints one JSON line: per point (``points``) the mean validation gap in points, the mean
searched and random validation accuracy, the mean of α's max softmax ÷ uniform, and the
seeds; ``best`` (the point with the largest mean gap; ties to the larger searched
accuracy); ``seeds``; ``wall_s``. Runs go through the sweep runner and are kept under
``--out-dir`` (default ``bench/results/search_tuning``): a rerun reuses them.

Usage: ``python bench/search_tuning.py [--seeds 100,101] [--grid KEY=V1,V2 ...]
[--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import finished_runs

from simulations.sweep import parse_seeds, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "federated_fashion.toml"
GRID = ["search.arch-lr=1e-2,3e-2,1e-1", "federation.warmup-rounds=0,1"]
SETS = ['phases=["search", "retrain", "random"]', "random.draw=0",
        "random.params-tolerance=0.15", "federation.fraction-evaluate=0.5",
        "runtime.progress=false", "federation.checkpoint-every=0"]


def last_val_acc(metrics: list[dict], phase: str) -> float:
    """The last round's ``client_val_acc`` of ``phase`` (a KeyError names a run without it)."""
    rows = [m for m in metrics if m.get("phase") == phase and "client_val_acc" in m]
    if not rows:
        raise KeyError(f"no client_val_acc in phase {phase!r} (federation.fraction-evaluate "
                       "must be > 0)")
    return float(rows[-1]["client_val_acc"])


def summarise(runs: list[dict]) -> dict:
    """The JSON line from the sweep's finished runs (``collect`` records)."""
    points: dict[str, dict[str, list]] = {}
    for run in runs:
        searched = 100 * last_val_acc(run["metrics"], "retrain")
        random = 100 * last_val_acc(run["metrics"], "random")
        point = points.setdefault(run["group"], {"gap": [], "searched": [], "random": [],
                                                 "alpha": [], "seeds": []})
        point["gap"].append(searched - random)
        point["searched"].append(searched)
        point["random"].append(random)
        point["alpha"].append(run["summary"].get("alpha", {}).get("max_softmax_ratio", 0.0))
        point["seeds"].append(run["seed"])
    table = {name: {"val_gap_mean": round(statistics.fmean(p["gap"]), 2),
                    "searched_val_acc_mean": round(statistics.fmean(p["searched"]), 2),
                    "random_val_acc_mean": round(statistics.fmean(p["random"]), 2),
                    "alpha_max_ratio_mean": round(statistics.fmean(p["alpha"]), 3),
                    "seeds": sorted(p["seeds"])} for name, p in sorted(points.items())}
    best = max(table, key=lambda n: (table[n]["val_gap_mean"],
                                     table[n]["searched_val_acc_mean"]))
    return {"points": table, "best": best,
            "seeds": sorted({s for p in table.values() for s in p["seeds"]}),
            "wall_s": round(sum(r["wall_s"] for r in runs), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="100,101")
    parser.add_argument("--grid", action="append", default=None,
                        help=f"KEY=V1,V2 (default: {' '.join(GRID)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "search_tuning"))
    args = parser.parse_args()
    root, _ = run_sweep(SCENARIO, [*SETS, *args.overrides], args.grid or GRID,
                        parse_seeds(args.seeds), out_dir=args.out_dir)
    print(json.dumps(summarise(finished_runs("search_tuning", root))))


if __name__ == "__main__":
    main()
