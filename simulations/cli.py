"""The ``fednas`` command line. User errors print one line and exit 2 (no traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fednas.errors import ConfigError, FedNASError
from simulations.cli_parser import build_parser


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fednas.config.loading import load_config
    from fednas.reporting.summary import print_summary
    from simulations.pipeline import Pipeline

    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"runtime.out-dir={args.out_dir!r}".replace("'", '"'))
    if args.quiet:
        overrides.append("runtime.progress=false")
    cfg = load_config(args.scenario, overrides)
    console = Console()
    if cfg.mode == "federated":
        from simulations.simulation import run_federated

        run_dir, summary = run_federated(cfg, Console(stderr=True))
    else:
        run_dir, summary = Pipeline(cfg, Console(stderr=True)).run()
    print_summary(summary, console)
    if "meta" in summary:
        from simulations.meta_runs import print_meta

        print_meta(summary["meta"], console)
    console.print(f"run dir: {run_dir}")
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    from simulations.meta_runs import meta_command

    return meta_command(args.target, list(args.overrides), out_dir=args.out_dir,
                        quiet=args.quiet)


def cmd_resume(args: argparse.Namespace) -> int:
    import tomllib

    from rich.console import Console

    from fednas.config.legacy import legacy_overrides
    from fednas.config.loading import load_config
    from fednas.config.preflight import check_output_dir
    from fednas.errors import CheckpointError
    from fednas.reporting.summary import print_summary
    from simulations.simulation import run_federated

    config = args.run_dir / "config.toml"
    if not config.is_file():
        raise CheckpointError(f"{args.run_dir} is not a fednas run directory (no config.toml)")
    check_output_dir(args.run_dir, "resume RUN_DIR")  # it is written to
    raw = tomllib.loads(config.read_text())
    cfg = load_config(config, legacy_overrides(raw))  # keys it predates: as it ran
    if cfg.mode != "federated":
        raise CheckpointError(f"{args.run_dir} is a centralised run; only federated runs "
                              "checkpoint and resume")
    console = Console()
    run_dir, summary = run_federated(cfg, Console(stderr=True), resume_dir=args.run_dir)
    print_summary(summary, console)
    console.print(f"run dir: {run_dir}")
    return 0


def cmd_halving(args: argparse.Namespace) -> int:
    from rich.console import Console

    from simulations.halving_runs import print_halving, run_halving

    overrides = list(args.overrides) + ["runtime.progress=false"]
    if args.out_dir:
        overrides.append(f"runtime.out-dir={args.out_dir!r}".replace("'", '"'))
    record = run_halving(args.scenario, overrides, args.grid, budget=args.budget, eta=args.eta,
                         console=Console(stderr=True), resume=args.resume)
    console = Console()
    print_halving(record, console)
    console.print(f"halving dir: {record['dir']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from simulations.sweep import parse_seeds, run_sweep

    root, manifest = run_sweep(args.scenario, list(args.overrides), args.grid,
                               parse_seeds(args.seeds), out_dir=args.out_dir,
                               parallel=args.parallel, console=Console(stderr=True))
    states = [r.get("state") for r in manifest["runs"]]
    print(f"sweep dir: {root} ({states.count('done')} done, {states.count('failed')} failed, "
          f"{len(states)} runs)")
    if args.report:
        cmd_report(argparse.Namespace(inputs=[root], out=None))
    return 0 if states.count("done") == len(states) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from fednas.reporting.sweep_report import write_report

    result = write_report(list(args.inputs), args.out)
    print(result["markdown"])
    print(f"report dir: {result['dir']}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from fednas.config.loading import load_config
    from fednas.config.tools import dumps_toml, to_dict, to_kebab

    cfg = load_config(args.scenario, args.overrides)
    if not args.keys:
        print(dumps_toml(to_dict(cfg)), end="")
        return 0

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = prefix + to_kebab(f.name)
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            meta = f.metadata
            limits = [f"{w} {meta[k]}" for k, w in (("ge", ">="), ("gt", ">"), ("le", "<="),
                                                    ("lt", "<")) if meta.get(k) is not None]
            if meta.get("choices"):
                limits.append(f"one of {list(meta['choices'])}")
            if meta.get("subset_of"):
                limits.append(f"subset of {list(meta['subset_of'])}")
            if meta.get("inf"):
                limits.append(f"inf = {meta['inf']}")
            extra = f"  [{', '.join(limits)}]" if limits else ""
            print(f"{key} = {value!r}  # {meta.get('doc', '')}{extra}")

    walk(cfg, "")
    return 0


def cmd_datasets(_: argparse.Namespace) -> int:
    from fednas.data.datasets import available_datasets
    from fednas.data.fewshot import OFFICIAL_DATASETS
    from fednas.data.run_data import META_TRAIN

    data = available_datasets()
    print("data.dataset (federated search and training):")
    for name in [*data, META_TRAIN]:
        note = "  # the meta phase's training classes" if name == META_TRAIN else ""
        print(f"  {name}{note}")
    print("meta.dataset (few-shot tasks, on class-disjoint train/val/test parts):")
    for name in dict.fromkeys(["glyphs", *OFFICIAL_DATASETS, *data]):
        print(f"  {name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fednas.models.export import export

    path, info = export(args.run_dir, args.model, args.out, verify=not args.no_verify)
    m = info["metrics"]
    note = (f", reproduced {100 * m['reproduced_test_acc']:.2f} %"
            if "reproduced_test_acc" in m else "")
    print(f"wrote {path}: {info['recipe']['kind']} model, {m.get('params')} params, recorded "
          f"test acc {100 * m['test_acc']:.2f} %{note}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    import json

    import torch

    from fednas.reporting.rundir import atomic_write_text
    from simulations.refine_runs import refine_run_dir

    if not (args.run_dir / "config.toml").is_file():
        raise ConfigError(f"refine: {args.run_dir} is not a run directory (no config.toml)")
    try:
        out = refine_run_dir(args.run_dir, args.phase, device=torch.device("cpu"))
    except FileNotFoundError as err:
        raise ConfigError(f"refine: {err}") from None
    path = args.run_dir / f"refine-{args.phase}.json"
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    hps = ", ".join(f"{k[3:]} {v:.4g}" for k, v in out["conf"].items()) or "the run's own"
    print(f"{args.phase}: global {100 * out['global_acc']:.2f} %, refine "
          f"{100 * out['refine_acc']:.2f} % on {out['samples']} test samples "
          f"(local hyperparameters: {hps}; {out['diverged']} diverged); wrote {path}")
    return 0


#: Integer options and their minimum: (attribute, option, minimum).
COUNTS = (("budget", "--budget", 1), ("eta", "--eta", 2), ("parallel", "--parallel", 0))


def main(argv: list[str] | None = None) -> int:
    """Run the ``fednas`` command line ``argv``; return the exit code (2: user error, 1: bug)."""
    from fednas.config.preflight import check_count
    from simulations.crash import debug_enabled, report_bug

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from fednas.version import __version__

        print(f"fednas {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"run": cmd_run, "resume": cmd_resume, "config": cmd_config,
               "halving": cmd_halving, "sweep": cmd_sweep, "report": cmd_report,
               "datasets": cmd_datasets, "meta": cmd_meta, "export": cmd_export,
               "refine": cmd_refine}[args.command]
    try:
        for attr, option, low in COUNTS:  # CLI integers, checked before any work
            if getattr(args, attr, None) is not None:
                check_count(getattr(args, attr), f"{args.command} {option}", low)
        return handler(args)
    except FedNASError as exc:
        print(f"fednas: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fednas: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line and a saved traceback (--debug: inline)
        return report_bug(exc, debug_enabled(args.debug), argv)


if __name__ == "__main__":
    sys.exit(main())
