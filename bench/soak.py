"""Chaos soak: ≥ 100 rounds of subnet training with 30 % of the clients failing every round in
four ways, one SIGKILL of the whole run and a resume, against the same run without faults.

Workload: ``simulations/federated_fashion.toml`` made smaller so that a round takes seconds
on 2 cores: 20 clients (Dirichlet 0.5) of 6000 Fashion-MNIST training images, an 8-channel
cell space, 2 search rounds (6 local steps), then ``--rounds`` (100) FedAvg rounds of the
derived subnet, every client sampled every round, one client per message, 8 Ray workers
(``client-cpus = 0.25``: a sleeping or restarting worker leaves the others to the healthy
clients), ``round-timeout`` 30 s (a healthy round takes ~7 s on 2 cores; the first one also
starts the workers).

Faults (``[federation.faults]``, seed 1): per sampled client and round, 10 % raise, 14 %
return a NaN/Inf update, 5 % kill their Ray worker (``os._exit``), 1 % hang past the
round-timeout (every round with a hang lasts the whole timeout, so hangs are the rarest
kind). Three runs of the same seed, one after another:

``faulty``  the soak, uninterrupted; its process tree's RSS is sampled every 0.5 s;
``killed``  the same soak, SIGKILLed (driver and every process it started) when retrain round
            ``kill_round`` (seeded, 20..80) is logged, then ``fednas resume``;
``clean``   the same run without faults.

JSON figures: ``rounds_completed`` / ``rounds_planned`` (retrain rounds of the soak),
``client_failures`` by kind as the server observed them (errors that were not worker deaths,
diverged, timed out, worker deaths), ``actor_deaths``, ``plan_matched`` (every round's
observed failures equal the seeded plan the run recorded), ``rounds_failed`` (below
``min-fit-clients``), ``rss_growth_pct`` (tree RSS when the last round is logged ÷ when round
10 is, minus 1, in %), ``acc_faulty`` / ``acc_clean`` (test accuracy of the trained subnet, %,
same seed, same data, same rounds), ``same_genotype`` (the faults also hit the 2 search rounds),
``resumed_identical`` (killed + resumed equals uninterrupted: metrics except timings,
genotype, every saved weight), ``kill_round``, and each part's minutes.

Records (configs, metrics, summaries; no weights) are kept under ``--out-dir`` (default
``bench/results/soak``); a rerun reuses finished parts and prints the same JSON line
(``--fresh`` reruns all).

Usage: ``python bench/soak.py [--rounds 100] [--fresh] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from fednas.reporting.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "federated_fashion.toml"
SMALL = ["runtime.progress=false", 'phases=["search", "retrain"]', "data.max-train=6000",
         "partition.num-clients=20", "space.cell.channels=8", "federation.rounds=2",
         "federation.min-fit-clients=5", "federation.client-cpus=0.25",
         "federation.local-steps=6", "federation.checkpoint-every=1",
         "federation.round-timeout=30",
         "federation.node-wait=600", "seed=0"]
FAULTS = ["federation.faults.p-raise=0.1", "federation.faults.p-nan=0.14",
          "federation.faults.p-exit=0.05", "federation.faults.p-hang=0.01",
          "federation.faults.seed=1"]
KINDS = ("raise", "nan", "hang", "exit")


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def retrain_rounds(run_dir: Path | None) -> int:
    if run_dir is None or not (run_dir / "metrics.jsonl").exists():
        return 0
    text = (run_dir / "metrics.jsonl").read_text()
    complete = text[:text.rfind("\n") + 1]  # a line being written is not a round yet
    return complete.count('"phase": "retrain"')


def launch(args: list[str], out: Path, *, kill_at: int = 0, rss_at: tuple[int, ...] = ()
           ) -> dict:
    """Run ``python -m simulations ARGS`` in its own session; sample the tree's RSS when the
    retrain rounds in ``rss_at`` are logged; SIGKILL everything at round ``kill_at``."""
    log = (out / "stderr.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "simulations", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    parent = psutil.Process(proc.pid)
    samples: dict[int, int] = {}
    killed = False
    while proc.poll() is None:
        runs = [d for d in (out / "runs").glob("*") if d.is_dir()]
        done = retrain_rounds(runs[0] if runs else None)
        for r in rss_at:
            if done >= r and r not in samples:
                samples[r] = rss(tree(parent))
        if kill_at and done >= kill_at:
            victims = tree(parent)  # by PID: the driver, Ray's services and its workers
            os.killpg(proc.pid, signal.SIGKILL)
            for p in victims:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            killed = True
            break
        time.sleep(0.5)
    code = proc.wait()
    log.close()
    if code and not killed:
        raise SystemExit(f"bench/soak: {' '.join(args[:2])} failed ({code}); see "
                         f"{out / 'stderr.log'}")
    return {"minutes": (time.monotonic() - t0) / 60, "rss": samples}


def run_dir_of(out: Path) -> Path:
    (run_dir,) = [d for d in (out / "runs").iterdir() if d.is_dir()]
    return run_dir


def part(out: Path, sets: list[str], fresh: bool, **kw) -> tuple[Path, dict]:
    """One run of the soak's scenario under ``out`` (reused when its summary exists)."""
    record = out / "summary.json"  # (bench/results/.gitignore keeps summaries)
    if record.exists() and not fresh:
        return run_dir_of(out), json.loads(record.read_text())
    shutil.rmtree(out, ignore_errors=True)
    (out / "runs").mkdir(parents=True)
    args = ["run", str(SCENARIO), *[a for s in sets for a in ("--set", s)],
            "--out-dir", str(out / "runs")]
    info = launch(args, out, **kw)
    if kw.get("kill_at"):
        run_dir = run_dir_of(out)
        assert not (run_dir / "summary.json").exists(), "killed after the run finished"
        more = launch(["resume", str(run_dir), "--quiet"], out)
        info = {"minutes": info["minutes"] + more["minutes"], "rss": info["rss"]}
    record.write_text(json.dumps(info))
    return run_dir_of(out), info


def weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, weights_only=True)["state_dict"]
            for p in sorted(run_dir.glob("*.pt"))}


def plain(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.endswith("wall_s")}
            for m in read_metrics(run_dir)]


def compare(a: Path, b: Path) -> dict:
    """Whether two run dirs hold the same metrics (timings aside), genotype and weights."""
    wa, wb = weights(a), weights(b)
    same_weights = bool(wa) and wa.keys() == wb.keys() and all(
        wa[n].keys() == wb[n].keys() and all(torch.equal(wa[n][k], wb[n][k]) for k in wa[n])
        for n in wa)
    return {"metrics": plain(a) == plain(b),
            "genotype": (a / "genotype.json").read_text() == (b / "genotype.json").read_text(),
            "weights": same_weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="retrain (subnet) rounds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "soak"))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    out = Path(args.out_dir)
    sets = [*SMALL, f"federation.subnet-rounds={args.rounds}", *args.overrides]
    kill_round = random.Random(0).randint(max(1, args.rounds // 5), max(1, 4 * args.rounds // 5))
    last = args.rounds
    faulty_dir, faulty = part(out / "faulty", [*sets, *FAULTS], args.fresh,
                              rss_at=(min(10, last), last))
    killed_dir, killed = part(out / "killed", [*sets, *FAULTS], args.fresh, kill_at=kill_round)
    clean_dir, clean = part(out / "clean", sets, args.fresh)
    same = out / "compare" / "summary.json"  # weights stay local: keep the verdict
    if args.fresh or not same.exists():
        same.parent.mkdir(parents=True, exist_ok=True)
        same.write_text(json.dumps(compare(faulty_dir, killed_dir)))
    verdict = json.loads(same.read_text())
    for d in (faulty_dir, killed_dir, clean_dir):
        for p in d.glob("*.pt"):
            p.unlink()  # records, never weights
    rows = [m for m in read_metrics(faulty_dir) if m["phase"] == "retrain"]
    every = read_metrics(faulty_dir)
    deaths = sum(m.get("actor_deaths", 0) for m in every)
    observed = {"raise": sum(m["client_errors"] for m in every) - deaths,
                "nan": sum(m["clients_diverged"] for m in every),
                "hang": sum(m["client_timeouts"] for m in every), "exit": deaths}
    matched = all(m["client_errors"] == m["faults_raise"] + m["faults_exit"]
                  and m["actor_deaths"] == m["faults_exit"]
                  and m["clients_diverged"] == m["faults_nan"]
                  and m["client_timeouts"] == m["faults_hang"] for m in every)
    rss_at = {int(k): v for k, v in faulty["rss"].items()}
    if len(rss_at) < 2:
        raise SystemExit(f"bench/soak: the RSS was not sampled at rounds 10 and {last} "
                         f"({sorted(rss_at)}); rerun with --fresh")
    acc = {name: 100 * json.loads((d / "summary.json").read_text())["models"]["searched"]
           ["test_acc"] for name, d in (("faulty", faulty_dir), ("clean", clean_dir))}
    print(json.dumps({
        "rounds_completed": len(rows), "rounds_planned": args.rounds,
        "client_failures": observed, "actor_deaths": deaths, "plan_matched": matched,
        "rounds_failed": sum(m.get("round_failed", 0) for m in rows),
        "rss_growth_pct": round(100 * (rss_at[last] / rss_at[min(10, last)] - 1), 2),
        "acc_faulty": round(acc["faulty"], 2), "acc_clean": round(acc["clean"], 2),
        "same_genotype": (faulty_dir / "genotype.json").read_text()
        == (clean_dir / "genotype.json").read_text(),
        "resumed_identical": all(verdict.values()), "resumed_checks": verdict,
        "kill_round": kill_round,
        "minutes": {k: round(v["minutes"], 1) for k, v in
                    (("faulty", faulty), ("killed", killed), ("clean", clean))},
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
