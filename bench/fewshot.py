"""5-way 1-/5-shot glyphs: MAML Conv-4 vs MAML on the federated-searched subnet vs AT-NAS.

Runs ``simulations/fewshot_glyphs.toml`` through the sweep runner (resumable, kept under
``--out-dir``): FedNAS with 4 Flower clients on the meta-train glyph classes and FedAvg
retraining of its subnet there, then the meta phase on glyph scripts never seen by any
phase before. (a) Conv-4 sized to the searched subnet's parameter
count and (b) the searched subnet are meta-trained with the same task stream and scored on
the same 600 seeded test tasks; (c) AT-NAS evolves a subnet of the meta-trained supernet per
test task (the first ``meta.atnas.eval-tasks``; ``*_atnas_tasks`` gives (a) and (b) on those
same tasks). With ``--set 'meta.models=["searched","conv4","metanas"]'``, (d) MetaNAS (α
meta-learned on the tasks, then its subnet) is reported too (``metanas_1shot`` ...). With
``--set 'meta.atnas.prior="metanas"'`` AT-NAS draws its subnets from MetaNAS's α (reusing the
``metanas`` model's supernet when it is listed; ``atnas_1shot_mode_share``: the share of
tasks that kept α's mode).
Prints one JSON line: accuracies and 95 % CI half-widths in percent
(``conv4_1shot``, ``conv4_1shot_ci``, ...), ``params`` per model (AT-NAS: mean over its
tasks), ``flops`` per MAML model (one forward pass of one image), ``meta_train_s`` per model
and shot count, and the wall time. With several seeds, every figure is the mean over seeds.

The inner (adaptation) lr is chosen first, on meta-*validation* tasks (classes of neither
meta-train nor meta-test): one run per candidate of ``--inner-lrs`` with
``meta.eval-split = "val"`` (200 tasks, no AT-NAS); the candidate with the best mean
meta-val accuracy over the compared models and shot counts is used for the test run
(``inner_lr``, also AT-NAS's; ``inner_lr_val`` lists every candidate's meta-val accuracy
per model and shot count). Then each model and shot count gets its own best candidate
(``inner_lr_per_setting``): a setting whose best differs is meta-trained again at it by
``fednas meta`` on a copy of the run dir (the search is kept). ``--inner-lr X`` skips both.

Usage: ``python bench/fewshot.py [--seeds 0] [--quick] [--inner-lrs 0.03,0.1,0.3]
[--inner-lr X] [--set KEY=VALUE ...]`` (``--quick``: 200 test tasks, AT-NAS on 20; see QUICK).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fednas.sweep import parse_seeds, run_sweep
from fednas.sweep_report import collect

SCENARIO = Path(__file__).parents[1] / "simulations" / "fewshot_glyphs.toml"
QUICK = ["meta.eval-tasks=200", "meta.atnas.eval-tasks=20"]
SELECT = ['meta.eval-split="val"', "meta.eval-tasks=200", "meta.atnas.enabled=false"]
MODELS = {"conv4": "conv4", "searched": "searched", "metanas": "metanas"}  # those present


def pct(x: float) -> float:
    return 100 * x


def figures(meta: dict) -> dict:
    """The bench keys of one run's ``summary["meta"]`` (percent, rounded)."""
    out: dict = {"params": {}, "flops": {}, "meta_train_s": {}}
    for key, name in MODELS.items():
        if name not in meta["models"]:
            continue
        entry = meta["models"][name]
        out["params"][key] = entry["params"]
        if "flops" in entry:  # run dirs of older versions lack it
            out["flops"][key] = entry["flops"]
        for shot in (1, 5):
            e = entry[f"{shot}shot"]
            out[f"{key}_{shot}shot"], out[f"{key}_{shot}shot_ci"] = pct(e["acc"]), pct(e["ci95"])
            if "atnas_tasks" in e:
                out[f"{key}_{shot}shot_atnas_tasks"] = pct(e["atnas_tasks"]["acc"])
            out["meta_train_s"][f"{key}_{shot}shot"] = e["meta_train_s"]
    params = []
    for shot in (1, 5):
        a = meta["atnas"][f"{shot}shot"]
        out[f"atnas_{shot}shot"], out[f"atnas_{shot}shot_ci"] = pct(a["acc"]), pct(a["ci95"])
        out["meta_train_s"][f"atnas_{shot}shot"] = a["meta_train_s"]
        out[f"atnas_{shot}shot_search_s"] = a["search_s_mean"] + a["adapt_s_mean"]
        if a.get("mode_chosen") is not None:  # meta.atnas.prior = "metanas"
            out[f"atnas_{shot}shot_mode_share"] = a["mode_chosen"] / a["tasks"]
        params.append(a["params_mean"])
    out["params"]["atnas"] = statistics.mean(params)
    out["eval_tasks"], out["atnas_eval_tasks"] = meta["eval_tasks"], meta["atnas"]["1shot"]["tasks"]
    return out


def mean_of(runs: list[dict]) -> dict:
    """Key-wise mean over seeds (nested dicts too), rounded to 2 decimals."""
    return {key: mean_of([r[key] for r in runs]) if isinstance(value, dict)
            else round(statistics.mean(r[key] for r in runs), 2)
            for key, value in runs[0].items()}


def select_inner_lr(overrides: list[str], lrs: str, seeds: list[int], out_dir: str
                    ) -> tuple[float, dict[str, float]]:
    """The candidate inner lr with the best mean meta-val accuracy, and per candidate its
    meta-val accuracies (%): ``mean`` and per model and shot count (``conv4_1shot`` ...)."""
    root, _ = run_sweep(SCENARIO, [*overrides, *SELECT], [f"meta.inner-lr={lrs}"], seeds,
                        out_dir=out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/fewshot: failed inner-lr selection runs: {failed}")
    scores: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        lr = run["group"].split("=")[-1]
        for name, entry in run["summary"]["meta"]["models"].items():
            for k, v in entry.items():
                if k.endswith("shot"):
                    scores.setdefault(lr, {}).setdefault(f"{name}_{k}", []).append(pct(v["acc"]))
    table = {lr: {k: round(statistics.mean(v), 2) for k, v in cells.items()}
             for lr, cells in scores.items()}
    for cells in table.values():
        cells["mean"] = round(statistics.mean(cells.values()), 2)
    return float(max(table, key=lambda lr: table[lr]["mean"])), table


def per_setting(run: dict, table: dict[str, dict[str, float]], shared: float
                ) -> dict[str, float]:
    """Give every model and shot count the test result at its own meta-val-best inner lr.

    The run was meta-trained at ``shared`` for all; a setting whose best candidate differs is
    meta-trained again at that lr by ``fednas meta`` on a copy of the run dir (AT-NAS off; the
    copy keeps the search, so only the meta phase reruns) and its entry in
    ``run["summary"]["meta"]`` is replaced. Returns each setting's lr.
    """
    settings = [k for k in next(iter(table.values())) if k != "mean"]
    best = {k: float(max(table, key=lambda lr: table[lr][k])) for k in settings}
    for lr in sorted(set(best.values()) - {shared}):
        shots = sorted({int(k.split("_")[1][:-4]) for k, v in best.items() if v == lr})
        copy = Path(run["run_dir"]).with_name(f"{Path(run['run_dir']).name}-inner-lr-{lr}")
        done = copy / "meta.json"
        if not done.is_file() or json.loads(done.read_text()).get("inner_lr") != lr:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run["run_dir"], copy, ignore=shutil.ignore_patterns("checkpoints"))
            (copy / "meta.json").unlink(missing_ok=True)
            subprocess.run([sys.executable, "-m", "fednas", "meta", str(copy), "--set",
                            f"meta.inner-lr={lr}", "--set", f"meta.shots={shots}", "--set",
                            "meta.atnas.enabled=false", "--set", "meta.atnas.params-ratio=0",
                            "--set", "runtime.progress=false"], check=True,
                           stdout=sys.stderr)  # stdout is the bench's one JSON line
            meta = json.loads(done.read_text())
            done.write_text(json.dumps({**meta, "inner_lr": lr}, indent=2))
        tuned = json.loads(done.read_text())["models"]
        for key, value in best.items():
            name, shot = key.split("_")
            if value == lr:
                run["summary"]["meta"]["models"][name][shot] = tuned[name][shot]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (QUICK)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default="runs/bench")
    parser.add_argument("--inner-lrs", default="0.03,0.1,0.3",
                        help="candidates, chosen on meta-val tasks")
    parser.add_argument("--inner-lr", type=float, help="use this inner lr (no selection)")
    args = parser.parse_args()
    overrides = ["runtime.progress=false", *(QUICK if args.quick else []), *args.overrides]
    t0 = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    val: dict[str, dict[str, float]] = {}
    lr = args.inner_lr
    if lr is None:
        lr, val = select_inner_lr(overrides, args.inner_lrs, seeds, args.out_dir)
    overrides.append(f"meta.inner-lr={lr}")
    root, _ = run_sweep(SCENARIO, overrides, [], seeds, out_dir=args.out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/fewshot: failed runs: {failed}")
    lrs = {f"{m}_{k}shot": lr for m in MODELS if m in runs[0]["summary"]["meta"]["models"]
           for k in (1, 5)}
    for run in runs if val else ():
        lrs = per_setting(run, val, lr)  # the same choice for every seed (mean over seeds)
    per_seed = [figures(r["summary"]["meta"]) for r in runs]
    result = mean_of(per_seed)
    result["params"] = {k: round(v) for k, v in result["params"].items()}
    result["flops"] = {k: round(v) for k, v in result["flops"].items()}
    result["meta_train_s"] = {k: round(v, 1) for k, v in result["meta_train_s"].items()}
    best = max(result.get(f"{m}_1shot", 0.0) for m in ("searched", "metanas", "atnas"))
    print(json.dumps({
        **result, "best_minus_conv4_1shot": round(best - result["conv4_1shot"], 2),
        "inner_lr": lr, "inner_lr_per_setting": lrs, "inner_lr_val": val,
        "seeds": [r["seed"] for r in runs], "quick": args.quick,
        "run_wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1),
        "bench_wall_s": round(time.perf_counter() - t0, 1), "sweep_dir": str(root),
    }))


if __name__ == "__main__":
    main()
