"""The ``fednas`` command line's argument parser: subcommands, options and their help."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  fednas run simulations/quickstart.toml
  fednas run simulations/quickstart.toml --set search.epochs=2 --set data.dataset=digits
  fednas run simulations/federated_fashion.toml      # Flower clients on Ray
  fednas resume runs/federated_fashion-20261127-120000
  fednas sweep simulations/quickstart.toml --seeds 0,1,2 --grid search.epochs=1,2
  fednas report runs/quickstart-sweep-1a2b3c4d
  fednas halving simulations/fedex_fashion.toml --set 'phases=["baseline"]' \
      --grid federation.server-lr=0.5,1,2 --budget 24
  fednas config simulations/quickstart.toml --keys
  fednas export runs/compress_fashion-20261127-120000 --model distilled
  fednas datasets
  fednas meta runs/quickstart-20261127-120000 --set meta.iterations=100
  fednas meta simulations/fewshot_glyphs.toml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fednas", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate federated and few-shot neural architecture search.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an "
                        "unexpected error instead of saving it to a file (or FEDNAS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a scenario (search, retrain, baseline) into runs/",
                         description="Run every phase of a scenario and write a run directory "
                                     "(config, metrics.jsonl, genotype.json, weights, "
                                     "summary.json, plots).")
    run.add_argument("scenario", type=Path, help="scenario TOML file, e.g. "
                     "simulations/quickstart.toml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (TOML value syntax), repeatable: "
                          "--set search.epochs=2 --set space.cell.ops='[\"skip_connect\"]'")
    run.add_argument("--out-dir", help="parent of the run directory (runtime.out-dir)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    cfg = sub.add_parser("config", help="print the resolved configuration of a scenario",
                         description="Validate a scenario and print it with every default.")
    cfg.add_argument("scenario", type=Path, nargs="?", help="scenario TOML (default: defaults)")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cfg.add_argument("--keys", action="store_true", help="list every key with its doc")

    res = sub.add_parser("resume", help="continue an interrupted federated run from its "
                                        "last checkpoint",
                         description="Continue a federated run dir from checkpoints/latest.pt; "
                                     "the result equals an uninterrupted run with the same seed.")
    res.add_argument("run_dir", type=Path, help="the run directory (runs/<name>-<time>)")
    res.add_argument("--quiet", action="store_true", help="no progress output")

    hal = sub.add_parser("halving", help="successive halving over federated runs (server-side "
                                         "HPs such as federation.server-lr, fedex.eta0)",
                         description="One federated run per grid point; after each rung the "
                                     "best 1/eta (by the clients' val loss) continue from their "
                                     "checkpoints; the total rounds never exceed --budget.")
    hal.add_argument("scenario", type=Path, help="a federated scenario with one round phase "
                     "(phases = [\"search\"] or [\"baseline\"])")
    _grid_options(hal, "halving")
    hal.add_argument("--budget", type=int, required=True, help="total rounds of all runs")
    hal.add_argument("--eta", type=int, default=3, help="keep 1/eta per rung (default 3)")
    hal.add_argument("--resume", type=Path, default=None, metavar="HALVING_DIR",
                     help="continue this interrupted halving (same scenario, --set, --grid, "
                          "--budget and --eta); finished rung steps are not run again")

    swp = sub.add_parser("sweep", help="run a scenario for several seeds (× grid points); "
                                       "resumable, failures recorded",
                         description="One run dir per seed × grid point under one sweep dir; "
                                     "re-running the same command skips finished runs.")
    swp.add_argument("scenario", type=Path, help="scenario TOML file")
    swp.add_argument("--seeds", default="0,1,2", help="seeds: 0,1,2 or 0-4 (default 0,1,2)")
    _grid_options(swp, "sweep")
    swp.add_argument("--parallel", type=int, default=0,
                     help="runs at once (default: cores ÷ runtime.threads, 1 if federated)")
    swp.add_argument("--report", action="store_true", help="write the report afterwards")

    rep = sub.add_parser("report", help="mean ± std and 95 %% CI tables and plots across seeds",
                         description="Tables (markdown, CSV) and plots recomputed from sweep "
                                     "dirs or run dirs.")
    rep.add_argument("inputs", type=Path, nargs="+", help="sweep dirs or run dirs")
    rep.add_argument("--out", type=Path, help="output dir (default: FIRST_INPUT/report)")

    met = sub.add_parser("meta", help="few-shot adaptation (MAML & co., AT-NAS) of a run dir's "
                                      "models, or a scenario ending with the meta phase",
                         description="Given a run dir: meta-train its searched subnet "
                                     "(and Conv-4, AT-NAS, ... per [meta]) on few-shot tasks and "
                                     "write meta.json there. Given a scenario: run it with the "
                                     "'meta' phase added.")
    met.add_argument("target", type=Path, help="a run directory or a scenario TOML file")
    met.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key; with a run dir only meta.* and runtime.*")
    met.add_argument("--out-dir", help="scenario only: parent of the run directory")
    met.add_argument("--quiet", action="store_true", help="no progress bars")

    exp = sub.add_parser("export", help="write a run's model as a standalone file "
                                        "(fednas.load_model)",
                         description="Write one model of a finished run (weights, architecture "
                                     "recipe, input normalisation, recorded accuracy) to a file "
                                     "that fednas.load_model(path) rebuilds with fednas and "
                                     "torch only. The file is reloaded and re-evaluated on the "
                                     "run's test split first.")
    exp.add_argument("run_dir", type=Path, help="a finished run directory")
    exp.add_argument("--model", default="distilled", help="searched, distilled, same_size, "
                     "pruned, baseline, random (default: distilled)")
    exp.add_argument("--out", type=Path, help="file to write (default: RUN_DIR/MODEL.fednas.pt)")
    exp.add_argument("--no-verify", action="store_true", help="skip the re-evaluation")

    ref = sub.add_parser("refine", help="a federated run's model fine-tuned by every client "
                                        "(FedEx's refine setting)",
                         description="Every client of a finished federated run fine-tunes the "
                                     "model of PHASE on its own training data with its local "
                                     "hyperparameters (FedEx's most likely configuration in a "
                                     "FedEx run) and tests it on its shard of the test split "
                                     "(shards follow the clients' label counts). Prints the "
                                     "global and the refine accuracy and writes them to "
                                     "RUN_DIR/refine-PHASE.json.")
    ref.add_argument("run_dir", type=Path, help="a finished federated run directory")
    ref.add_argument("--phase", default="baseline", choices=("baseline", "retrain", "random"),
                     help="the fixed-model phase whose model is refined (default: baseline)")

    sub.add_parser("datasets", help="list the dataset names fednas can load",
                   description="List the names data.dataset and meta.dataset accept.")
    return parser


def _grid_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--grid, --set and --out-dir, shared by the commands that run several scenarios."""
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="values of a config key, repeatable (cartesian product)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--out-dir", help=f"parent of the {what} directory (runtime.out-dir)")
