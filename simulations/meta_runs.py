"""Entry points of the meta phase: ``fednas meta``, meta-only scenarios and the result table.

``fednas meta RUN_DIR`` runs the meta phase on a finished run (its config.toml, overridable
by ``--set meta.*`` / ``runtime.*``) and writes ``meta.json`` there; ``fednas meta
SCENARIO`` runs the scenario with ``meta`` added to its phases: a scenario whose only phase
is ``meta`` skips the search dataset entirely (:func:`run_meta_only`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fednas.config.loading import load_config
from fednas.config.preflight import check_output_dir, check_run_paths
from fednas.config.run_config import RunConfig
from fednas.errors import CheckpointError, ConfigError
from fednas.meta.phase import run_meta
from fednas.meta.setup import meta_setup
from fednas.reporting.rundir import RunDir
from fednas.training.train import resolve_device
from simulations.crash import note_run_dir

RUN_DIR_KEYS = ("meta.", "runtime.")  # what --set may change on a finished run


def with_meta(path: Path, overrides: list[str]) -> RunConfig:
    """The config at ``path`` plus ``overrides``, with 'meta' added to its phases."""
    cfg = load_config(path, overrides)
    if "meta" in cfg.phases:
        return cfg
    return load_config(path, [*overrides, f"phases={json.dumps([*cfg.phases, 'meta'])}"])


def run_meta_only(cfg: RunConfig, device: torch.device, console: Console | None = None
                  ) -> tuple[Path, dict[str, Any]]:
    """A scenario whose only phase is ``meta`` (Conv-4 / AT-NAS from scratch): a new run dir
    with config.toml, metrics.jsonl, meta.json and summary.json."""
    from fednas.version import __version__

    check_run_paths(cfg)
    run = RunDir(cfg.runtime.out_dir, cfg.name)
    note_run_dir(run.path)  # a bug's traceback goes there (simulations/crash.py)
    run.write_config(cfg)
    t0 = time.perf_counter()
    meta = run_meta(meta_setup(cfg), run, device, console)
    summary = {"scenario": cfg.name, "seed": cfg.seed, "device": str(device), "models": {},
               "genotype": None, "timings": {"meta": time.perf_counter() - t0},
               "run_dir": str(run.path), "meta": meta,
               "versions": {"fednas": __version__, "torch": torch.__version__}}
    run.write_json("summary.json", summary)
    return run.path, summary


def meta_command(target: Path, overrides: list[str], *, out_dir: str | None = None,
                 quiet: bool = False) -> int:
    """``fednas meta TARGET``: a run dir's meta phase, or a scenario run with 'meta'."""
    console, log = Console(), Console(stderr=True)
    overrides = [*overrides, *(["runtime.progress=false"] if quiet else [])]
    if target.is_dir():
        if not (target / "config.toml").is_file():
            raise CheckpointError(f"{target} is not a fednas run directory (no config.toml)")
        if out_dir:
            raise ConfigError("--out-dir: the meta phase of a run dir writes meta.json into "
                              "that run dir")
        bad = [o for o in overrides if not o.strip().startswith(RUN_DIR_KEYS)]
        if bad:
            raise ConfigError(f"--set {bad[0]!r}: on a finished run only meta.* and runtime.* "
                              "keys may change")
        cfg = with_meta(target / "config.toml", overrides)
        check_output_dir(target, "meta RUN_DIR")  # meta.json goes there
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        result = run_meta(meta_setup(cfg), target, resolve_device(cfg.runtime.device), log)
        print_meta(result, console)
        console.print(f"meta.json: {target / 'meta.json'}")
        return 0
    if out_dir:
        overrides.append(f"runtime.out-dir={json.dumps(out_dir)}")
    cfg = with_meta(target, overrides)
    if cfg.phases == ("meta",):
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        run_dir, summary = run_meta_only(cfg, resolve_device(cfg.runtime.device), log)
    elif cfg.mode == "federated":
        from simulations.simulation import run_federated

        run_dir, summary = run_federated(cfg, log)
    else:
        from simulations.pipeline import Pipeline

        run_dir, summary = Pipeline(cfg, log).run()
    if summary["models"]:
        from fednas.reporting.summary import print_summary

        print_summary(summary, console)
    print_meta(summary["meta"], console)
    console.print(f"run dir: {run_dir}")
    return 0


def print_meta(result: dict[str, Any], console: Console) -> None:
    """Accuracy ± 95 % CI per model and shot count (and AT-NAS) as a rich table."""
    from rich.table import Table

    shots = sorted({k for e in [*result["models"].values(), result["atnas"]] for k in e
                    if k.endswith("shot")}, key=lambda k: int(k[:-4]))
    table = Table(title=f"{result['dataset']}: {result['ways']}-way, {result['algorithm']}, "
                        f"{result['eval_tasks']} test tasks")
    for col in ("model", "params", *[s.replace("shot", "-shot") for s in shots]):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = [(n, str(e["params"]), e) for n, e in result["models"].items()]
    if result["atnas"]:
        mean = [r["params_mean"] for r in result["atnas"].values()]
        rows.append(("AT-NAS", f"{sum(mean) / len(mean):.0f} (mean)", result["atnas"]))
    for name, params, entry in rows:
        cells = [f"{100 * entry[s]['acc']:.2f} ± {100 * entry[s]['ci95']:.2f} %"
                 if s in entry else "" for s in shots]
        table.add_row(name, params, *cells)
    console.print(table)
