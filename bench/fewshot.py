"""5-way 1-/5-shot glyphs: MAML Conv-4 vs MAML on the federated-searched subnet vs AT-NAS.

Runs ``simulations/fewshot_glyphs.toml``'s phases before ``meta`` through the sweep runner
(resumable, kept under ``--out-dir``): FedNAS with 4 Flower clients on the meta-train glyph
classes, FedAvg retraining of its subnet there, and the same FedAvg training of a Conv-4.
Its meta phase then runs by ``fednas meta`` on copies of that run dir, one per inner lr
(``<sweep dir>/inner-lr/<run dir name>-<lr>``), on glyph scripts never seen by any phase
before. (a) Conv-4 sized to the searched subnet's parameter count, (a')
``conv4_pretrained``: that Conv-4 starting from the federated training above (the same
pretraining as the subnet: it separates architecture from pretraining) and (b) the searched
subnet are meta-trained with the same task stream and scored on the same 600 seeded test
tasks; (c) AT-NAS evolves a subnet of the meta-trained supernet per test task (the first
``meta.atnas.eval-tasks``; ``*_atnas_tasks`` gives (a), (a') and (b) on those same tasks).
With ``--set 'meta.models=["searched","conv4","metanas"]'``, (d) MetaNAS (α
meta-learned on the tasks, then its subnet) is reported too (``metanas_1shot`` ...). With
``--set 'meta.atnas.prior="metanas"'`` AT-NAS draws its subnets from MetaNAS's α (reusing the
``metanas`` model's supernet when it is listed; ``atnas_1shot_mode_share``: the share of
tasks that kept α's mode). With ``--set 'meta.models=["searched","conv4","conv4-pretrained",
"dap"]'``, (e) the run's Conv-4 pruned by DAP on the meta-train classes (``[meta.dap]``) and
meta-trained like the others is reported as ``dap_maml_1shot`` / ``dap_maml_5shot``. Every
``--set`` goes into the run's config.toml (so a changed key reruns the search too).
Prints one JSON line: accuracies and 95 % CI half-widths in percent
(``conv4_1shot``, ``conv4_1shot_ci``, ...), ``params`` per model (AT-NAS: mean over its
tasks), ``flops`` per MAML model (one forward pass of one image), ``meta_train_s`` per model
and shot count (measured with ``--jobs`` meta phases sharing the machine), the search's and
the bench's wall time. With several seeds, every figure is the mean over seeds.

The inner (adaptation) lr is chosen on meta-*validation* tasks (classes of neither meta-train
nor meta-test): every candidate of ``--inner-lrs`` meta-trains every model and shot count in
its copy and scores 200 meta-val tasks (no AT-NAS), ``--jobs`` candidates at a time. The
candidate with the best mean meta-val accuracy over the compared models and shot counts is
the shared lr (``inner_lr``, AT-NAS's too); each model and shot count is then scored on the
test tasks at its own best candidate (``inner_lr_per_setting``; ``inner_lr_val`` lists every
candidate's meta-val accuracy per setting). The test scoring reuses the meta-models the
selection trained (saved in the copies, :mod:`fednas.meta.store`), so only AT-NAS meta-trains
after the selection. ``--inner-lr X`` skips the selection.

Usage: ``python bench/fewshot.py [--seeds 0] [--quick] [--inner-lrs 0.03,0.1,0.3]
[--inner-lr X] [--jobs N] [--set KEY=VALUE ...]`` (``--quick``: 200 test tasks, AT-NAS on 20;
see QUICK).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fednas.config.loading import load_config
from fednas.reporting.sweep_report import collect
from simulations.sweep import parse_seeds, run_sweep

SCENARIO = Path(__file__).parents[1] / "simulations" / "fewshot_glyphs.toml"
QUICK = ["meta.eval-tasks=200", "meta.atnas.eval-tasks=20"]
SELECT = ['meta.eval-split="val"', "meta.eval-tasks=200", "meta.atnas.enabled=false"]
OUT = Path(__file__).resolve().parent / "results" / "fewshot"  # records kept in git
MODELS = {"conv4": "conv4", "conv4_pretrained": "conv4-pretrained", "searched": "searched",
          "metanas": "metanas", "dap_maml": "dap"}  # bench key: meta.models name (reported
#                                                      when the run lists it)


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
    if not meta.get("atnas"):  # --set meta.atnas.enabled=false (absent or empty)
        out["eval_tasks"] = meta["eval_tasks"]
        return out
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


def meta_at(run_dir: Path, lr: float, sets: list[str]) -> dict:
    """``meta.json`` of ``fednas meta`` at inner lr ``lr`` with ``--set`` ``sets``, on the
    copy ``<sweep dir>/inner-lr/<run dir name>-<lr>`` of the run dir (made on first use; not
    beside the run dir, where the sweep would take it for the run). The meta-models
    trained there are saved in the copy (:mod:`fednas.meta.store`), so a later call at the
    same lr (meta-val, then test) only evaluates; each result is kept as
    ``meta-<digest of sets>.json``, so a rerun of the bench reuses it."""
    copy = run_dir.parents[1] / "inner-lr" / f"{run_dir.name}-{lr}"
    digest = hashlib.sha256(json.dumps([lr, *sets]).encode()).hexdigest()[:12]
    done = copy / f"meta-{digest}.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not (copy / "config.toml").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "meta*"))
    command = [sys.executable, "-m", "simulations", "meta", str(copy), "--set",
               f"meta.inner-lr={lr}", "--set", "runtime.progress=false"]
    for item in sets:
        command += ["--set", item]
    subprocess.run(command, check=True, stdout=sys.stderr)  # stdout: the bench's JSON line
    (copy / "meta.json").replace(done)
    return json.loads(done.read_text())


def in_parallel(calls: list[tuple], jobs: int) -> list[dict]:
    """:func:`meta_at` for every argument tuple, ``jobs`` processes at a time, in order."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda call: meta_at(*call), calls))


def scores(meta: dict) -> dict[str, float]:
    """Accuracy (%) per model and shot count (``conv4_1shot`` ...) of one ``meta.json``."""
    return {f"{name}_{k}": pct(v["acc"]) for name, entry in meta["models"].items()
            for k, v in entry.items() if k.endswith("shot")}


def select_inner_lr(run_dirs: list[Path], lrs: list[float], jobs: int
                    ) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """The candidate with the best mean meta-val accuracy (shared lr, AT-NAS's too), each
    model and shot count's own best candidate, and per candidate its meta-val accuracies (%,
    mean over seeds): ``mean`` and per setting (``conv4_1shot`` ...)."""
    calls = [(d, lr, SELECT) for d in run_dirs for lr in lrs]
    found = in_parallel(calls, jobs)
    per_lr: dict[str, dict[str, list[float]]] = {}
    for (_, lr, _), meta in zip(calls, found, strict=True):
        for key, acc in scores(meta).items():
            per_lr.setdefault(str(lr), {}).setdefault(key, []).append(acc)
    table = {lr: {k: round(statistics.mean(v), 2) for k, v in cells.items()}
             for lr, cells in per_lr.items()}
    settings = list(next(iter(table.values())))
    for cells in table.values():
        cells["mean"] = round(statistics.mean(cells.values()), 2)
    best = {k: float(max(table, key=lambda lr: table[lr][k])) for k in settings}
    return float(max(table, key=lambda lr: table[lr]["mean"])), best, table


def test_meta(run_dir: Path, shared: float, best: dict[str, float], jobs: int) -> dict:
    """The run's test ``meta.json`` with every model and shot count at its own lr ``best``:
    everything (AT-NAS too) at ``shared``, and the settings whose best differs replaced by a
    test run at their lr (AT-NAS off there)."""
    others = sorted(set(best.values()) - {shared})
    calls = [(run_dir, shared, [])]
    for lr in others:
        names = {k.split("_")[0] for k, v in best.items() if v == lr}
        names = sorted(names | ({"searched"} & {k.split("_")[0] for k in best}))  # sizes conv4
        shots = sorted({int(k.split("_")[1][:-4]) for k, v in best.items() if v == lr})
        calls.append((run_dir, lr, [f"meta.models={json.dumps(names)}",
                                    f"meta.shots={shots}", "meta.atnas.enabled=false"]))
    meta, *tuned = in_parallel(calls, jobs)
    for lr, result in zip(others, tuned, strict=True):
        for key, value in best.items():
            name, shot = key.split("_")
            if value == lr:
                meta["models"][name][shot] = result["models"][name][shot]
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (QUICK)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(OUT))
    parser.add_argument("--inner-lrs", default="0.03,0.1,0.3",
                        help="candidates, chosen on meta-val tasks")
    parser.add_argument("--inner-lr", type=float, help="use this inner lr (no selection)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="meta phases run at once (each on runtime.threads threads)")
    args = parser.parse_args()
    overrides = ["runtime.progress=false", *(QUICK if args.quick else []), *args.overrides]
    phases = [p for p in load_config(SCENARIO, overrides).phases if p != "meta"]
    overrides.append(f"phases={json.dumps(phases)}")  # the meta phases run on copies (meta_at)
    t0 = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    root, _ = run_sweep(SCENARIO, overrides, [], seeds, out_dir=args.out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/fewshot: failed runs: {failed}")
    run_dirs = [Path(r["run_dir"]) for r in runs]
    val: dict[str, dict[str, float]] = {}
    if args.inner_lr is None:
        lrs = [float(x) for x in args.inner_lrs.split(",")]
        lr, best, val = select_inner_lr(run_dirs, lrs, args.jobs)
    else:
        lr, best = args.inner_lr, {}
    metas = [test_meta(d, lr, best, args.jobs) for d in run_dirs]
    lrs_used = {f"{key}_{k}shot": best.get(f"{name}_{k}shot", lr) for key, name in MODELS.items()
                if name in metas[0]["models"] for k in (1, 5)}
    per_seed = [figures(meta) for meta in metas]
    result = mean_of(per_seed)
    result["params"] = {k: round(v) for k, v in result["params"].items()}
    result["flops"] = {k: round(v) for k, v in result["flops"].items()}
    result["meta_train_s"] = {k: round(v, 1) for k, v in result["meta_train_s"].items()}
    best_1shot = max(result.get(f"{m}_1shot", 0.0) for m in ("searched", "metanas", "atnas"))
    print(json.dumps({
        **result, "best_minus_conv4_1shot": round(best_1shot - result["conv4_1shot"], 2),
        "inner_lr": lr, "inner_lr_per_setting": lrs_used, "inner_lr_val": val,
        "seeds": [r["seed"] for r in runs], "quick": args.quick, "jobs": args.jobs,
        "search_wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1),
        "bench_wall_s": round(time.perf_counter() - t0, 1), "sweep_dir": str(root),
    }))


if __name__ == "__main__":
    main()
