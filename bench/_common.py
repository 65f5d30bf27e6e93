"""What the benchmarks share: the sweep-based ones' command line and one seeded sweep of a
scenario, and a subprocess run with the peak memory of its process tree.

``bench/compression.py`` and ``bench/federated_vs_baseline.py`` run one scenario of
``simulations/`` for several seeds (and, in compression's width arm, a grid) through the
sweep runner (resumable, one process per run, kept under ``--out-dir``) and read the
finished runs' summaries. (``python bench/X.py`` puts
``bench/`` on the path, so they import this module as ``_common``.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from fednas.reporting.sweep_report import collect
from simulations.sweep import parse_seeds, run_sweep

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"


def bench_parser(doc: str, seeds: str = "0,1,2") -> argparse.ArgumentParser:
    """The sweep-based benchmarks' options: ``--seeds``, ``--set KEY=VALUE`` (repeatable) and
    ``--out-dir`` (default ``runs/bench``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", default=seeds)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default="runs/bench")
    return parser


def finished_runs(bench: str, root: Path) -> list[dict[str, Any]]:
    """The finished runs of the sweep dir ``root`` (``collect`` records: ``summary``,
    ``metrics``, ``seed``, ``group``, ...). Exits naming ``bench`` if a run failed."""
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/{bench}: failed runs in {root}: {failed}")
    return runs


def sweep(bench: str, scenario: str, overrides: list[str], grid: list[str], seeds: str,
          out_dir: str) -> tuple[Path, list[dict[str, Any]]]:
    """Sweep ``simulations/<scenario>.toml`` over ``grid`` (``KEY=V1,V2`` specs, values as
    TOML text) × ``seeds``; return the sweep dir and its runs in plan order (grid point,
    then seed): ``sweep.json``'s records (``point``, ``seed``, ``values``, ``run_dir``) each
    with its ``summary``. Exits naming ``bench`` if a run failed."""
    root, manifest = run_sweep(SIMULATIONS / f"{scenario}.toml",
                               ["runtime.progress=false", *overrides], grid,
                               parse_seeds(seeds), out_dir=out_dir)
    finished_runs(bench, root)
    return root, [{**r, "summary": json.loads((Path(r["run_dir"]) / "summary.json").read_text())}
                  for r in manifest["runs"]]


def sweep_summaries(bench: str, scenario: str, doc: str, seeds: str = "0,1,2",
                    args: argparse.Namespace | None = None
                    ) -> tuple[Path, list[dict[str, Any]]]:
    """Parse ``--seeds/--set/--out-dir`` (unless ``args`` holds them), sweep
    ``simulations/<scenario>.toml``; return the sweep dir and the finished runs' summaries
    (seed order). Exits naming ``bench`` if a run failed."""
    args = args or bench_parser(doc, seeds).parse_args()
    root, runs = sweep(bench, scenario, args.overrides, [], args.seeds, args.out_dir)
    return root, [r["summary"] for r in runs]


def run_measured(args: list[str], cwd: Path | None = None) -> tuple[int, str, int]:
    """Run ``args``; return (exit code, stderr, peak RSS in bytes of its whole process tree,
    sampled every 0.5 s: the driver and the Ray workers it starts).

    The tree is listed again every 5 s only (listing children scans every process of the
    machine, which cost a few % of one of two cores at 0.1 s); stderr goes to a file, so a
    chatty run never blocks on a full pipe.
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                cwd=cwd)
        parent, peak, tree, listed = psutil.Process(proc.pid), 0, [], 0.0
        while proc.poll() is None:
            try:
                if time.monotonic() - listed > 5.0:
                    tree, listed = [parent, *parent.children(recursive=True)], time.monotonic()
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                listed = 0.0
            time.sleep(0.5)
        err.seek(0)
        return proc.returncode, err.read(), peak
