"""Simulation overhead, memory at scale, and shard bytes. Prints one JSON line.

(a) ``overhead_ratio``: federated round wall time without the server-side evaluation
    (``train_wall_s``: configure, send, client work, receive, aggregate; rounds 2..R, Flower +
    Ray, one actor with all cores) ÷ the same clients' local search run back to back
    in-process with the same thread count (10 clients, ≥ 1 s of local work each);
    ``overhead_ratio_with_eval`` adds the per-round server evaluation to the numerator;
(b) ``rss_ratio_1000_vs_10``: peak RSS of the whole process tree (driver + Ray workers) with
    1000 virtual clients at fraction 0.01 ÷ with 10 clients at fraction 1.0;
(c) ``bytes_ratio_half_shard``: bytes per round (down + up) with half-size shards ÷ full
    supernet, from real rounds;
(d) ``pump_round_ratio_1000``: with 1000 virtual clients, 100 per round (one local step
    each), the mean round time (``train_wall_s``) with Flower's own message pump ÷ with
    fednas's (``runtime.message-pump``, :mod:`simulations.flower_pump`); ``pump_run_ratio_1000``
    the same for the whole run (node start-up and handshake included); the two runs are
    sequential, each alone on the machine.

Usage: ``python bench/overhead.py [--rounds 3] [--local-steps 4] [--no-pump]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import run_measured

from fednas.config.loading import load_config
from fednas.reporting.rundir import read_metrics

BASE = ["mode=federated", "data.dataset=fashion-mnist", 'phases=["search"]',
        "partition.scheme=iid", "space.cell.channels=8", "space.cell.layers=3",
        "space.cell.nodes=2", "space.cell.stem-stride=2",
        'space.cell.ops=["max_pool_3x3","skip_connect","sep_conv_3x3","dil_conv_3x3"]',
        "search.batch-size=64", "federation.server-eval-samples=500",
        "federation.min-fit-clients=1", "federation.checkpoint-every=0",
        "federation.node-wait=600", "runtime.progress=false"]


def run(overrides: list[str], out: Path) -> tuple[Path, float]:
    """Run a scenario in a subprocess; return its run dir and the tree's peak RSS (bytes)."""
    args = [a for o in BASE + overrides for a in ("--set", o)]
    code, err, peak = run_measured([sys.executable, "-m", "simulations", "run", "/dev/null",
                                    *args, "--out-dir", str(out)])
    if code:
        raise SystemExit(f"run failed: {err[-2000:]}")
    (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
    return run_dir, peak


def local_loop(cfg_overrides: list[str], rounds: int, threads: int) -> float:
    """Seconds per round of the same client work run in-process, no Flower/Ray."""
    from simulations.client_app import local_clients
    from strategies.fednas import FedNAS

    cfg = load_config(None, BASE + cfg_overrides)
    torch.set_num_threads(threads)
    clients = local_clients(cfg)
    space = clients.make_space()
    strategy = FedNAS(space, shard_size=cfg.federation.shard_size, seed=cfg.seed)
    state = space.state_dict()
    clients.splits(0)  # load data outside the timing, as the actors do in round 1
    times = []
    for rnd in range(1, rounds + 1):
        strategy._state = state
        t0 = time.perf_counter()
        for pid in range(cfg.partition.num_clients):
            masks, slices = strategy._shard()
            regions = {k: state[k] if s is None else state[k][s] for k, s in slices.items()}
            clients.search(pid, rnd, regions, masks, {"lr": cfg.search.lr})
        times.append(time.perf_counter() - t0)
    return sum(times[1:]) / max(len(times) - 1, 1)


def pump_figures(tmp: Path) -> dict[str, float]:
    """(d): 1000 nodes, 100 clients per round, Flower's message pump vs fednas's."""
    rounds, wall = {}, {}
    for pump in ("flower", "fednas"):
        t0 = time.perf_counter()
        run_dir, _ = run(["federation.local-steps=1", "partition.num-clients=1000",
                          "federation.fraction-train=0.1", "federation.min-fit-clients=100",
                          "federation.rounds=2", "federation.client-cpus=1",
                          f'runtime.message-pump="{pump}"'], tmp / f"pump-{pump}")
        wall[pump] = time.perf_counter() - t0
        times = [m["train_wall_s"] for m in read_metrics(run_dir) if m["phase"] == "search"]
        rounds[pump] = sum(times) / len(times)
    return {"pump_round_ratio_1000": round(rounds["flower"] / rounds["fednas"], 3),
            "pump_run_ratio_1000": round(wall["flower"] / wall["fednas"], 3),
            "pump_round_s": {k: round(v, 1) for k, v in rounds.items()},
            "pump_run_s": {k: round(v, 1) for k, v in wall.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--no-pump", action="store_true", help="skip (d)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = [f"federation.local-steps={args.local_steps}", "federation.shard-size=2",
            "partition.num-clients=10", f"federation.client-cpus={cores}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim_dir, rss_10 = run(work + [f"federation.rounds={args.rounds}"], tmp / "sim")
        rounds = [m for m in read_metrics(sim_dir) if m["phase"] == "search"]
        sim_round = sum(m["train_wall_s"] for m in rounds[1:]) / max(len(rounds) - 1, 1)
        sim_total = sum(m["wall_s"] for m in rounds[1:]) / max(len(rounds) - 1, 1)
        loop_round = local_loop(work, args.rounds, cores)
        full_dir, _ = run(work[:1] + ["federation.shard-size=0", "partition.num-clients=10",
                                      "federation.rounds=1"], tmp / "full")
        full = read_metrics(full_dir)[0]
        half = rounds[0]
        _, rss_1000 = run(["federation.local-steps=2", "partition.num-clients=1000",
                           "federation.fraction-train=0.01", "federation.rounds=1",
                           "federation.client-cpus=1"], tmp / "k")
        _, rss_10b = run(["federation.local-steps=2", "partition.num-clients=10",
                          "federation.fraction-train=1.0", "federation.rounds=1",
                          "federation.client-cpus=1"], tmp / "ten")
        pump = {} if args.no_pump else pump_figures(tmp)
    print(json.dumps({**pump,
        "overhead_ratio": round(sim_round / loop_round, 3),
        "overhead_ratio_with_eval": round(sim_total / loop_round, 3),
        "rss_ratio_1000_vs_10": round(rss_1000 / rss_10b, 3),
        "bytes_ratio_half_shard": round((half["bytes_down"] + half["bytes_up"])
                                        / (full["bytes_down"] + full["bytes_up"]), 3),
        "sim_round_s": round(sim_round, 2), "loop_round_s": round(loop_round, 2),
        "rss_10_mb": round(rss_10b / 2**20), "rss_1000_mb": round(rss_1000 / 2**20),
        "clients": 10, "rounds": args.rounds, "cores": cores,
    }))


if __name__ == "__main__":
    main()
