"""Cross-device speed: many small clients per round, fednas's cohorts vs one client at a time.

Workload: ``simulations/dp_fashion.toml`` (Fashion-MNIST, 2000 clients of ~27 images,
Dirichlet(1.0), 400 per round, the 4-channel cell space, batch 8, 3 local epochs, search
shards of 2), on this machine, every figure from this one invocation (side by side):

``seq_floor_s_train`` / ``seq_floor_s_search``
    the sampled clients' local work run one by one in one process with the model reused
    (``LocalClients.train`` / ``.search`` after a warm-up client; one torch thread, as a
    ``client-cpus = 1`` worker), divided by the number of workers (CPUs ÷ client-cpus).
    The search floor is timed on the first ``--search-floor-clients`` of the 400 sampled
    clients and scaled to 400.
``round_s_train`` / ``round_s_search``
    fednas (``federation.cohort-size = 0``: one cohort per worker, fixed models vectorised and
    pre-summed), mean ``train_wall_s`` of rounds 2..R (configure, send, client work,
    receive, aggregate; without the server's test evaluation), privacy off;
    ``train_ratio`` = round_s_train ÷ seq_floor_s_train, ``search_ratio`` likewise;
``train_ratio_dp``
    the same fixed-model rounds with central DP (σ 1.0, C 1.0, as the scenario);
``flower_fedavg_round_s``
    stock Flower (``bench/flower_fedavg.py``: ``FedAvg`` + a minimal Message-API ClientApp
    training the same subnet on the same partitions, default simulation settings), rounds
    2..R; ``speedup_vs_flower`` = flower_fedavg_round_s ÷ round_s_train;
``clients_per_s``  clients per round ÷ round_s_train; ``peak_rss_mb`` of the fednas run's
    process tree (driver + Ray workers);
``default_overhead_ratio``
    bench/overhead.py's (a) at the defaults (10 clients, one worker with all cores).

Everything runs with the glibc malloc settings ``fednas run`` gives its Ray workers
(``simulations.simulation.WORKER_MALLOC``; the script re-executes itself with them unless
``GLIBC_TUNABLES`` is set), so the floor and stock Flower get them too.

The trained subnet is the genotype fednas's own search derived (the same model for every
engine). Records (configs, metrics, summaries, no weights) are kept under ``--out-dir``
(default ``bench/results/xdevice``); a rerun reuses every finished part and prints the same
JSON line (``--fresh`` reruns all).

Usage: ``python bench/xdevice.py [--rounds 3] [--subnet-rounds 4] [--fresh]
[--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured  # noqa: E402  (bench/ is not a package)
from overhead import local_loop, run  # noqa: E402

from fednas.config.loading import load_config  # noqa: E402
from fednas.federated.setup import encode_spec  # noqa: E402
from fednas.federated.shards import gumbel_top_s, slice_state  # noqa: E402
from fednas.reporting.rundir import read_metrics  # noqa: E402
from simulations.simulation import WORKER_MALLOC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "dp_fashion.toml"
FAST = ["runtime.progress=false", "federation.checkpoint-every=0", "federation.cohort-size=0",
        "federation.client-cpus=1", "federation.node-wait=1200"]


def cached(path: Path, make) -> dict:
    """``path``'s JSON, made by ``make()`` (and written) when missing. Parts are kept as
    ``<out-dir>/<part>/summary.json`` (bench/results/.gitignore keeps summaries)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make(), indent=1))
    return json.loads(path.read_text())


def fednas_run(out: Path, sets: list[str]) -> dict:
    """A fednas run of the scenario (subprocess): per-phase round times, genotype, RSS."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = [a for o in sets for a in ("--set", o)]
    code, err, peak = run_measured([sys.executable, "-m", "simulations", "run", str(SCENARIO),
                                    *args, "--out-dir", str(tmp)], cwd=ROOT)
    if code:
        raise SystemExit(f"bench/xdevice: fednas run failed: {err[-3000:]}")
    (run_dir,) = [d for d in tmp.iterdir() if d.is_dir()]
    for pt in run_dir.glob("*.pt"):
        pt.unlink()  # records, never weights
    metrics = read_metrics(run_dir)
    rounds = {ph: [m["train_wall_s"] for m in metrics if m["phase"] == ph]
              for ph in ("search", "retrain")}
    result = {"round_s": rounds, "peak_rss_mb": peak / 2**20,
              "genotype": json.loads((run_dir / "summary.json").read_text())["genotype"],
              "clients_ok": [m["clients_ok"] for m in metrics],
              "clients_on_cuda": sum(m.get("clients_on_cuda", 0) for m in metrics)}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir, out / "run", dirs_exist_ok=True)
    shutil.rmtree(tmp)
    return result


def seq_floor(sets: list[str], genotype: dict, search_clients: int) -> dict:
    """Seconds of the sampled clients' local work run one by one in this process."""
    from simulations.client_app import local_clients

    cfg = load_config(SCENARIO, sets)
    torch.set_num_threads(1)
    clients = local_clients(cfg)
    n, f = cfg.partition.num_clients, cfg.federation
    per_round = min(n, max(int(n * f.fraction_train), f.min_fit_clients))
    pids = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:per_round].tolist()
    spec = {"kind": "subnet", "genotype": genotype}
    state = {k: v.clone() for k, v in clients.fixed_model(spec).state_dict().items()}
    conf = {"lr": cfg.retrain.lr, "model": encode_spec(spec)}
    clients.train(pids[0], 2, state, spec, conf)  # warm-up: data, model, kernels
    t0 = time.perf_counter()
    for pid in pids:
        clients.train(pid, 2, state, spec, conf)
    train_s = time.perf_counter() - t0
    space = clients.make_space()
    sstate = space.state_dict()
    g = torch.Generator().manual_seed(2)
    work = []
    for pid in pids[:search_clients + 1]:
        masks = [gumbel_top_s(a.detach(), f.shard_size, g, True) for a in space.arch_parameters()]
        work.append((pid, slice_state(sstate, clients.shard_slices(masks)), masks))
    pid, regions, masks = work[0]
    clients.search(pid, 2, regions, masks, {"lr": cfg.search.lr})  # warm-up
    t0 = time.perf_counter()
    for pid, regions, masks in work[1:]:
        clients.search(pid, 2, regions, masks, {"lr": cfg.search.lr})
    search_s = (time.perf_counter() - t0) * per_round / max(len(work) - 1, 1)
    workers = max(int((os.cpu_count() or 1) // f.client_cpus), 1)
    return {"train_s": train_s / workers, "search_s": search_s / workers, "workers": workers,
            "clients_per_round": per_round, "search_clients_timed": len(work) - 1}


def mean_after_first(values: list[float]) -> float:
    rest = values[1:] or values
    return sum(rest) / len(rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="search rounds")
    parser.add_argument("--subnet-rounds", type=int, default=4)
    parser.add_argument("--flower-rounds", type=int, default=3)
    parser.add_argument("--search-floor-clients", type=int, default=100)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "xdevice"))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    if sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ:
        # every engine and the floor with the allocator settings fednas gives its workers
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "GLIBC_TUNABLES": WORKER_MALLOC})
    out = Path(args.out_dir)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    sets = [*FAST, 'phases=["search", "retrain"]', f"federation.rounds={args.rounds}",
            f"federation.subnet-rounds={args.subnet_rounds}", *args.overrides]
    plain = cached(out / "fednas" / "summary.json", lambda: fednas_run(out / "fednas",
                                                            [*sets, "privacy.mode=off"]))
    dp = cached(out / "fednas_dp" / "summary.json", lambda: fednas_run(
        out / "fednas_dp", [*sets, "privacy.mode=central", "federation.rounds=1"]))
    genotype = plain["genotype"]
    (out / "genotype.json").write_text(json.dumps(genotype))
    floor = cached(out / "seq_floor" / "summary.json", lambda: seq_floor(
        [*sets, "privacy.mode=off"], genotype, args.search_floor_clients))

    def flower() -> dict:
        target = out / "flower" / "raw.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "flower_fedavg.py"),
                        "--genotype", str(out / "genotype.json"), "--rounds",
                        str(args.flower_rounds), "--out", str(target),
                        *[a for o in args.overrides for a in ("--set", o)]],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return json.loads(target.read_text())

    stock = cached(out / "flower" / "summary.json", flower)

    def overhead() -> dict:
        import tempfile

        cores = os.cpu_count() or 1
        work = ["federation.local-steps=4", "federation.shard-size=2",
                "partition.num-clients=10", f"federation.client-cpus={cores}"]
        with tempfile.TemporaryDirectory() as tmp:
            sim_dir, _ = run(work + ["federation.rounds=3"], Path(tmp) / "sim")
            times = [m["train_wall_s"] for m in read_metrics(sim_dir) if m["phase"] == "search"]
        loop = local_loop(work, 3, cores)
        return {"sim_round_s": mean_after_first(times), "loop_round_s": loop}

    over = cached(out / "overhead" / "summary.json", overhead)
    round_train = mean_after_first(plain["round_s"]["retrain"])
    round_search = mean_after_first(plain["round_s"]["search"])
    round_dp = mean_after_first(dp["round_s"]["retrain"])
    flower_round = mean_after_first(stock["round_s"])
    print(json.dumps({
        "seq_floor_s_train": round(floor["train_s"], 3),
        "seq_floor_s_search": round(floor["search_s"], 3),
        "round_s_train": round(round_train, 3), "round_s_search": round(round_search, 3),
        "train_ratio": round(round_train / floor["train_s"], 3),
        "search_ratio": round(round_search / floor["search_s"], 3),
        "round_s_train_dp": round(round_dp, 3),
        "train_ratio_dp": round(round_dp / floor["train_s"], 3),
        "flower_fedavg_round_s": round(flower_round, 3),
        "speedup_vs_flower": round(flower_round / round_train, 3),
        "clients_per_s": round(floor["clients_per_round"] / round_train, 1),
        "peak_rss_mb": round(max(plain["peak_rss_mb"], dp["peak_rss_mb"])),
        "default_overhead_ratio": round(over["sim_round_s"] / over["loop_round_s"], 3),
        "workers": floor["workers"], "clients_per_round": floor["clients_per_round"],
        "device": "cuda" if plain.get("clients_on_cuda") else "cpu",
        "clients_on_cuda": plain.get("clients_on_cuda", 0),
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
