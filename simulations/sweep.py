"""Seeded sweeps: one run per seed × grid point, resumable, failures recorded, Ray-parallel.

``fednas sweep SCENARIO --seeds 0,1,2 [--grid KEY=V1,V2 ...] [--set KEY=VALUE ...]`` lays
out::

    <out-dir>/<name>-sweep-<hash>/      (hash of resolved config + grid + seeds)
        sweep.json                      the plan and every run's state
        p00-s0/<name>-<time>/           one fednas run dir per (grid point, seed)
        p00-s0/status.json              {"state": "done" | "failed" | "running", ...}

Re-running the same command finds the same sweep dir and skips runs that finished (their
``summary.json`` exists); a federated run that was interrupted after a checkpoint is resumed
(``fednas resume``), anything else unfinished starts afresh. A run that fails is recorded with
its error (``status.json``, ``sweep.json``) and the sweep goes on.

Each run is its own ``python -m simulations`` process (isolation: a crash cannot take the sweep
down). When the machine has room for more than one run at a time — a centralised scenario
with ``runtime.threads`` below the core count — runs execute as Ray tasks sized by
``runtime.threads`` CPUs; a federated run already spreads its clients over all cores through
Ray, so federated sweeps run one at a time (or use ``--parallel`` on a bigger cluster).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fednas.config.grid import candidates, parse_grid
from fednas.config.legacy import digest_view
from fednas.config.loading import load_config
from fednas.config.preflight import check_output_dir
from fednas.config.tools import to_dict
from fednas.errors import ConfigError
from fednas.reporting.fingerprint import config_fingerprint
from fednas.reporting.rundir import atomic_write_text

FIXED = ("seed", "name", "runtime.out-dir")


@dataclass
class SweepRun:
    """One (grid point, seed) cell of a sweep."""

    point: int
    seed: int
    values: dict[str, str]
    cell: Path

    @property
    def key(self) -> str:
        return f"p{self.point:02d}-s{self.seed}"

    def run_dir(self) -> Path | None:
        if not self.cell.is_dir():
            return None
        dirs = sorted(d for d in self.cell.iterdir()
                      if d.is_dir() and not d.name.endswith(".incomplete"))
        return dirs[-1] if dirs else None

    def status(self) -> dict[str, Any]:
        path = self.cell / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {"state": "pending"}

    def finished(self) -> bool:
        run_dir = self.run_dir()
        return run_dir is not None and (run_dir / "summary.json").is_file()


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> seeds (distinct, non-negative)."""
    try:
        if "-" in text and "," not in text:
            lo, hi = (int(x) for x in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"sweep --seeds {text!r}: expected 0,1,2 or 0-4") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep --seeds {text!r}: need distinct seeds >= 0")
    return seeds


def plan(scenario: Path | None, overrides: list[str], grid_specs: list[str], seeds: list[int],
         out_dir: str | None = None) -> tuple[Path, list[SweepRun], dict[str, Any]]:
    """Validate every run's config (before any work) and lay out the sweep dir."""
    grid = parse_grid(grid_specs, command="sweep", fixed=FIXED, required=False)
    points = candidates(grid)
    base = load_config(scenario, overrides)
    spec = {"scenario": str(scenario) if scenario else None, "overrides": list(overrides),
            "grid": grid, "seeds": seeds}
    # keyed by what runs (the resolved config), not by how it was spelled: an edited scenario
    # file gets a fresh sweep dir instead of stale results, and the same config reached
    # through the file or through --set finds the same one
    # (less the keys whose changed default leaves this config's run as it was: legacy.py)
    resolved = to_dict(base)
    key = {"config": digest_view(resolved, config_fingerprint(resolved)), "grid": grid,
           "seeds": seeds}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    root = Path(out_dir or base.runtime.out_dir) / f"{base.name}-sweep-{digest}"
    check_output_dir(root, "sweep --out-dir" if out_dir else "runtime.out-dir")
    runs = []
    for p, values in enumerate(points):
        for seed in seeds:
            sets = [*overrides, *(f"{k}={v}" for k, v in values.items()), f"seed={seed}"]
            try:
                load_config(scenario, sets)
            except ConfigError as exc:
                raise ConfigError(f"sweep point {values or '(base)'} seed {seed}: {exc}") from exc
            runs.append(SweepRun(p, seed, values, root / f"p{p:02d}-s{seed}"))
    return root, runs, {**spec, "name": base.name, "mode": base.mode,
                        "threads": base.runtime.threads}


def _command(scenario: Path | None, overrides: list[str], run: SweepRun) -> list[str]:
    """The fednas command line of one run: resume a checkpointed federated run, else run."""
    run_dir = run.run_dir()
    if run_dir is not None and (run_dir / "checkpoints" / "latest.pt").is_file():
        return [sys.executable, "-m", "simulations", "resume", str(run_dir), "--quiet"]
    if run_dir is not None:  # unfinished and not resumable: start again beside it
        run_dir.rename(run_dir.with_name(run_dir.name + ".incomplete"))
    sets = [*overrides, *(f"{k}={v}" for k, v in run.values.items()), f"seed={run.seed}",
            f'name="{run.key}"']
    args = [a for s in sets for a in ("--set", s)]
    return [sys.executable, "-m", "simulations", "run", str(scenario or "/dev/null"), *args,
            "--out-dir", str(run.cell), "--quiet"]


def failure_reason(stderr: str, returncode: int) -> str:
    """The line of a failed run's stderr that says why: fednas' own error line (a user error
    or an internal one, with its traceback file), else the last
    exception line, else the exit code (with the last output line; progress lines go to
    stderr too, so the last line alone may be an ordinary round record)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("fednas: error:", "fednas: internal error")):
            return line
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line):
            return line
    signal_name = f" (signal {-returncode})" if returncode < 0 else ""
    tail = f"; last output: {lines[-1]}" if lines else ""
    return f"exit code {returncode}{signal_name}{tail}"


def execute(command: list[str], cell: str) -> dict[str, Any]:
    """Run one fednas process; its outcome as a status record (also written to the cell)."""
    cell_path = Path(cell)
    cell_path.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    atomic_write_text(cell_path / "status.json", json.dumps({"state": "running", "started": t0}))
    with open(cell_path / "log.txt", "a") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.write(proc.stderr)
    status: dict[str, Any] = {"state": "done" if proc.returncode == 0 else "failed",
                              "returncode": proc.returncode, "seconds": round(time.time() - t0, 1)}
    if proc.returncode:
        status["error"] = failure_reason(proc.stderr, proc.returncode)
    atomic_write_text(cell_path / "status.json", json.dumps(status, indent=2) + "\n")
    return status


def run_sweep(scenario: Path | None, overrides: list[str], grid_specs: list[str],
              seeds: list[int], *, out_dir: str | None = None, parallel: int = 0,
              console=None) -> tuple[Path, dict[str, Any]]:
    """Run (or continue) a sweep; returns the sweep dir and its manifest."""
    from rich.console import Console

    console = console or Console(stderr=True)
    root, runs, spec = plan(scenario, overrides, grid_specs, seeds, out_dir)
    root.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not r.finished()]
    console.print(f"[bold]sweep[/] {root}: {len(runs)} runs, {len(runs) - len(todo)} finished, "
                  f"{len(todo)} to run")
    workers = parallel or _room(spec)
    jobs = [(_command(scenario, overrides, r), str(r.cell)) for r in todo]
    if workers > 1 and len(jobs) > 1:
        console.print(f"[bold]sweep[/] {len(jobs)} runs as Ray tasks, {workers} at a time")
        _run_on_ray(jobs, spec, workers)
    else:
        for (command, cell), run in zip(jobs, todo, strict=True):
            console.print(f"[bold]sweep[/] {run.key} {run.values or ''}")
            status = execute(command, cell)
            if status["state"] == "failed":
                console.print(f"[red]sweep[/] {run.key} failed: {status['error']}")
    records = []
    for r in runs:
        run_dir = r.run_dir()
        records.append({"key": r.key, "point": r.point, "seed": r.seed, "values": r.values,
                        "run_dir": str(run_dir) if run_dir else None,
                        **({"state": "done"} if r.finished() else r.status())})
    manifest = {**spec, "dir": str(root), "runs": records}
    atomic_write_text(root / "sweep.json", json.dumps(manifest, indent=2) + "\n")
    return root, manifest


def _room(spec: dict[str, Any]) -> int:
    """How many runs fit at once: cores ÷ threads per run (centralised), else 1."""
    cores = os.cpu_count() or 1
    if spec["mode"] == "federated" or not spec["threads"]:
        return 1
    return max(1, cores // spec["threads"])


def _run_on_ray(jobs: list[tuple[list[str], str]], spec: dict[str, Any], workers: int) -> None:
    """Run the jobs as Ray tasks of ``runtime.threads`` CPUs each (at most ``workers`` at once)."""
    import logging
    import warnings

    import ray

    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        task = ray.remote(num_cpus=max(1, spec["threads"] or 1))(execute)
        pending = [task.remote(command, cell) for command, cell in jobs[:workers]]
        queue = list(jobs[workers:])
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            if queue:
                command, cell = queue.pop(0)
                pending.append(task.remote(command, cell))
    finally:
        if started:
            ray.shutdown()
