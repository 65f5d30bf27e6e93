"""Run a federated scenario in-process: Flower's simulation runtime on a Ray backend."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fednas.config.run_config import RunConfig
from fednas.errors import FedNASError
from simulations.quiet import quiet_flower


def backend_config(cfg: RunConfig) -> dict[str, Any]:
    """Ray resources per client and ``ray.init`` arguments from the scenario.

    ``client-gpus = -1`` means 0.5 GPU per client when CUDA is visible (two clients share a
    GPU), else 0. ``ray-address`` attaches to an existing cluster instead of starting one.
    Workers are restartable actors (a dead one is replaced; its message fails).
    """
    f = cfg.federation
    gpus = f.client_gpus
    if gpus < 0:
        gpus = 0.5 if torch.cuda.is_available() else 0.0
    init: dict[str, Any] = {"include_dashboard": False}
    if f.ray_address:
        init = {"address": f.ray_address}
    else:
        init["num_cpus"] = os.cpu_count() or 1
        if torch.cuda.is_available():
            init["num_gpus"] = torch.cuda.device_count()
    # max_restarts: a worker that dies (an exit fault, the OOM killer) is restarted by Ray;
    # the message it was running fails and counts as a failed client (Flower passes every
    # client resource to the actor's options and would otherwise reuse the dead actor)
    return {"client_resources": {"num_cpus": f.client_cpus, "num_gpus": gpus,
                                 "max_restarts": -1},
            "init_args": init}


# glibc malloc of the Ray workers: no heap trimming, large blocks from the heap. A worker's
# cohort allocates and frees ~1 GB of activations every step; glibc's defaults hand that
# memory back to the kernel and page-fault it in again (a third of a worker's CPU time was
# system time on a 2-core VM; dp_fashion's baseline rounds took 26 s instead of 16 s).
WORKER_MALLOC = ("glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold="
                 "17179869184:glibc.malloc.top_pad=268435456")


def keep_worker_heaps() -> None:
    """Give the Ray workers started from now on :data:`WORKER_MALLOC` (they inherit this
    process's environment); a ``GLIBC_TUNABLES`` already set is left as it is."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLIBC_TUNABLES", WORKER_MALLOC)


def worker_slots(cfg: RunConfig, backend: dict[str, Any]) -> int:
    """How many clients Ray runs at once: CPUs ÷ CPUs per client (and GPUs ÷ GPUs per
    client when clients take GPUs); the number of cohorts at ``cohort-size = 0``."""
    res, init = backend["client_resources"], backend.get("init_args", {})
    cpus = init.get("num_cpus") or os.cpu_count() or 1
    slots = int(cpus // max(float(res.get("num_cpus", 1.0)), 1e-9))
    gpus = float(res.get("num_gpus", 0.0))
    if gpus > 0 and init.get("num_gpus"):
        slots = min(slots, int(init["num_gpus"] // gpus))
    return max(slots, 1)


def run_federated(cfg: RunConfig, console: Console | None = None,
                  resume_dir: Path | None = None,
                  backend: dict[str, Any] | None = None,
                  stop_after: tuple[str, int] | None = None) -> tuple[Path, dict[str, Any]]:
    """Validate, start the simulation, and return (run dir, summary).

    Bad input (config, data, partitions) fails before Ray starts. ``stop_after = (phase, k)``
    pauses after round ``k`` of ``phase`` (checkpoint written; the summary is then
    ``{"paused": {"phase": ..., "round": k}, ...}``); resume with ``resume_dir``.
    """
    from flwr.simulation import run_simulation

    from simulations import actor_restarts, flower_pump
    from simulations.client_app import make_client_app
    from simulations.federated import FederatedPipeline
    from simulations.server_app import make_server_app

    pipeline = FederatedPipeline(cfg, console, resume_dir, stop_after)
    pipeline.prepare()
    backend = backend or backend_config(cfg)
    pipeline.cohort_slots = worker_slots(cfg, backend)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_flower()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    keep_worker_heaps()
    # Ray's notice about a future default; fednas relies on today's (num_gpus=0 hides GPUs).
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
    actor_restarts.install()  # a dead worker fails only the message it was running
    if cfg.runtime.message_pump == "fednas":  # Flower's is O(nodes × messages) per sweep
        flower_pump.install()
    else:
        flower_pump.uninstall()
    run_simulation(server_app=make_server_app(pipeline), client_app=make_client_app(cfg),
                   num_supernodes=cfg.partition.num_clients,
                   backend_config=backend)
    if pipeline.error is not None:
        if isinstance(pipeline.error, FedNASError):
            raise pipeline.error
        raise RuntimeError(f"federated run failed: {pipeline.error!r}") from pipeline.error
    if pipeline.result is None:
        raise FedNASError("the federated simulation ended without a result (see the log)")
    return pipeline.result
