"""Heterogeneous devices: fednas's per-tier models vs HeteroFL, smallest-for-all and each
tier alone, at equal rounds, over several seeds (issue 31).

Runs ``simulations/hetero_fashion.toml`` (Fashion-MNIST, 10 clients, Dirichlet 0.5, three
tiers at 30/55/100 % of the widest subnet's FLOPs, speeds 0.25/0.5/1) once per seed through
the sweep runner (resumable, one process per run; records kept under ``--out-dir``, default
``bench/results/hetero``: a plain rerun reuses the finished runs and prints the same line)
and prints one JSON line. Per tier ``t`` (0 = the smallest device): test accuracy (%, whole
test split) mean and std of ``fednas_t{t}`` (the tier's derived, distilled, fine-tuned
model), ``heterofl_t{t}`` and ``alone_t{t}``; ``smallest_for_all``; whether every model met
its tier's budget; whether fednas ≥ HeteroFL on every tier's mean and by how many points on
the average over tiers. Equal rounds: every model gets search + fine-tune rounds
(``simulations/hetero_phases.py``). Time: ``*_sim_time_s_mean`` is the straggler clock's
simulated seconds of all the rounds that trained the model, and
``*_time_to_<target>_s_mean`` the simulated seconds until its per-round server accuracy
(``federation.server-eval-samples`` test images) first reached ``--target`` (null unless
every seed reached it; fednas's curve starts with its tier's fine-tuning, after the whole
search). ``fednas report DIR`` draws the same runs' models, tiers labelled, on the Pareto plot.

Usage: ``python bench/hetero.py [--seeds 0,1,2] [--quick] [--target 0.8] [--set KEY=VALUE ...]
[--out-dir bench/results/hetero]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from fednas.reporting.rundir import read_metrics
from fednas.reporting.sweep_report import collect
from simulations.sweep import parse_seeds, run_sweep

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "hetero"
QUICK = ["federation.rounds=2", "federation.warmup-rounds=1", "federation.local-steps=4",
         "compression.fine-tune-rounds=1", "federation.subnet-rounds=1", "compression.epochs=1",
         "data.max-train=6000", "federation.server-eval-samples=500"]


def curve(metrics: list[dict[str, Any]], phases: list[str], acc_key: str,
          offset: float = 0.0) -> list[tuple[float, float]]:
    """(cumulative simulated seconds, accuracy) per round of ``phases`` (in order)."""
    out, clock = [], offset
    for phase in phases:
        for m in (m for m in metrics if m["phase"] == phase):
            clock += m.get("sim_round_s", 0.0)
            if acc_key in m:
                out.append((clock, m[acc_key]))
    return out


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in points if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(OUT))
    parser.add_argument("--quick", action="store_true", help="a minutes-long smoke run")
    parser.add_argument("--target", type=float, default=0.8,
                        help="accuracy of the time-to-accuracy columns")
    args = parser.parse_args()
    overrides = ["runtime.progress=false", *(QUICK if args.quick else []), *args.overrides]
    root, _ = run_sweep(ROOT / "simulations" / "hetero_fashion.toml", overrides, [],
                        parse_seeds(args.seeds), out_dir=args.out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/hetero: failed runs: {failed}")
    results = [r["summary"] for r in runs]
    metrics = [read_metrics(Path(r["run_dir"])) for r in results]
    plan = json.loads((Path(results[0]["run_dir"]) / "partitions.json").read_text())["tiers"]
    names = [tier["name"] for tier in plan]  # smallest device first

    def mean(xs: list[float]) -> float:
        return round(100 * statistics.mean(xs), 2)

    def sd(xs: list[float]) -> float:
        return round(100 * statistics.stdev(xs), 2) if len(xs) > 1 else 0.0

    out: dict[str, Any] = {"tiers": names}
    gaps, ge_all = [], True
    methods = {"fednas": "tier_{}", "heterofl": "heterofl_{}", "alone": "alone_{}"}
    for t, name in enumerate(names):
        accs = {}
        for method, key in methods.items():
            entries = [r["models"][key.format(name)] for r in results]
            accs[method] = [e["test_acc"] for e in entries]
            out[f"{method}_t{t}_acc_mean"] = mean(accs[method])
            out[f"{method}_t{t}_acc_std"] = sd(accs[method])
            out[f"{method}_t{t}_flops"] = entries[0]["flops"]
            out[f"{method}_t{t}_sim_time_s_mean"] = round(statistics.mean(
                e["sim_time_s"] for e in entries), 1)
            times = []
            for m in metrics:
                if method == "fednas":
                    search = sum(x.get("sim_round_s", 0.0) for x in m if x["phase"] == "search")
                    points = curve(m, [f"tiers:{name}"], "test_acc", search)
                elif method == "heterofl":
                    points = curve(m, ["heterofl", "heterofl:tune"], f"test_acc_{name}")
                else:
                    points = curve(m, [f"alone:{name}", f"alone:{name}:tune"], "test_acc")
                times.append(time_to(points, args.target))
            out[f"{method}_t{t}_time_to_{args.target:g}_s_mean"] = (
                None if None in times else round(statistics.mean(times), 1))
        gap = statistics.mean(accs["fednas"]) - statistics.mean(accs["heterofl"])
        gaps.append(100 * gap)
        ge_all = ge_all and gap >= 0
    smallest = [r["models"]["smallest_for_all"]["test_acc"] for r in results]
    budgeted = [e for r in results for k, e in r["models"].items()
                if k.startswith(("tier_", "heterofl_", "alone_", "smallest_for_all"))]
    out.update({
        "smallest_for_all_acc_mean": mean(smallest), "smallest_for_all_acc_std": sd(smallest),
        "smallest_for_all_sim_time_s_mean": round(statistics.mean(
            r["models"]["smallest_for_all"]["sim_time_s"] for r in results), 1),
        "all_within_budget": all(e["within_budget"] for e in budgeted),
        "fednas_ge_heterofl_all_tiers": ge_all,
        "fednas_minus_heterofl_avg_pts": round(statistics.mean(gaps), 2),
        "fednas_ge_heterofl_by_1pt_avg": statistics.mean(gaps) >= 1.0,
        "rounds_per_model": results[0]["models"][f"tier_{names[0]}"]["rounds_total"],
        "seeds": [r["seed"] for r in results],
        "wall_s_mean": round(statistics.mean(sum(r["timings"].values()) for r in results), 1),
        "sweep_dir": str(root),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
