"""A cohort of virtual clients run by one worker: one message, many clients.

In cohort mode (``federation.cohort-size``) the server sends one message per cohort: the
global state once and each member's own configuration (partition id, shard masks, FedEx
hyperparameters). :func:`run_cohort` runs the members on this worker and returns one
:class:`Outcome` per member: its trained regions and metrics, or the error that stopped
it — a failing client drops out alone, never its cohort.

How the members run:

* fixed-model training (``train``) with SGD: all members at once,
  :class:`fednas.training.vectorised.VectorisedTrainer` (equal to their sequential training up
  to float rounding; see that module and :func:`run_cohort`);
* everything else (the search on supernet shards, Adam, evaluation): one after another in
  this process,
  each exactly as a one-client message would run it (the worker's model is reused and its
  weights loaded in place). The search is not vectorised: every client trains its own
  Gumbel-sampled shard, so clients with identical shards are rare and the supernet's
  mixed ops differ per client.

:func:`presum` folds the members' updates into their weighted mean when the server's
aggregation is the plain sample-weighted mean (it then receives one update per cohort);
under central DP, :func:`clipped_presum` into the sum of their clipped deltas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fednas.federated.client import LocalClients
from fednas.federated.devices import client_device, placement
from fednas.federated.faults import poison, start_fault
from fednas.federated.server_opt import STAT_SUFFIXES
from fednas.federated.setup import decode_spec, local_hps
from fednas.federated.shards import decode_masks, slice_state
from fednas.privacy.mechanism import clipped_sum
from fednas.training.train import batches
from fednas.training.vectorised import ClientJob

TRAIN, SEARCH, EVALUATE = "train", "train.search", "evaluate"


@dataclass
class Outcome:
    """One member's result: trained regions and metrics, or ``error`` (then both empty)."""

    pid: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def reportable(self) -> bool:
        """No error, not diverged, a state, and every metric finite (tensors unchecked)."""
        if self.error or self.metrics.get("diverged", 0) or not self.state:
            return False
        return not any(isinstance(v, float) and not math.isfinite(v)
                       for v in self.metrics.values())

    def usable(self) -> bool:
        """Counts in an aggregate: :meth:`reportable` and every tensor finite."""
        return self.reportable() and all(bool(torch.isfinite(t).all())
                                         for t in self.state.values() if t.is_floating_point())


def run_cohort(clients: LocalClients, route: str, state: dict[str, torch.Tensor],
               confs: list[dict[str, Any]], vectorise: bool = True) -> list[Outcome]:
    """Run every member of a cohort from the global ``state``.

    Parameters
    ----------
    clients
        This process's clients of the run.
    route
        ``train`` (a fixed model: ``model`` in each conf), ``train.search`` (supernet
        shards: ``shard`` in each conf) or ``evaluate`` (a fixed model on each member's val
        split: metrics only).
    state
        The whole global state (each search member slices its own shard from it).
    confs
        Per member: the message config a one-client message would carry
        (``partition-id``, ``server-round``, ``lr``, ``hp.*``, ``report-val``, ...).
    vectorise
        Allow the batched path (False: always one member after another, bit-identical to
        one client per message). The batched path equals each client's own training up to
        float rounding; the trajectories of max-pool/ReLU networks are not continuous in
        that rounding (on ``dp_fashion`` a 1e-7 relative perturbation of a client's weights
        after one step moved its next gradient norm from 1.9636 to 1.9686 in the sequential
        path itself), so runs with and without it differ as two float-rounding variants do.
    """
    if route not in (TRAIN, SEARCH, EVALUATE):
        raise ValueError(f"cohort route {route!r}: expected {TRAIN!r}, {SEARCH!r} or "
                         f"{EVALUATE!r}")
    if route == TRAIN and vectorise and clients.setup.retrain.optimizer == "sgd" and confs:
        specs = {str(c["model"]) for c in confs}
        if len(specs) == 1:
            return _train_vectorised(clients, state, confs, decode_spec(specs.pop()))
    return [_one(clients, route, state, conf) for conf in confs]


def _one(clients: LocalClients, route: str, state: dict[str, torch.Tensor],
         conf: dict[str, Any]) -> Outcome:
    pid = int(conf["partition-id"])
    try:
        if route == EVALUATE:
            return Outcome(pid, metrics=clients.evaluate(pid, state,
                                                         decode_spec(str(conf["model"]))))
        rnd = int(conf["server-round"])
        if route == SEARCH:
            masks = decode_masks(list(conf["shard"]), list(clients.arch_shapes))
            slices = clients.shard_slices(masks)
            out, metrics = clients.search(pid, rnd, slice_state(state, slices), masks, conf)
        else:
            out, metrics = clients.train(pid, rnd, state, decode_spec(str(conf["model"])),
                                         conf)
    except Exception as exc:  # noqa: BLE001 - one member's failure drops that member only
        return Outcome(pid, error=f"{type(exc).__name__}: {exc}")
    return Outcome(pid, out, metrics)


def _train_vectorised(clients: LocalClients, state: dict[str, torch.Tensor],
                      confs: list[dict[str, Any]], spec: dict[str, Any]) -> list[Outcome]:
    """Fixed-model training of all members as one batched computation."""
    setup, device = clients.setup, client_device()
    outcomes: dict[int, Outcome] = {}
    jobs, members = [], []
    report = max(int(c.get("report-val", 0)) for c in confs)
    poisoned: set[int] = set()
    for conf in confs:
        pid, rnd = int(conf["partition-id"]), int(conf["server-round"])
        try:
            if start_fault(setup.federation, setup.seed, "train", rnd, pid):
                poisoned.add(pid)
            jobs.append(_job(clients, pid, rnd, conf, device))
            members.append(conf)
        except Exception as exc:  # noqa: BLE001 - as in _one
            outcomes[pid] = Outcome(pid, error=f"{type(exc).__name__}: {exc}")
    r = setup.retrain
    trainer = clients.vectorised_trainer(spec, r.grad_clip, r.label_smoothing, device)
    results = trainer.run(state, jobs, report_val=report) if jobs else []
    where = placement(device)
    for conf, job, res in zip(members, jobs, results, strict=True):
        pid = int(conf["partition-id"])
        metrics: dict[str, float] = {"num-examples": len(job.train[1]), "partition-id": pid,
                                     "diverged": int(res.diverged), "num-val": len(job.val[1]),
                                     **where}
        own = int(conf.get("report-val", 0))
        metrics.update({k: v for k, v in res.metrics.items()
                        if not k.startswith("val_loss") or own >= (2 if k.endswith("pre")
                                                                   else 1)})
        if not res.diverged and pid in poisoned:
            poison(res.state, metrics, int(conf["server-round"]), pid)
        outcomes[pid] = Outcome(pid, res.state, metrics)
    return [outcomes[int(c["partition-id"])] for c in confs]


def _job(clients: LocalClients, pid: int, server_round: int, conf: dict[str, Any],
         device: torch.device) -> ClientJob:
    """Client ``pid``'s training, with the batches its own generator draws (as ``train``)."""
    generator = clients.seed(server_round, pid, 2)
    (x, y), val = clients.splits(pid, device)
    hp = local_hps(clients.setup, "train", conf)
    size = min(max(1, int(hp["batch-size"])), len(y))
    steps: list[torch.Tensor] = []
    epochs = int(hp["local-epochs"])
    stats_from = 0
    for epoch in range(epochs):
        if epoch == epochs - 1:
            stats_from = len(steps)
        steps.extend(batches(len(y), size, generator, drop_last=True))
    return ClientJob(train=(x, y), steps=steps, stats_from=stats_from, lr=hp["lr"],
                     momentum=hp["momentum"], weight_decay=hp["weight-decay"], val=val)


def _finite(outcomes: list[Outcome]
            ) -> tuple[list[Outcome], dict[str, torch.Tensor], torch.Tensor]:
    """The reportable members in partition order, their stacked states, and which of them
    have every floating tensor finite."""
    good = sorted((o for o in outcomes if o.reportable()), key=lambda o: o.pid)
    if not good:
        return [], {}, torch.zeros(0, dtype=torch.bool)
    stacks = {key: torch.stack([o.state[key].detach() for o in good]).cpu()
              for key in good[0].state}
    finite = torch.ones(len(good), dtype=torch.bool)
    for t in stacks.values():
        if t.is_floating_point():
            finite &= torch.isfinite(t).flatten(1).all(1)
    return good, stacks, finite


def presum(outcomes: list[Outcome], weight_key: str = "num-examples"
           ) -> tuple[dict[str, torch.Tensor], float, list[int]]:
    """The usable members' sample-weighted mean update, its total weight, and the usable
    members' partition ids in order (the first leads; empty, with an empty mean, when none
    is usable).

    Usable: :meth:`Outcome.usable` (checked on the stacked tensors). Summed in float64, like
    the server's own mean, and sent in the state's dtype (one float32 rounding of the mean);
    non-floating entries (BN's ``num_batches_tracked``) are the first usable member's.
    """
    good, stacks, finite = _finite(outcomes)
    if not bool(finite.any()):
        return {}, 0.0, []
    weights = torch.tensor([float(o.metrics[weight_key]) for o in good], dtype=torch.float64)
    weights = torch.where(finite, weights, 0.0)
    total = float(weights.sum())
    used = [o.pid for o, ok in zip(good, finite.tolist(), strict=True) if ok]
    mean: dict[str, torch.Tensor] = {}
    for key, t in stacks.items():
        if not t.is_floating_point():
            mean[key] = t[int(finite.nonzero()[0])].clone()
            continue
        w = weights.view(-1, *[1] * (t.dim() - 1))
        mean[key] = (torch.where(w > 0, w * t.double(), 0.0).sum(0) / total).to(t.dtype)
    return mean, total, used


def clipped_presum(outcomes: list[Outcome], global_state: dict[str, torch.Tensor],
                   clip_norm: float) -> tuple[dict[str, torch.Tensor], list[float], list[int]]:
    """Central DP's pre-summed cohort update: the usable members' clipped deltas summed
    (:func:`fednas.privacy.mechanism.clipped_sum`, float64, BN statistics left out as the
    server's DP aggregation leaves them out), each member's norm before clipping, and the
    usable members' partition ids in order (the first leads)."""
    good, _, finite = _finite(outcomes)
    members = [o for o, ok in zip(good, finite.tolist(), strict=True) if ok]
    if not members:
        return {}, [], []
    total, norms = clipped_sum(global_state, [o.state for o in members], clip_norm,
                               STAT_SUFFIXES)
    return total, norms, [o.pid for o in members]
