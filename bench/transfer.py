"""Plain transfer (issue 32): DAP vs random and magnitude pruning at equal complexity and the
unpruned model, each fine-tuned conventionally on k labelled glyphs per class of unseen scripts.

Per seed (glyphs with ``glyph_samples`` renders per class, classes split by script into
meta-train/val/test with the fixed ``split_seed``, as ``simulations/fewshot_glyphs.toml``):

1. **Source**: a Conv-4 (``width`` channels, running BN statistics) trained conventionally on
   every meta-train class (Adam, cosine lr, ``source_steps`` batches of ``source_batch``;
   ``source_holdout`` of its samples held out to report its accuracy).
2. **DAP**: gates trained on the same meta-train data with the weights frozen
   (:func:`fednas.compression.dap.train_gates`) to ``target`` of the params, then
   :func:`~fednas.compression.dap.select` and ``extract``. Complexity is always that of the
   *transfer* network (Conv-4 body + a ``ways``-class head): the 1236-class source head is
   not deployed, so the gates' cost model is built on a ``ways``-class copy.
3. **Baselines at the same complexity, same source weights**: ``random_prune`` keeps as many
   units per layer as DAP, chosen uniformly (identical cost); ``magnitude_prune`` is L1-norm
   pruning to the same budget (:mod:`fednas.compression.transfer`); ``full_finetune`` is the
   unpruned source model.
4. **Transfer**: for each k in ``shots``, ``tasks`` seeded ``ways``-way k-shot tasks on the
   meta-test classes with ``queries`` queries per class, the same for every method. Each
   model gets a fresh head and is fine-tuned (every weight, Adam, ``ft_steps`` steps of
   batches of ``ft_batch``, BN statistics frozen), then scored on the query set. The lr is
   chosen per method and k from ``ft_lrs`` on ``val_tasks`` tasks of the meta-val classes
   (never on test).

Prints one JSON line: ``<method>_<k>shot_acc_mean`` / ``_ci95`` (percent; mean over seeds of
the per-seed mean over tasks, 95 % Student-t half-width over the seed means, df = seeds − 1;
``null`` with one seed), ``dap_minus_<method>_<k>shot_mean`` / ``_ci95`` (paired, same
tasks; ``_ci95_tasks``: normal half-width over every seed's tasks pooled, which ignores that
a seed's tasks share one source model), ``<method>_params_ratio`` (pruned / full params of
the transfer network), ``aim_dap_ge_random_and_magnitude_all_k``,
``aim_dap_within_1pt_of_full_at_k20`` (and DAP at ≤ 50 % params), the protocol, ``seeds``,
``tasks_per_k``, ``seed_wall_s`` (as recorded), ``wall_s`` (this call). Each seed's config and
metrics are kept as ``<out-dir>/<protocol digest>/seed-<s>/summary.json``, the line itself as
``<out-dir>/<digest>/summary.json``; a rerun with the same protocol reuses finished seeds.

Usage: ``python bench/transfer.py [--seeds 0,1,2] [--quick] [--target 0.5]
[--set KEY=VALUE ...] [--out-dir bench/results/transfer]`` (``--set ft_steps=100``: a
:class:`Protocol` field, JSON value; ``--quick``: tiny settings, QUICK).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fednas.compression.budget import Budget
from fednas.compression.dap import extract, select, train_gates
from fednas.compression.dap_gates import DapGates, measure
from fednas.compression.transfer import (
    draw_tasks,
    magnitude_keep,
    new_head,
    random_keep,
    select_lr,
    task_accuracies,
)
from fednas.data.episodes import FewShotSet, split_classes
from fednas.data.fewshot import load_fewshot
from fednas.data.glyphs import GlyphOptions
from fednas.models.conv4 import Conv4
from fednas.reporting.sweep_report import mean_std_ci
from fednas.training.train import cycle_batches, evaluate, resolve_device, seed_everything

METHODS = ("full_finetune", "dap", "random_prune", "magnitude_prune")
OUT = Path(__file__).resolve().parent / "results" / "transfer"


@dataclass(frozen=True)
class Protocol:
    """Everything that determines a seed's numbers (its digest names the record dir)."""

    glyph_samples: int = 40  # renders per glyph class (k = 20 + 15 queries need 35)
    glyph_scripts: tuple[str, ...] = ()  # () = every script
    glyph_letters: int = 40  # letters per script at most
    split: tuple[float, float, float] = (0.64, 0.16, 0.2)  # meta-train/val/test classes
    split_seed: int = 0  # fixed: every seed sees the same unseen test scripts
    width: int = 32  # Conv-4 channels
    source_steps: int = 1500  # Adam steps of the source training (~2 epochs)
    source_batch: int = 64
    source_lr: float = 2e-3  # cosine to 0
    source_holdout: float = 0.05  # meta-train samples held out to score the source model
    target: float = 0.5  # DAP's params budget, fraction of the transfer network
    gate_steps: int = 300
    gate_batch: int = 64
    gate_lr: float = 0.05
    gate_lambda: float = 20.0  # λ = 5 left the mode 33 % over the budget after 300 steps
    ways: int = 20  # 5-way glyph tasks saturate at k >= 5 (meta-val: 99.6 %, 100 %)
    shots: tuple[int, ...] = (1, 5, 20)
    queries: int = 15  # per class, fixed per task
    tasks: int = 15  # test tasks per k and seed
    val_tasks: int = 3  # meta-val tasks per k, seed and lr candidate
    ft_steps: int = 50  # fine-tuning steps, every method and k
    ft_batch: int = 50  # capped at the support size (k = 1: 20)
    ft_lrs: tuple[float, ...] = (5e-4, 1e-3, 3e-3)  # Adam, chosen per method and k on val
    bn: str = "frozen"  # BN statistics during fine-tuning


QUICK = {"width": 8, "source_steps": 20, "gate_steps": 10, "ways": 5, "tasks": 2,
         "val_tasks": 1, "ft_steps": 2, "ft_lrs": (1e-3, 3e-3), "source_holdout": 0.01}


def protocol_from(quick: bool, target: float | None, sets: list[str]) -> Protocol:
    """:class:`Protocol` with ``--quick``, ``--target`` and ``--set KEY=VALUE`` (JSON) applied.

    Raises
    ------
    ValueError
        Naming an unknown key or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(Protocol)}
    values = {**(QUICK if quick else {}), **({} if target is None else {"target": target})}
    for item in sets:
        key, _, raw = item.partition("=")
        if key not in fields:
            raise ValueError(f"Unknown protocol key: {key} (known: {', '.join(fields)})")
        value = json.loads(raw)
        default = getattr(Protocol(), key)
        value = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
        value = float(value) if isinstance(default, float) and type(value) is int else value
        if type(value) is not type(default):
            raise ValueError(f"{key}: expected {type(default).__name__}, got {raw!r}")
        values[key] = value
    return Protocol(**values)


def train_source(p: Protocol, data: tuple[torch.Tensor, torch.Tensor], classes: int,
                 device: torch.device, generator: torch.Generator) -> Conv4:
    """The source Conv-4, trained on ``data`` (labels ``0..classes-1``)."""
    x, y = data
    model = Conv4(input_shape=tuple(x.shape[1:]), num_classes=classes, hidden=p.width,
                  batch_stats=False).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=p.source_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(p.source_steps, 1))
    model.train()
    for _, idx in zip(range(p.source_steps), cycle_batches(len(y), p.source_batch, generator),
                      strict=False):
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def run_seed(p: Protocol, seed: int, data: FewShotSet, device: torch.device) -> dict:
    """One seed of the protocol (module docstring): its config-free metrics record."""
    t0 = time.perf_counter()
    generator = seed_everything(seed)
    split = split_classes(data, p.split, by="script", seed=p.split_seed)
    idx = split.indices(data.y, "train")
    remap = {int(c): i for i, c in enumerate(split.train)}
    x, y = data.x[idx], torch.tensor([remap[int(c)] for c in data.y[idx]])
    held = torch.randperm(len(y), generator=generator)
    cut = int(p.source_holdout * len(y))
    train, holdout = (x[held[cut:]], y[held[cut:]]), (x[held[:cut]], y[held[:cut]])
    source = train_source(p, train, len(split.train), device, generator)
    source_acc = evaluate(source, holdout, batch_size=512, device=device)["eval_acc"]
    t_source = time.perf_counter() - t0

    shape = tuple(data.x.shape[1:])
    deployed = Conv4(input_shape=shape, num_classes=p.ways, hidden=p.width, batch_stats=False)
    gates = DapGates(deployed, shape)  # cost of the transfer network (ways-class head)
    budget = Budget(params=p.target)
    stats = train_gates(source, gates, train, budget=budget, device=device, generator=generator,
                        steps=p.gate_steps, batch_size=p.gate_batch, lr=p.gate_lr,
                        lam=p.gate_lambda)
    keeps = {"dap": select(gates, budget)}
    keeps["random_prune"] = random_keep(gates, keeps["dap"], generator)
    keeps["magnitude_prune"] = magnitude_keep(source, gates, budget)
    nets = {"full_finetune": source, **{m: extract(source, gates, k) for m, k in keeps.items()}}
    t_gates = time.perf_counter() - t0 - t_source

    record: dict = {"seed": seed, "source_holdout_acc": round(100 * source_acc, 2),
                    "source_classes": len(split.train), "full": {}, "models": {},
                    "gates": {k: stats[k] for k in ("expected_params", "mode_params",
                                                    "kept_units", "limits", "task_loss")}}
    full = gates.full
    record["full"] = {"params": full[0], "flops": full[1]}
    for method, net in nets.items():
        check = copy.deepcopy(net).cpu()
        new_head(check, p.ways, generator)
        params, flops = measure(check, shape)
        entry: dict = {"params": params, "flops": flops, "params_ratio": params / full[0],
                       "flops_ratio": flops / full[1]}
        if method in keeps:
            entry["kept_units"] = [int(k.sum()) for k in keeps[method]]
            if gates.hard_cost(keeps[method]) != (params, flops):
                raise RuntimeError(f"bench/transfer: {method} measures {(params, flops)}, the "
                                   f"cost model says {gates.hard_cost(keeps[method])}")
        record["models"][method] = entry

    ft = {"steps": p.ft_steps, "batch_size": p.ft_batch, "device": device, "bn": p.bn}
    for k in p.shots:
        val = draw_tasks(data, split.val, ways=p.ways, shots=k, queries=p.queries,
                         count=p.val_tasks, seed=10_000 * seed + 100 + k)
        test = draw_tasks(data, split.test, ways=p.ways, shots=k, queries=p.queries,
                          count=p.tasks, seed=10_000 * seed + k)
        for method, net in nets.items():
            lr, scores = select_lr(net, val, p.ft_lrs, seed=10_000 * seed + 500 + k, **ft)
            accs = task_accuracies(net, test, lr=lr, seed=10_000 * seed + 700 + k, **ft)
            record["models"][method][f"{k}shot"] = {
                "acc": round(100 * float(np.mean(accs)), 2), "lr": lr,
                "val_acc": {str(c): round(100 * s, 2) for c, s in scores.items()},
                "task_accs": [round(100 * a, 2) for a in accs]}
        print(f"bench/transfer: seed {seed} {k}-shot: " + ", ".join(
            f"{m} {record['models'][m][f'{k}shot']['acc']:.1f}" for m in nets), file=sys.stderr)
    record["wall_s"] = {"source": round(t_source, 1), "gates": round(t_gates, 1),
                        "transfer": round(time.perf_counter() - t0 - t_source - t_gates, 1),
                        "total": round(time.perf_counter() - t0, 1)}
    return record


def ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and Student-t 95 % half-width (None for a single value), rounded."""
    mean, _, half = mean_std_ci(values)
    return round(mean, 2), (round(half, 2) if len(values) > 1 else None)


def aggregate(p: Protocol, records: list[dict]) -> dict:
    """The bench keys over the seeds' records (module docstring)."""
    out: dict = {}
    for k in p.shots:
        for method in METHODS:
            accs = [r["models"][method][f"{k}shot"]["acc"] for r in records]
            out[f"{method}_{k}shot_acc_mean"], out[f"{method}_{k}shot_acc_ci95"] = ci(accs)
            if method != "dap":
                diff = [r["models"]["dap"][f"{k}shot"]["acc"]
                        - r["models"][method][f"{k}shot"]["acc"] for r in records]
                short = method.removesuffix("_finetune").removesuffix("_prune")
                out[f"dap_minus_{short}_{k}shot_mean"], out[f"dap_minus_{short}_{k}shot_ci95"] \
                    = ci(diff)
                pooled = np.concatenate([np.subtract(r["models"]["dap"][f"{k}shot"]["task_accs"],
                                                     r["models"][method][f"{k}shot"]["task_accs"])
                                         for r in records])
                out[f"dap_minus_{short}_{k}shot_ci95_tasks"] = round(float(
                    1.96 * pooled.std(ddof=1) / np.sqrt(len(pooled))), 2) if len(pooled) > 1 \
                    else None
    for method in METHODS[1:]:
        out[f"{method}_params_ratio"] = round(statistics.mean(
            r["models"][method]["params_ratio"] for r in records), 4)
        out[f"{method}_flops_ratio"] = round(statistics.mean(
            r["models"][method]["flops_ratio"] for r in records), 4)
    out["aim_dap_ge_random_and_magnitude_all_k"] = all(
        out[f"dap_{k}shot_acc_mean"] >= out[f"{m}_{k}shot_acc_mean"]
        for k in p.shots for m in ("random_prune", "magnitude_prune"))
    last = max(p.shots)
    out[f"aim_dap_within_1pt_of_full_at_k{last}"] = bool(
        out[f"full_finetune_{last}shot_acc_mean"] - out[f"dap_{last}shot_acc_mean"] <= 1.0
        and out["dap_params_ratio"] <= 0.5)
    out["lr_per_seed"] = {f"{m}_{k}shot": [r["models"][m][f"{k}shot"]["lr"] for r in records]
                          for m in METHODS for k in p.shots}
    out["source_holdout_acc_mean"] = round(statistics.mean(
        r["source_holdout_acc"] for r in records), 2)
    out["full_params"] = records[0]["full"]["params"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="tiny settings (QUICK)")
    parser.add_argument("--target", type=float, help="DAP's params fraction (default 0.5)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="KEY=VALUE (JSON) of a Protocol field")
    parser.add_argument("--out-dir", default=str(OUT))
    parser.add_argument("--root", default="~/.cache/fednas", help="glyph cache (data.root)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    p = protocol_from(args.quick, args.target, args.sets)
    config = asdict(p)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(args.out_dir) / digest
    seeds = [int(s) for s in args.seeds.split(",")]
    data = None
    records = []
    for seed in seeds:
        path = root / f"seed-{seed}" / "summary.json"
        if path.is_file():
            records.append(json.loads(path.read_text())["metrics"])
            continue
        if data is None:
            options = GlyphOptions(scripts=p.glyph_scripts or None,
                                   max_per_script=p.glyph_letters,
                                   samples_per_class=p.glyph_samples)
            data = load_fewshot("glyphs", Path(args.root).expanduser(), glyph_options=options)
        record = run_seed(p, seed, data, resolve_device(args.device))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": config, "device": args.device,
                                    "metrics": record}, indent=1))
        records.append(record)
    line = {**aggregate(p, records), "seeds": seeds, "tasks_per_k": p.tasks,
            "ci95": "Student t over the seed means (df = seeds - 1); _ci95_tasks: normal "
                    "over the pooled paired task differences", "quick": args.quick,
            "seed_wall_s": [r["wall_s"]["total"] for r in records],
            "wall_s": round(time.perf_counter() - t0, 1), "protocol": config,
            "records": str(root)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(line, indent=1))
    print(table(p, line), file=sys.stderr)
    print(json.dumps(line))


def table(p: Protocol, line: dict) -> str:
    """The protocol and a k × method table (mean ± CI, %), for the terminal."""
    rows = [f"bench/transfer: {p.ways}-way, {p.queries} queries/class, {line['tasks_per_k']} "
            f"test tasks per k and seed, seeds {line['seeds']}; Conv-4 width {p.width}, "
            f"{p.source_steps} source steps; DAP to {p.target:g} params ({p.gate_steps} gate "
            f"steps, lambda {p.gate_lambda:g}); fine-tuning {p.ft_steps} Adam steps, batch "
            f"{p.ft_batch}, lr from {list(p.ft_lrs)} on {p.val_tasks} meta-val tasks",
            "k  " + "".join(f"{m:>22}" for m in METHODS)]
    for k in p.shots:
        cells = []
        for m in METHODS:
            half = line[f"{m}_{k}shot_acc_ci95"]
            cells.append(f"{line[f'{m}_{k}shot_acc_mean']:.2f} ± "
                         f"{'-' if half is None else f'{half:.2f}'}")
        rows.append(f"{k:<3}" + "".join(f"{c:>22}" for c in cells))
    rows.append("params ratio " + ", ".join(f"{m}: {line[f'{m}_params_ratio']}"
                                            for m in METHODS[1:]))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
