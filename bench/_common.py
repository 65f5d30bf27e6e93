"""What the sweep-based benchmarks share: their command line and one seeded sweep of a scenario.

``bench/compression.py`` and ``bench/federated_vs_baseline.py`` run one scenario of
``simulations/`` for several seeds through the sweep runner (resumable, one process per run,
kept under ``--out-dir``) and read the finished runs' summaries. (``python bench/X.py`` puts
``bench/`` on the path, so they import this module as ``_common``.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fednas.reporting.sweep_report import collect
from simulations.sweep import parse_seeds, run_sweep

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"


def sweep_summaries(bench: str, scenario: str, doc: str, seeds: str = "0,1,2"
                    ) -> tuple[Path, list[dict[str, Any]]]:
    """Parse ``--seeds/--set/--out-dir``, sweep ``simulations/<scenario>.toml``; return the
    sweep dir and the finished runs' summaries (seed order). Exits naming ``bench`` if a run
    failed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", default=seeds)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default="runs/bench")
    args = parser.parse_args()
    root, _ = run_sweep(SIMULATIONS / f"{scenario}.toml",
                        ["runtime.progress=false", *args.overrides], [],
                        parse_seeds(args.seeds), out_dir=args.out_dir)
    runs, failed = collect([root])
    if failed:
        raise SystemExit(f"bench/{bench}: failed runs: {failed}")
    return root, [r["summary"] for r in runs]
