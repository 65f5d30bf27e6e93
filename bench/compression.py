"""Federated compression: the distilled model under budget vs same-size FedAvg, uniform
pruning and the uncompressed teacher, over several seeds; with ``--space width``, DAP's
channel-pruned student vs the greedy width derivation (issue 32).

Runs ``simulations/compress_fashion.toml`` (Fashion-MNIST, 10 clients, Dirichlet 0.5, budget
50 % of the hand-designed CNN's params) once per seed through the sweep runner (resumable,
one process per run, kept under ``--out-dir``) and prints one JSON line: test accuracy mean
± std of the distilled model, the same architecture trained by FedAvg from scratch, the CNN
pruned uniformly to the same budget, and the teacher (the retrained searched subnet), with
params/FLOPs ratios to the reference. ``fednas report SWEEP_DIR`` gives the CI table and the
Pareto plots of the same runs.

Width arm (``--space width``): the same scenario (data, partition, rounds, the same budget
of 50 % of the CNN's params, phases) in the width space (``WIDTH``: the slimmable ResNet-8,
32 base channels, widths 0.25–1, stem stride 2, sandwich-rule search; its full-width subnet
has 308k params, so the 211k budget binds), swept over ``compression.selection`` ∈ {alpha,
dap} × seeds. ``alpha`` is the greedy derivation (one width choice per layer, highest α per
unit of cost); ``dap`` prunes the full-width subnet channel by channel (DAP's gates on the
proxy split). Both runs of a seed share the seed, so their search and retrain are the same;
only the student differs. ``width_greedy_*`` / ``width_dap_*``: the distilled, fine-tuned
student of each selection (test accuracy mean/std, params ratio to the CNN, DAP's accuracy
straight after distillation); the same-size, teacher, reference and pruned figures come from
the greedy point (``width_dap_same_size_acc_mean``: DAP's architecture from scratch);
``width_dap_ge_greedy`` compares the means; ``wall_s`` is the mean wall time of one seed
(both runs). Records default to ``bench/results/compression_width``.

Usage: ``python bench/compression.py [--space cell|width] [--seeds 0,1,2] [--set KEY=VALUE ...]
[--out-dir DIR]``
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from _common import bench_parser, sweep, sweep_summaries

WIDTH_OUT = Path(__file__).resolve().parent / "results" / "compression_width"
# the width space of the width arm: ResNet-8 with 32 base channels (308k params at full width,
# 87k at the smallest widths), so the budget of compress_fashion (211k) binds
WIDTH = ['space.name="width"', "space.width.depth=8", "space.width.base-channels=32",
         "space.width.width-choices=[0.25, 0.5, 0.75, 1.0]", "space.width.stem-stride=2",
         "search.sandwich=true", "search.sandwich-samples=2"]
SELECTIONS = ("alpha", "dap")  # alpha: the greedy derivation (the "greedy" point)
GRID = ['compression.selection="alpha","dap"']  # one sweep point per selection


def mean(xs: list[float], scale: float = 100.0) -> float:
    return round(scale * statistics.mean(xs), 2)


def sd(xs: list[float]) -> float:
    return round(100 * statistics.stdev(xs), 2) if len(xs) > 1 else 0.0


def wall(summary: dict[str, Any]) -> float:
    return sum(v for v in summary["timings"].values() if isinstance(v, int | float))


def width_figures(greedy: list[dict[str, Any]], dap: list[dict[str, Any]]) -> dict[str, Any]:
    """The width arm's JSON line from the runs' summaries, ``greedy`` and ``dap`` in seed
    order (the same seeds). Params ratios are to the CNN of each seed's ``baseline`` model
    (from the summary: ``compression.json`` is not among the records kept in git)."""
    def acc(results: list[dict[str, Any]], model: str, key: str = "test_acc") -> list[Any]:
        return [r["models"][model][key] for r in results]

    def ratio(results: list[dict[str, Any]]) -> float:
        return round(statistics.mean(r["models"]["distilled"]["params"] / ref for r, ref in
                                     zip(results, acc(greedy, "baseline", "params"),
                                         strict=True)), 3)

    if [r["seed"] for r in greedy] != [r["seed"] for r in dap]:
        raise ValueError("width arm: the greedy and DAP runs must cover the same seeds")
    g, d = acc(greedy, "distilled"), acc(dap, "distilled")
    return {
        "width_greedy_acc_mean": mean(g), "width_greedy_acc_std": sd(g),
        "width_dap_acc_mean": mean(d), "width_dap_acc_std": sd(d),
        "width_greedy_params_ratio": ratio(greedy), "width_dap_params_ratio": ratio(dap),
        "width_dap_after_distillation_acc_mean": mean(acc(dap, "distilled",
                                                          "after_distillation_acc")),
        "width_same_size_acc_mean": mean(acc(greedy, "same_size")),
        "width_dap_same_size_acc_mean": mean(acc(dap, "same_size")),
        "width_teacher_acc_mean": mean(acc(greedy, "searched")),
        "width_reference_acc_mean": mean(acc(greedy, "baseline")),
        "width_uniform_pruned_acc_mean": mean(acc(greedy, "pruned")),
        "width_all_within_budget": all(
            r["models"][m]["within_budget"] for results, models in (
                (greedy, ("distilled", "same_size", "pruned")), (dap, ("distilled", "same_size")))
            for r in results for m in models),
        "width_dap_ge_greedy": statistics.mean(d) >= statistics.mean(g),
        "seeds": [r["seed"] for r in greedy], "rounds": greedy[0]["rounds"],
        "wall_s": round(statistics.mean(wall(a) + wall(b) for a, b in zip(greedy, dap,
                                                                          strict=True)), 1),
    }


def width_arm(args: Any) -> None:
    root, runs = sweep("compression", "compress_fashion", [*WIDTH, *args.overrides], GRID,
                       args.seeds, args.out_dir or str(WIDTH_OUT))
    by = {s: [r for r in runs if r["values"]["compression.selection"].strip('"') == s]
          for s in SELECTIONS}
    print(json.dumps({**width_figures(*([r["summary"] for r in by[s]] for s in SELECTIONS)),
                      "sweep_dir": str(root)}))


def cell_arm(args: Any) -> None:
    args.out_dir = args.out_dir or "runs/bench"
    root, results = sweep_summaries("compression", "compress_fashion", __doc__, args=args)
    budgets = [json.loads((Path(r["run_dir"]) / "compression.json").read_text())["budget"]
               for r in results]

    def stat(model: str, key: str) -> list[float]:
        return [r["models"][model][key] for r in results]

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


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--space", choices=("cell", "width"), default="cell",
                        help="cell: compress_fashion as written; width: its width-space arm, "
                             "greedy vs DAP (records default to bench/results/"
                             "compression_width)")
    parser.set_defaults(out_dir=None)
    args = parser.parse_args()
    if args.space == "width":
        width_arm(args)
    else:
        cell_arm(args)


if __name__ == "__main__":
    main()
