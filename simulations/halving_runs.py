"""Successive halving over federated runs: tune server-side HPs (server lr/momentum, FedEx η0).

``fednas halving SCENARIO --grid federation.server-lr=0.5,1,2 --budget 24`` makes one
candidate configuration per grid point, runs each for the first rung's rounds, keeps the best
``1/eta`` by the clients' validation loss, continues the survivors from their checkpoints,
and so on (:func:`fednas.tuning.halving.successive_halving`); the rounds spent by all candidates
together never exceed ``budget``.

Every candidate is configured with the final rung's round count (so learning-rate schedules
span the same horizon) and *paused* at each rung boundary; continuing a paused run gives the
same result as an uninterrupted one (it resumes from its checkpoint). The score of a candidate
is its last round's ``client_val_loss`` (federated evaluation of the global model on the
clients' val splits) or, when absent, ``val_loss`` (the clients' post-training val loss that
FedEx asks for); the test split is never used for selection.

Layout: ``<out-dir>/<name>-halving-<time>/`` holds one run dir per candidate (``c00-…``),
``progress.json`` (the plan, and each candidate's run dir and score at every rung it finished;
rewritten after every rung step) and, at the end, ``halving.json`` (plan, rungs, scores, best
candidate, rounds used, its test accuracy). An interrupted halving continues with
``resume=<that dir>``: the rung steps in ``progress.json`` are not run again, and a candidate
interrupted between rung boundaries continues from its last checkpoint (the pause at the
previous boundary).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from fednas.config.grid import candidates
from fednas.config.grid import parse_grid as _parse_grid
from fednas.config.loading import load_config
from fednas.config.preflight import check_output_dir
from fednas.config.run_config import RunConfig
from fednas.errors import ConfigError, FedNASError
from fednas.reporting.rundir import atomic_write_text, read_metrics
from fednas.tuning.halving import schedule, successive_halving

ROUND_KEYS = {"search": "federation.rounds", "baseline": "federation.subnet-rounds"}
FIXED_KEYS = ("federation.rounds", "federation.subnet-rounds", "phases", "mode", "name",
              "runtime.out-dir")
SCORE_KEYS = ("client_val_loss", "val_loss")
PROGRESS = "progress.json"


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """The halving candidates' grid (round counts, phases, mode, name and out-dir are fixed)."""
    return _parse_grid(specs, command="halving", fixed=FIXED_KEYS)


def tuned_phase(cfg: RunConfig) -> str:
    """The one federated round phase a halving run advances (``search`` or ``baseline``)."""
    if cfg.mode != "federated":
        raise ConfigError("halving: mode must be \"federated\" (successive halving continues "
                          "federated runs from their checkpoints)")
    if tuple(cfg.phases) not in (("search",), ("baseline",)):
        raise ConfigError(f"halving: phases = {list(cfg.phases)}; a halving run advances one "
                          "phase: set phases = [\"search\"] or [\"baseline\"]")
    phase = cfg.phases[0]
    if not (cfg.fedex.enabled or (phase != "search" and cfg.federation.fraction_evaluate > 0)):
        raise ConfigError(f"halving: phase {phase!r} reports no validation loss to rank "
                          "candidates; enable [fedex] (clients report their val loss)"
                          + ("" if phase == "search" else
                             " or set federation.fraction-evaluate > 0"))
    return phase


def score(run_dir: Path, phase: str, keys: tuple[str, ...] = SCORE_KEYS) -> float:
    """The candidate's last-round value of the first of ``keys`` it logs (default: its
    validation loss; inf when none is finite)."""
    rows = [m for m in read_metrics(run_dir) if m.get("phase") == phase]
    for key in keys:
        values = [m[key] for m in rows if key in m]  # metrics.jsonl writes NaN as "nan"
        if values:
            try:
                last = float(values[-1])
            except (TypeError, ValueError):
                return math.inf
            return last if math.isfinite(last) else math.inf
    return math.inf


def run_halving(scenario: Path | None, overrides: list[str], grid_specs: list[str], *,
                budget: int, eta: int = 3, console=None,
                cands: list[dict[str, str]] | None = None,
                score_keys: tuple[str, ...] = SCORE_KEYS,
                maximize: bool = False, resume: Path | None = None) -> dict[str, Any]:
    """Run successive halving; returns (and writes to ``halving.json``) its record.

    ``cands`` (key -> value, as ``--set`` writes them) replaces the grid's product, e.g. with
    randomly sampled configurations; ``score_keys``/``maximize`` rank by another metric
    (``("client_val_acc",)``, True: the clients' validation accuracy). ``resume``: the dir of
    an interrupted halving of the same plan (scenario overrides, candidates, budget, eta and
    score), continued where it stopped.
    """
    from rich.console import Console

    from simulations.simulation import run_federated

    console = console or Console(stderr=True)
    base = load_config(scenario, overrides)
    phase = tuned_phase(base)
    cands = candidates(parse_grid(grid_specs)) if cands is None else cands
    plan = schedule(len(cands), budget, eta)
    horizon = plan[-1][1]
    key = {"overrides": list(overrides), "candidates": cands, "budget": budget, "eta": eta,
           "score_keys": list(score_keys), "maximize": maximize}
    if resume is None:
        root = (Path(base.runtime.out_dir) /
                f"{base.name}-halving-{time.strftime('%Y%m%d-%H%M%S')}")
        check_output_dir(root, "runtime.out-dir")
        progress: dict[str, Any] = {"plan": key, "done": {}}
    else:
        root, progress = Path(resume), resumable(Path(resume), key)
    configs = []
    for i, cand in enumerate(cands):  # validate every candidate before any work
        sets = [*overrides, *(f"{k}={v}" for k, v in cand.items()),
                f"{ROUND_KEYS[phase]}={horizon}", f'name="c{i:02d}"',
                f"runtime.out-dir={json.dumps(str(root))}"]
        try:
            configs.append(load_config(scenario, sets))
        except ConfigError as exc:
            raise ConfigError(f"halving candidate {cand}: {exc}") from exc
    root.mkdir(parents=True, exist_ok=resume is not None)
    atomic_write_text(root / PROGRESS, json.dumps(progress, indent=1) + "\n")
    done = progress["done"]
    run_dirs = {int(i): Path(d["run_dir"]) for i, d in done.items()}
    reached = {int(i): max(int(r) for r in d["scores"]) for i, d in done.items()}

    def advance(i: int, _cand: dict[str, str], rounds: int) -> float:
        if str(rounds) in done.get(str(i), {}).get("scores", {}):  # done before a resume
            return float(done[str(i)]["scores"][str(rounds)])
        stop = (phase, rounds) if rounds < horizon else None
        console.print(f"[bold]halving[/] candidate {i} {cands[i]}: to round {rounds}")
        run_dir, _ = run_federated(configs[i], console, resume_dir=run_dirs.get(i),
                                   stop_after=stop)
        run_dirs[i], reached[i] = run_dir, rounds
        value = score(run_dir, phase, score_keys)
        entry = done.setdefault(str(i), {"scores": {}})
        entry["run_dir"] = str(run_dir)
        entry["scores"][str(rounds)] = _finite(value)
        atomic_write_text(root / PROGRESS, json.dumps(progress, indent=1) + "\n")
        return value

    try:
        result = successive_halving(cands, advance, budget=budget, eta=eta, maximize=maximize)
    except FedNASError:  # e.g. a data error of the first candidate: leave nothing behind
        if resume is None and not done:
            (root / PROGRESS).unlink(missing_ok=True)
            if not any(root.iterdir()):
                root.rmdir()
        raise
    best_dir = run_dirs[result.best]
    summary = json.loads((best_dir / "summary.json").read_text())
    record = {
        "scenario": base.name, "phase": phase, "budget": budget, "eta": eta,
        "horizon": horizon, "plan": [{"survivors": s, "rounds": r} for s, r in plan],
        "rounds_used": result.rounds_used,
        "score": (f"last-round {score_keys[0]} (higher=better)" if maximize else
                  "last-round client val loss (lower=better)" if score_keys == SCORE_KEYS
                  else f"last-round {score_keys[0]} (lower=better)"),
        "candidates": [{"index": i, "config": c, "run_dir": str(run_dirs.get(i, "")),
                        "rounds": reached.get(i, 0),
                        "score": _finite(score(run_dirs[i], phase, score_keys))
                        if i in run_dirs else None} for i, c in enumerate(cands)],
        "rungs": [{"rung": r.index, "rounds": r.rounds,
                   "scores": {str(i): _finite(s) for i, s in r.scores.items()}}
                  for r in result.rungs],
        "best": {"index": result.best, "config": result.best_candidate,
                 "run_dir": str(best_dir), "models": summary.get("models", {})},
    }
    atomic_write_text(root / "halving.json", json.dumps(record, indent=2) + "\n")
    record["dir"] = str(root)
    return record


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def resumable(root: Path, key: dict[str, Any]) -> dict[str, Any]:
    """The progress record of an interrupted halving in ``root``, checked against ``key``
    (the plan of the halving asked for); a ConfigError names what does not fit."""
    if (root / "halving.json").is_file():
        raise ConfigError(f"halving: {root} has finished (halving.json); nothing to resume")
    try:
        progress = json.loads((root / PROGRESS).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"halving: cannot resume {root}: no readable {PROGRESS} "
                          f"({exc})") from exc
    differ = sorted(k for k in key if progress.get("plan", {}).get(k) != key[k])
    if differ:
        raise ConfigError(f"halving: {root} was started with another {', '.join(differ)}; "
                          "resume it with the same plan, or start a new halving")
    return progress


def print_halving(record: dict[str, Any], console) -> None:
    """The candidates as a table: grid values, rounds reached, score; the best marked."""
    from rich.table import Table

    keys = list(record["candidates"][0]["config"]) if record["candidates"] else []
    table = Table(title=f"successive halving ({record['phase']}, {record['rounds_used']}/"
                        f"{record['budget']} rounds, eta {record['eta']})")
    for col in ["#", *keys, "rounds", "val loss"]:
        table.add_column(col, justify="right")
    for c in record["candidates"]:
        mark = " *" if c["index"] == record["best"]["index"] else ""
        s = c["score"]
        table.add_row(f"{c['index']}{mark}", *(c["config"][k] for k in keys), str(c["rounds"]),
                      f"{s:.4f}" if isinstance(s, float) else str(s))
    console.print(table)
    for name, m in record["best"]["models"].items():
        console.print(f"best candidate's {name}: test acc {100 * m['test_acc']:.2f} % "
                      f"after {m.get('rounds', record['horizon'])} rounds")
