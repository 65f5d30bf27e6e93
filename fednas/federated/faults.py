"""Client faults: the fixed partitions of ``federation.fault-partitions`` and the seeded random
faults of ``[federation.faults]`` (raise, non-finite reply, hang, worker exit).

A client's fault in a round is a pure function of (run seed, fault seed, route, round,
partition), so the server knows the plan too (:func:`planned_faults`, recorded per round in
metrics.jsonl) and a resumed run replays exactly the faults of the uninterrupted one. The
fixed-model phases (baseline, retrain, random, ...) share the training route, so the same
client fails in the same round of each: their comparison sees the same faults.

How each kind acts, from the server's point of view:

* ``raise``: the client raises before training; its reply is an error.
* ``nan``: it trains, then returns a loss and an update that are NaN or Inf (alternating by
  round and partition); the server drops it as diverged.
* ``hang``: it sleeps ``hang-s`` (default: ``round-timeout`` + 1 s) before training, so its
  reply comes after the round closed and is dropped as a time-out (a straggler).
* ``exit``: it kills its worker process with ``os._exit`` (only inside a Ray actor; anywhere
  else the process is the server's, and it raises instead). Ray restarts the actor (fednas
  creates the simulation's actors restartable); the message fails and counts as an error.
  In cohort mode a hang or an exit takes its whole cohort's message with it, as a real
  worker's crash would.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch

from fednas.config.faults import KINDS
from fednas.config.run_config import FederationConfig

ROUTES = {"train.search": 1, "train": 2, "train.meta": 3}
"""The training routes that faults apply to (evaluation never fails on purpose)."""

EXIT_CODE = 70
"""The exit status of a worker killed by an ``exit`` fault."""


def client_fault(federation: FederationConfig, seed: int, route: str, server_round: int,
                 pid: int) -> str | None:
    """The fault client ``pid`` suffers in ``server_round`` of ``route`` (None: none)."""
    if pid in federation.fault_partitions:
        return federation.fault_kind
    f = federation.faults
    if not f.enabled or route not in ROUTES:
        return None
    u = np.random.default_rng([seed, f.seed, ROUTES[route], server_round, pid]).random()
    edge = 0.0
    for kind, p in zip(KINDS, f.probabilities(), strict=True):
        edge += p
        if u < edge:
            return kind
    return None


def planned_faults(federation: FederationConfig, seed: int, route: str, server_round: int,
                   pids: Iterable[int]) -> dict[str, int]:
    """How many of the sampled ``pids`` the plan fails in this round, by kind
    (``faults_<kind>`` keys, every kind present)."""
    counts = Counter(client_fault(federation, seed, route, server_round, p) for p in pids)
    return {f"faults_{k}": counts.get(k, 0) for k in KINDS}


def in_ray_actor() -> bool:
    """True inside a Ray actor (a simulation worker), False in a driver or plain process."""
    import sys

    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def start_fault(federation: FederationConfig, seed: int, route: str, server_round: int,
                pid: int) -> bool:
    """Act out client ``pid``'s fault at the start of its work: raise, hang or exit.

    Returns
    -------
    bool
        True when its reply must be non-finite (``nan``): the caller trains, then calls
        :func:`poison`.
    """
    kind = client_fault(federation, seed, route, server_round, pid)
    if kind == "raise":
        raise RuntimeError(f"injected fault on partition {pid} (round {server_round})")
    if kind == "hang":
        f = federation.faults
        time.sleep(f.hang_s or federation.round_timeout + 1.0)
    elif kind == "exit":
        if not in_ray_actor():
            raise RuntimeError(f"injected worker exit on partition {pid} (round "
                               f"{server_round}; not in a Ray worker: raised instead)")
        os._exit(EXIT_CODE)
    return kind == "nan"


def poison(state: dict[str, torch.Tensor], metrics: dict[str, float], server_round: int,
           pid: int, loss_key: str = "train_loss") -> None:
    """Make a reply non-finite in place: its loss (and val loss, if reported) and the first
    floating tensor of its update (NaN or Inf, alternating by round and partition)."""
    value = math.nan if (server_round + pid) % 2 == 0 else math.inf
    metrics[loss_key] = value
    if "val_loss" in metrics:  # FedEx scores the val loss: a poisoned reply scores as diverged
        metrics["val_loss"] = value
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel():
            state[key] = tensor.clone()
            state[key].view(-1)[0] = value
            break
