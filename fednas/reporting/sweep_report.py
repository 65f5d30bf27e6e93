"""``fednas report``: mean ± std and 95 % CI across seeds, from run dirs, as tables and plots.

Every number is recomputed from the run directories (``summary.json``, ``metrics.jsonl``);
nothing is typed in. Inputs are sweep dirs (``sweep.json``: runs grouped by grid point) or
plain run dirs (grouped by scenario name). Outputs, in ``--out`` (default
``<first input>/report``): ``report.md``, ``report.csv``, ``accuracy_vs_round.png`` (mean
test accuracy per round/epoch with a ±1 std band over seeds, one panel per phase) and
``pareto.png`` / ``pareto_flops.png`` (test accuracy vs parameters / FLOPs, error bars
over seeds) and, for DP runs,
``privacy_vs_accuracy.png`` (test accuracy vs ε, e.g. from a sweep over the noise
multiplier, with the no-DP runs among the inputs as dashed reference lines). Failed runs
of a sweep are listed with their error.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fednas.config.preflight import check_output_dir  # noqa: E402
from fednas.errors import FedNASError  # noqa: E402
from fednas.reporting.rundir import read_metrics  # noqa: E402
from fednas.reporting.summary import format_count  # noqa: E402


def mean_std_ci(xs: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the 95 % CI half-width (Student t; nan for one value)."""
    from scipy import stats

    n = len(xs)
    mean = statistics.fmean(xs)
    if n < 2:
        return mean, math.nan, math.nan
    sd = statistics.stdev(xs)
    return mean, sd, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def collect(inputs: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished runs, failed runs); each finished run: group, seed, run_dir, summary.

    A sweep's runs are grouped by their grid values (the scenario name without a grid). Sweeps
    of one scenario whose ``--set`` overrides differ (e.g. bench/privacy.py's one sweep per
    seed and privacy mode) get the overrides they do not all share appended to the group, so
    seeds of the same setting pool and different settings do not.
    """
    runs, failed = [], []
    manifests = {Path(p): json.loads((Path(p) / "sweep.json").read_text())
                 for p in inputs if (Path(p) / "sweep.json").is_file()}
    suffix = _override_suffixes(manifests)
    for path in inputs:
        path = Path(path)
        if path in manifests:
            manifest = manifests[path]
            for r in manifest["runs"]:
                group = ", ".join(f"{k}={v}" for k, v in r["values"].items()) or manifest["name"]
                group += suffix[path]
                run_dir = Path(r["run_dir"]) if r.get("run_dir") else None
                if run_dir is not None and (run_dir / "summary.json").is_file():
                    runs.append(_run(run_dir, group, manifest["name"]))
                else:
                    failed.append({"group": group, "seed": r["seed"], "key": r["key"],
                                   "state": r.get("state", "pending"),
                                   "error": r.get("error", "")})
        elif (path / "summary.json").is_file():
            runs.append(_run(path))
        else:
            raise FedNASError(f"report: {path} is neither a sweep dir (sweep.json) nor a "
                              "finished run dir (summary.json)")
    return runs, failed


def _override_suffixes(manifests: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    """Per sweep dir: `` [overrides not shared by every sweep of its scenario name]`` when
    that name's sweeps were run with different overrides, else ``""``."""
    by_name: dict[str, list[Path]] = defaultdict(list)
    for path, m in manifests.items():
        by_name[m["name"]].append(path)
    out = {}
    for paths in by_name.values():
        sets = [manifests[p].get("overrides", []) for p in paths]
        common = set.intersection(*map(set, sets))  # all of them when the sweeps agree
        for path, overrides in zip(paths, sets, strict=True):
            own = [o for o in overrides if o not in common]
            out[path] = f" [{', '.join(own)}]" if own else ""
    return out


def _run(run_dir: Path, group: str | None = None, scenario: str | None = None
         ) -> dict[str, Any]:
    """One finished run; ``scenario`` is the sweep's scenario name for a sweep's runs (their
    own ``summary["scenario"]`` is the run key, ``p00-s0``); a plain run dir defaults both
    to its summary's scenario."""
    summary = json.loads((run_dir / "summary.json").read_text())
    name = summary.get("scenario", run_dir.name)
    group, scenario = group or name, scenario or name
    metrics = read_metrics(run_dir)
    return {"group": group, "scenario": scenario, "seed": summary.get("seed"), "run_dir": run_dir,
            "summary": summary, "metrics": metrics,
            "bytes": sum(m.get("bytes_down", 0) + m.get("bytes_up", 0) for m in metrics),
            "wall_s": sum(v for v in summary.get("timings", {}).values()
                          if isinstance(v, int | float)),
            "epsilon": summary.get("privacy", {}).get("epsilon")}


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (group, model): mean/std/CI of test accuracy and the costs."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        for model in run["summary"].get("models", {}):
            by[(run["group"], model)].append(run)
    out = []
    for (group, model), rs in by.items():
        acc = [100 * r["summary"]["models"][model]["test_acc"] for r in rs]
        m, sd, ci = mean_std_ci(acc)
        first = rs[0]["summary"]["models"][model]
        row = {"group": group, "model": model, "n": len(rs), "test_acc_mean": m,
               "test_acc_std": sd, "test_acc_ci95": ci,
               "params": statistics.fmean(r["summary"]["models"][model]["params"] for r in rs),
               "flops": statistics.fmean(r["summary"]["models"][model]["flops"] for r in rs),
               "budget": first.get("rounds_total", first.get("rounds", first.get("epochs"))),
               "bytes_per_run": statistics.fmean(r["bytes"] for r in rs),
               "wall_s_per_run": statistics.fmean(r["wall_s"] for r in rs),
               "seeds": ",".join(str(r["seed"]) for r in rs)}
        if first.get("tier"):  # a device tier's model (tier_*, heterofl_*, alone_*, ...)
            row["tier"] = first["tier"]
            for c in ("params", "flops"):
                row[f"tier_limit_{c}"] = first.get("budget", {}).get(f"limit_{c}")
        eps = [r["epsilon"] for r in rs if r["epsilon"] is not None]
        if eps:
            row["epsilon"] = statistics.fmean(eps)
        out.append(row)
    return out


def _pm(row: dict[str, Any]) -> tuple[str, str]:
    m, sd, ci = row["test_acc_mean"], row["test_acc_std"], row["test_acc_ci95"]
    if math.isnan(sd):
        return f"{m:.2f}", "—"
    return f"{m:.2f} ± {sd:.2f}", f"[{m - ci:.2f}, {m + ci:.2f}]"


def markdown(table: list[dict[str, Any]], failed: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "",
             "| group | model | seeds | test acc % (mean ± std) | 95 % CI | params | FLOPs "
             "| rounds/epochs | MB sent/run | wall s/run |" + (" ε |" if any(
                 "epsilon" in r for r in table) else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if any(
                 "epsilon" in r for r in table) else "")]
    for r in table:
        acc, ci = _pm(r)
        line = (f"| {r['group']} | {r['model']} | {r['n']} | {acc} | {ci} | "
                f"{format_count(r['params'])} | {format_count(r['flops'])} | {r['budget']} | "
                f"{r['bytes_per_run'] / 1e6:.1f} | {r['wall_s_per_run']:.0f} |")
        if any("epsilon" in x for x in table):
            line += f" {r['epsilon']:.2f} |" if "epsilon" in r else " — |"
        lines.append(line)
    if failed:
        lines += ["", "## Failed or unfinished runs", "", "| group | seed | state | error |",
                  "|---|---|---|---|"]
        lines += [f"| {f['group']} | {f['seed']} | {f['state']} | {f['error']} |"
                  for f in failed]
    return "\n".join(lines) + "\n"


def plot_rounds(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Mean test (else val) accuracy per step with a ±1 std band over seeds, per phase."""
    series: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        for m in run["metrics"]:
            acc = m.get("test_acc", m.get("val_acc"))
            if isinstance(acc, float):
                series[m["phase"]][run["group"]][m["step"]].append(100 * acc)
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series), 3.6), squeeze=False)
    for ax, (phase, groups) in zip(axes[0], series.items(), strict=True):
        for group, steps in groups.items():
            xs = sorted(steps)
            mean = np.array([np.mean(steps[x]) for x in xs])
            sd = np.array([np.std(steps[x], ddof=1) if len(steps[x]) > 1 else 0.0 for x in xs])
            ax.plot(xs, mean, marker="o", label=group)
            ax.fill_between(xs, mean - sd, mean + sd, alpha=0.2)
        ax.set_title(phase)
        ax.set_xlabel("round / epoch")
        ax.set_ylabel("accuracy %")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Pareto markers of the device-tier models by method (the colour is the tier)
TIER_MARKERS = {"tier": "o", "heterofl": "s", "alone": "^", "smallest": "v"}


def plot_pareto(table: list[dict[str, Any]], path: Path, cost: str = "params") -> Path:
    """Test accuracy (mean, error bar = std) against ``cost`` (params or flops) for every
    (group, model)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    tiers = list(dict.fromkeys(r["tier"] for r in table if "tier" in r))
    for r in table:
        sd = 0.0 if math.isnan(r["test_acc_std"]) else r["test_acc_std"]
        style: dict[str, Any] = {"fmt": "o"}
        if "tier" in r:  # device tiers: colour = tier, marker = method
            method = r["model"].split("_")[0]
            style = {"fmt": TIER_MARKERS.get(method, "D"),
                     "color": f"C{tiers.index(r['tier']) % 10}"}
        ax.errorbar(r[cost], r["test_acc_mean"], yerr=sd, capsize=3,
                    label=f"{r['model']} ({r['group']})", **style)
    drawn = set()
    for r in table:  # each tier's budget, where it sets one in this cost
        limit = r.get(f"tier_limit_{cost}")
        if limit and (r["tier"], limit) not in drawn:
            drawn.add((r["tier"], limit))
            ax.axvline(limit, ls=":", lw=1, color=f"C{tiers.index(r['tier']) % 10}",
                       label=f"tier {r['tier']} budget")
    return _save_log_x(fig, ax, {"params": "parameters", "flops": "FLOPs per sample"}[cost],
                       path)


def privacy_points(runs: list[dict[str, Any]]) -> tuple[
        dict[tuple[str, str], list[tuple[float, float]]], dict[tuple[str, str], list[float]]]:
    """(DP points, no-DP accuracies) per (group, model): ``(ε, test acc %)`` for runs with an
    ε, test acc % for runs without privacy (their reference line in the plot)."""
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    plain: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        for model, m in run["summary"].get("models", {}).items():
            if run["epsilon"] is not None:
                points[(run["group"], model)].append((run["epsilon"], 100 * m["test_acc"]))
            elif not run["summary"].get("privacy"):
                plain[(run["group"], model)].append(100 * m["test_acc"])
    return dict(points), dict(plain)


def plot_privacy(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against ε (one point per group and model, error bars over seeds), and
    each group's no-DP accuracy as a dashed line (band: ±1 std over seeds; sample std, as in
    the tables); None without a DP run."""
    points, plain = privacy_points(runs)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, ((group, model), pts) in enumerate(sorted(points.items())):
        eps, acc = zip(*pts, strict=True)
        ax.errorbar(np.mean(eps), np.mean(acc), xerr=_sd(eps), yerr=_sd(acc), fmt="o",
                    capsize=3, color=f"C{i % 10}", label=f"{model} ({group})")
    for i, ((group, model), acc) in enumerate(sorted(plain.items()), start=len(points)):
        mean, sd = float(np.mean(acc)), _sd(acc)
        ax.axhline(mean, ls="--", lw=1, color=f"C{i % 10}", label=f"{model}, no DP ({group})")
        if sd > 0:
            ax.axhspan(mean - sd, mean + sd, color=f"C{i % 10}", alpha=0.12)
    ax.set_title("privacy vs accuracy")
    return _save_log_x(fig, ax, "ε (δ from the scenario)", path)


def _sd(xs) -> float:
    """Sample std over seeds, as in the tables (0 for one value)."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _save_log_x(fig, ax, xlabel: str, path: Path) -> Path:
    """Finish an accuracy plot with a log x axis and write it."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(inputs: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Write report.md, report.csv and the plots; return paths, rows and failures."""
    if not inputs:
        raise FedNASError("report: give at least one sweep dir or run dir")
    runs, failed = collect(inputs)
    if not runs:
        raise FedNASError("report: no finished runs in " + ", ".join(map(str, inputs)))
    out = check_output_dir(Path(out) if out else Path(inputs[0]) / "report", "report --out")
    out.mkdir(parents=True, exist_ok=True)
    table = rows(runs)
    title = "fednas report: " + ", ".join(sorted({r["scenario"] for r in runs}))
    (out / "report.md").write_text(markdown(table, failed, title))
    with open(out / "report.csv", "w", newline="") as fh:
        keys = sorted({k for r in table for k in r}, key=lambda k: list(table[0]).index(k)
                      if k in table[0] else 99)
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table)
    plots = [p for p in (plot_rounds(runs, out / "accuracy_vs_round.png"),
                         plot_pareto(table, out / "pareto.png"),
                         plot_pareto(table, out / "pareto_flops.png", "flops"),
                         plot_privacy(runs, out / "privacy_vs_accuracy.png")) if p is not None]
    return {"dir": str(out), "rows": table, "failed": failed, "plots": [str(p) for p in plots],
            "markdown": (out / "report.md").read_text()}
