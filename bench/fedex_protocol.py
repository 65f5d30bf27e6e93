"""FedEx by its paper's protocol: RS, SHA, RS+FedEx and SHA+FedEx at equal total rounds,
from the scenario's defaults and from poor defaults (local lr ×0.1 and ×10).

Federated FedAvg(M) training of the hand-designed CNN on Fashion-MNIST (phase ``baseline``
of ``simulations/fedex_fashion.toml``, ``data.max-train = 12000``), Dirichlet(0.5), 10
clients. Per seed and starting point (:mod:`fednas.tuning.protocol`):

* ``n`` configurations over server lr / momentum and local lr / momentum / weight decay /
  epochs: the starting point and ``n - 1`` seeded draws, the local lr within ½ decade of the
  starting point's (the same draws for every starting point);
* **rs**: each configuration trained ``rounds`` rounds (``fednas sweep`` runner), the best by
  the clients' last-round validation accuracy reported (its test accuracy; never used);
* **sha**: successive halving over the same configurations (``fednas halving`` runner, ranked
  by the same validation accuracy), budget ``n · rounds`` rounds, exactly what rs spends;
* **rs_fedex**, **sha_fedex**: the same two searches with FedEx inside every run: 8 local
  configurations (lr, momentum, weight decay) around the run's own, perturbed by ±⅛ of the
  space's width (±½ decade of lr); the server keys and local epochs stay as drawn.

Every method's pick is also measured in the FedEx paper's *refine* setting
(:mod:`fednas.federated.refine`): each client fine-tunes the pick's final model on its own
training data (its local epochs; a FedEx run's θ's most likely local configuration, else the
run's own) and tests it on its shard of the test split, shards that follow the clients'
training label counts. Stored per seed in ``refine.json`` (the pick's weights are needed once;
they are not kept in git, ``--no-refine`` leaves it out).

Prints one JSON line (accuracies in %, mean and std over seeds): ``<m>_acc_mean/_std`` for m
in rs, sha, rs_fedex, sha_fedex (default start) and ``poor_<m>_acc_mean/_std`` (per seed the
mean of the two poor starts; each one under ``poor_by_factor``), the same with
``refine_acc`` for the refine setting, ``start_acc_mean`` /
``poor_start_acc_mean`` (the starting point alone, ``rounds`` rounds), ``budget_rounds``,
the aims, ``protocol``, ``seeds``, ``wall_s``. Records: ``<out-dir>/<digest>/seed-<s>/``
(``summary.json`` and one run dir per run), the line as ``<out-dir>/<digest>/summary.json``;
a rerun with the same protocol reuses finished seeds and runs.

Usage: ``python bench/fedex_protocol.py [--seeds 0,1,2] [--quick] [--configs 9] [--rounds 3]
[--eta 3] [--perturbation 0.125] [--set KEY=VALUE ...] [--no-refine]
[--out-dir bench/results/fedex_protocol]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fednas.config.loading import load_config
from fednas.reporting.rundir import atomic_write_text
from fednas.reporting.sweep_report import collect
from fednas.tuning.protocol import LOCAL, SPACE, equal_budget, poor_start, sample_configs
from simulations.halving_runs import run_halving
from simulations.refine_runs import refine_run_dir
from simulations.sweep import parse_seeds, run_sweep

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "simulations" / "fedex_fashion.toml"
OUT = REPO / "bench" / "results" / "fedex_protocol"
BASE = ['phases=["baseline"]', "federation.fraction-evaluate=1.0",
        "federation.server-eval-samples=0", "federation.checkpoint-every=0",
        "runtime.progress=false", "data.max-train=12000", 'name="fedex_protocol"']
FEDEX_HPS = {"retrain.lr": "lr", "retrain.momentum": "momentum",
             "retrain.weight-decay": "weight-decay"}
METHODS = ("rs", "sha", "rs_fedex", "sha_fedex")
DEFAULTS = {"configs": 9, "rounds": 3, "eta": 3, "poor": [0.1, 10.0], "fedex_configs": 8,
            "perturbation": 0.125}
QUICK = {"configs": 2, "rounds": 2, "eta": 2}
QUICK_SETS = ["data.max-train=600", "partition.num-clients=3", "federation.min-fit-clients=2",
              "baseline.width=8", "federation.server-eval-samples=500"]


def fedex_sets(protocol: dict[str, Any]) -> list[str]:
    """FedEx over lr / momentum / weight decay, its ranges the space's own."""
    sets = ["fedex.mode=\"joint\"", f"fedex.configs={protocol['fedex_configs']}",
            f"fedex.perturbation-scale={protocol['perturbation']}",
            f"fedex.tune={json.dumps(list(FEDEX_HPS.values()))}"]
    for axis in SPACE:
        if axis.key in FEDEX_HPS:
            name = FEDEX_HPS[axis.key]
            sets += [f"fedex.ranges.{name}.low={axis.low}",
                     f"fedex.ranges.{name}.high={axis.high}",
                     f"fedex.ranges.{name}.log={str(axis.log).lower()}"]
    return sets


def starting_point(sets: list[str]) -> dict[str, Any]:
    """The scenario's values of the space's keys (the good starting point)."""
    cfg = load_config(SCENARIO, sets)
    f, r = cfg.federation, cfg.retrain
    return {"federation.server-lr": f.server_lr, "federation.server-momentum":
            f.server_momentum, "retrain.lr": r.lr, "retrain.momentum": r.momentum,
            "retrain.weight-decay": r.weight_decay, "federation.local-epochs": f.local_epochs}


def as_sets(config: dict[str, Any]) -> list[str]:
    return [f"{k}={int(v) if k == 'federation.local-epochs' else repr(float(v))}"
            for k, v in config.items()]


def val_acc(metrics: list[dict]) -> float:
    try:
        x = float(metrics[-1].get("client_val_acc", math.nan))
    except (TypeError, ValueError):
        return -math.inf
    return x if math.isfinite(x) else -math.inf


def random_search(configs: list[dict], sets: list[str], seed: int, rounds: int,
                  out: Path) -> dict[str, Any]:
    """Each configuration ``rounds`` rounds through the sweep runner; the best by val acc."""
    runs = []
    for i, config in enumerate(configs):
        root, _ = run_sweep(SCENARIO, [*sets, *as_sets(config),
                                       f"federation.subnet-rounds={rounds}"], [], [seed],
                            out_dir=str(out / f"c{i:02d}"))
        done, failed = collect([root])
        if failed:
            raise SystemExit(f"bench/fedex_protocol: run failed ({config}, seed {seed}): "
                             f"{failed}")
        runs.append({"val_acc": val_acc(done[0]["metrics"]),
                     "test_acc": done[0]["summary"]["models"]["baseline"]["test_acc"]})
    best = max(range(len(runs)), key=lambda i: (runs[i]["val_acc"], -i))
    return {"best": best, "test_acc": runs[best]["test_acc"], "rounds_used":
            rounds * len(configs), "runs": [{**r, "val_acc": _finite(r["val_acc"])}
                                            for r in runs]}


def halving(configs: list[dict], sets: list[str], seed: int, budget: int, eta: int,
            out: Path) -> dict[str, Any]:
    """Successive halving over ``configs`` (reuses a finished halving under ``out``, and
    continues an interrupted one)."""
    found = sorted(out.glob("*-halving-*/halving.json"))
    if not found:
        cands = [dict(s.split("=", 1) for s in as_sets(c)) for c in configs]
        partial = sorted(out.glob("*-halving-*/progress.json"))
        with contextlib.redirect_stdout(sys.stderr):
            run_halving(SCENARIO, [*sets, f"seed={seed}",
                                   f"runtime.out-dir={json.dumps(str(out))}"], [],
                        budget=budget, eta=eta, console=Console(stderr=True), cands=cands,
                        score_keys=("client_val_acc",), maximize=True,
                        resume=partial[-1].parent if partial else None)
        found = sorted(out.glob("*-halving-*/halving.json"))
    record = json.loads(found[-1].read_text())
    return {"best": record["best"]["index"],
            "test_acc": record["best"]["models"]["baseline"]["test_acc"],
            "rounds_used": record["rounds_used"],
            "rungs": [{"rounds": r["rounds"], "scores": r["scores"]} for r in record["rungs"]]}


def run_seed(seed: int, protocol: dict[str, Any], sets: list[str], out: Path) -> dict:
    """Every start × method of one seed (record ``out/summary.json``, reused when there)."""
    path = out / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"fedex_protocol: seed {seed} ({out})", file=sys.stderr)
    t0 = time.time()
    n, rounds, eta = protocol["configs"], protocol["rounds"], protocol["eta"]
    budget = equal_budget(n, rounds, eta)
    good = starting_point(sets)
    starts = {"default": good, **{f"lr-x{f:g}": poor_start(good, f) for f in protocol["poor"]}}
    record: dict[str, Any] = {"seed": seed, "budget_rounds": budget, "starts": {}}
    for label, start in starts.items():
        configs = sample_configs(SPACE, start, n, np.random.default_rng([seed, 2021]))
        res: dict[str, Any] = {"start": start, "configs": configs}
        for fx in (False, True):
            arm = [*sets, f"fedex.enabled={str(fx).lower()}", *(fedex_sets(protocol) if fx
                                                                 else [])]
            tag = "_fedex" if fx else ""
            res[f"rs{tag}"] = random_search(configs, arm, seed, rounds,
                                            out / label / f"rs{tag}")
            res[f"sha{tag}"] = halving(configs, arm, seed, budget, eta,
                                       out / label / f"sha{tag}")
            for m in (f"rs{tag}", f"sha{tag}"):
                if res[m]["rounds_used"] != budget:
                    raise SystemExit(f"bench/fedex_protocol: {m} spent "
                                     f"{res[m]['rounds_used']} of {budget} rounds")
        record["starts"][label] = res
    record["wall_s"] = round(time.time() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def pick_dir(out: Path, start: str, method: str, best: int) -> Path:
    """The run dir of a method's pick (the run whose final model it reports)."""
    base = out / start / method
    if method.startswith("rs"):
        found = [p.parent for p in sorted(base.glob(f"c{best:02d}/*/*/*/summary.json"))
                 if not p.parent.name.endswith(".incomplete")]
    else:  # the winner's dir sits beside its halving.json (which holds an absolute path)
        found = [record.parent / Path(json.loads(record.read_text())["best"]["run_dir"]).name
                 for record in sorted(base.glob("*-halving-*/halving.json"))[-1:]]
        found = [d for d in found if d.is_dir()]
    if not found:
        raise SystemExit(f"bench/fedex_protocol: no finished run of {method}'s pick "
                         f"(candidate {best}) under {base}")
    return found[-1]


def refine_run(run_dir: Path) -> dict[str, Any]:
    """The pick's final model in the refine setting (:func:`refine_run_dir`: with θ's most
    likely local configuration for a FedEx run, else with the run's own)."""
    try:
        return refine_run_dir(run_dir, device=torch.device("cpu"))
    except FileNotFoundError as err:
        raise SystemExit(f"bench/fedex_protocol: {err} (weights are not kept in git; "
                         "--no-refine leaves the refine figures out)") from None


def refine_seed(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Refine figures of every start × method pick of one seed (``out/refine.json``, reused
    when there)."""
    path = out / "refine.json"
    if path.is_file():
        return json.loads(path.read_text())
    res: dict[str, Any] = {}
    for start, methods in record["starts"].items():
        res[start] = {}
        for m in METHODS:
            run_dir = pick_dir(out, start, m, methods[m]["best"])
            res[start][m] = {"run": str(run_dir.relative_to(out)),
                             **refine_run(run_dir)}
    atomic_write_text(path, json.dumps(res, indent=1) + "\n")
    return res


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return (round(100 * statistics.mean(xs), 2),
            round(100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0), 2))


def summarise(records: list[dict], protocol: dict[str, Any],
              refines: list[dict] | None = None) -> dict[str, Any]:
    """The JSON line: per method mean ± std over seeds, good and poor starts, and the aims;
    with ``refines`` (per seed, :func:`refine_seed`) the same for the refine accuracy."""
    poor = [f"lr-x{f:g}" for f in protocol["poor"]]
    out: dict[str, Any] = {"budget_rounds": records[0]["budget_rounds"]}
    by_factor: dict[str, dict[str, float]] = {p: {} for p in poor}
    figures: list[tuple[str, list[dict], Any]] = [
        ("acc", records, lambda r, s, m: r["starts"][s][m]["test_acc"])]
    if refines is not None:
        figures.append(("refine_acc", refines, lambda r, s, m: r[s][m]["refine_acc"]))
    for name, recs, get in figures:
        for m in METHODS:
            out[f"{m}_{name}_mean"], out[f"{m}_{name}_std"] = mean_sd(
                [get(r, "default", m) for r in recs])
            out[f"poor_{m}_{name}_mean"], out[f"poor_{m}_{name}_std"] = mean_sd(
                [statistics.mean(get(r, p, m) for p in poor) for r in recs])
            for p in poor:
                by_factor[p][f"{m}_{name}_mean"], by_factor[p][f"{m}_{name}_std"] = mean_sd(
                    [get(r, p, m) for r in recs])
    start = [r["starts"]["default"]["rs"]["runs"][0]["test_acc"] for r in records]
    poor_start_acc = [statistics.mean(r["starts"][p]["rs"]["runs"][0]["test_acc"] for p in poor)
                      for r in records]
    out["start_acc_mean"], out["start_acc_std"] = mean_sd(start)
    out["poor_start_acc_mean"], out["poor_start_acc_std"] = mean_sd(poor_start_acc)
    out["poor_by_factor"] = by_factor
    for name, _, _ in figures:
        tag = "" if name == "acc" else "_refine"
        out[f"aim_sha_fedex_ge_sha_plus_1{tag}"] = (out[f"sha_fedex_{name}_mean"]
                                                    >= out[f"sha_{name}_mean"] + 1)
        out[f"aim_poor_fedex_within_2{tag}"] = all(
            out[f"poor_{m}_{name}_mean"] >= out[f"{m}_{name}_mean"] - 2
            for m in ("rs_fedex", "sha_fedex"))
    out["protocol"] = protocol
    out["seeds"] = [r["seed"] for r in records]
    out["wall_s"] = round(sum(r["wall_s"] for r in records), 1)
    return out


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--configs", type=int, help="n configurations per search (9)")
    parser.add_argument("--rounds", type=int, help="rounds per random-search run (3)")
    parser.add_argument("--eta", type=int, help="successive halving's eta (3)")
    parser.add_argument("--perturbation", type=float,
                        help="FedEx's perturbation scale (0.125 of each range)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="scenario override for every run (KEY=VALUE)")
    parser.add_argument("--out-dir", default=str(OUT))
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="leave out the refine evaluation (it needs the picks' weights)")
    args = parser.parse_args()
    protocol = {**DEFAULTS, **(QUICK if args.quick else {}),
                **{k: v for k, v in (("configs", args.configs), ("rounds", args.rounds),
                                     ("eta", args.eta), ("perturbation", args.perturbation))
                   if v is not None}}
    sets = [*BASE, *(QUICK_SETS if args.quick else []), *args.overrides]
    equal_budget(protocol["configs"], protocol["rounds"], protocol["eta"])  # fail early
    load_config(SCENARIO, [*sets, *fedex_sets(protocol)])
    key = {"protocol": protocol, "sets": sets, "space": [a.__dict__ for a in SPACE],
           "local": LOCAL}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(args.out_dir) / digest
    records = []
    for seed in parse_seeds(args.seeds):
        records.append(run_seed(seed, protocol, sets, root / f"seed-{seed}"))
    refines = ([refine_seed(r, root / f"seed-{r['seed']}") for r in records] if args.refine
               else None)
    line = summarise(records, protocol, refines)
    atomic_write_text(root / "summary.json", json.dumps({**line, "sets": sets}, indent=1) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
