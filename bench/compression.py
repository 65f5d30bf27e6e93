"""Federated compression: the distilled model under budget vs same-size FedAvg, uniform
pruning and the uncompressed teacher, over several seeds.

Runs ``simulations/compress_fashion.toml`` (Fashion-MNIST, 10 clients, Dirichlet 0.5, budget
50 % of the hand-designed CNN's params) once per seed through the sweep runner (resumable,
one process per run, kept under ``--out-dir``) and prints one JSON line: test accuracy mean
± std of the distilled model, the same architecture trained by FedAvg from scratch, the CNN
pruned uniformly to the same budget, and the teacher (the retrained searched subnet), with
params/FLOPs ratios to the reference. ``fednas report SWEEP_DIR`` gives the CI table and the
Pareto plots of the same runs.

Usage: ``python bench/compression.py [--seeds 0,1,2] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from _common import sweep_summaries


def main() -> None:
    root, results = sweep_summaries("compression", "compress_fashion", __doc__, seeds="0,1,2")
    budgets = [json.loads((Path(r["run_dir"]) / "compression.json").read_text())["budget"]
               for r in results]

    def stat(model: str, key: str) -> list[float]:
        return [r["models"][model][key] for r in results]

    def mean(xs: list[float], scale: float = 100.0) -> float:
        return round(scale * statistics.mean(xs), 2)

    def sd(xs: list[float]) -> float:
        return round(100 * statistics.stdev(xs), 2) if len(xs) > 1 else 0.0

    distilled, same = stat("distilled", "test_acc"), stat("same_size", "test_acc")
    pruned, teacher = stat("pruned", "test_acc"), stat("searched", "test_acc")
    ref_params = [b["reference_params"] for b in budgets]
    ref_flops = [b["reference_flops"] for b in budgets]

    def ratio(model: str, key: str, ref: list[int]) -> float:
        return round(statistics.mean(v / r for v, r in zip(stat(model, key), ref, strict=True)),
                     3)

    print(json.dumps({
        "distilled_acc_mean": mean(distilled), "distilled_acc_std": sd(distilled),
        "distilled_params_ratio": ratio("distilled", "params", ref_params),
        "distilled_flops_ratio": ratio("distilled", "flops", ref_flops),
        "distilled_after_distillation_acc_mean": mean(stat("distilled",
                                                           "after_distillation_acc")),
        "fedavg_same_size_acc_mean": mean(same), "fedavg_same_size_acc_std": sd(same),
        "uniform_pruned_acc_mean": mean(pruned), "uniform_pruned_acc_std": sd(pruned),
        "uniform_pruned_params_ratio": ratio("pruned", "params", ref_params),
        "teacher_acc_mean": mean(teacher), "teacher_acc_std": sd(teacher),
        "teacher_params_ratio": ratio("searched", "params", ref_params),
        "reference_acc_mean": mean(stat("baseline", "test_acc")),
        "reference_params": ref_params[0], "reference_flops": ref_flops[0],
        "all_within_budget": all(r["models"][m]["within_budget"] for r in results
                                 for m in ("distilled", "same_size", "pruned")),
        "distilled_ge_same_size": statistics.mean(distilled) >= statistics.mean(same),
        "distilled_within_1pt_of_teacher":
            statistics.mean(teacher) - statistics.mean(distilled) <= 0.01,
        "seeds": [r["seed"] for r in results], "rounds": results[0]["rounds"],
        "wall_s_mean": round(statistics.mean(sum(r["timings"].values()) for r in results), 1),
        "sweep_dir": str(root),
    }))


if __name__ == "__main__":
    main()
