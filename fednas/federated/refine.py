"""Personalised ("refine") evaluation of a global model, the FedEx paper's second setting.

Khodak et al. (2021) report every tuning method twice: the *global* model's test error, and
the *refine* error, after every client fine-tunes the global model on its own training data
with its local hyperparameters (the quantity FedEx's θ update optimises; mkhodak/FedEx
``Server.full_evaluation``). Its clients hold their own test data. fednas' test split is
central, so :func:`client_test_shards` gives each client a disjoint piece of it that follows the
client's training label distribution; :func:`refine_accuracy` measures the global and the
fine-tuned model on those pieces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fednas.federated.client import LocalClients
from fednas.training.train import evaluate


def client_test_shards(client_labels: list[np.ndarray], test_labels: np.ndarray,
                       num_classes: int, seed: int) -> list[np.ndarray]:
    """Split the test indices among clients in proportion to their training label counts.

    For every class, its test indices (shuffled with ``seed``) are cut into consecutive
    pieces whose sizes are proportional to each client's count of that class (largest
    remainder, ties to the lower client id). The shards are disjoint; a class that no client
    holds is left out.

    Parameters
    ----------
    client_labels
        Each client's training labels.
    test_labels
        The labels of the whole test split.
    num_classes
        Number of classes.
    seed
        Seeds the order in which a class's test samples are dealt.
    """
    counts = np.stack([np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
                       for y in client_labels])
    if counts.shape[1] != num_classes:
        raise ValueError(f"client_test_shards: labels outside 0..{num_classes - 1}")
    rng = np.random.default_rng(seed)
    shards: list[list[np.ndarray]] = [[] for _ in client_labels]
    for k in range(num_classes):
        pool = rng.permutation(np.flatnonzero(np.asarray(test_labels) == k))
        held = counts[:, k]
        if held.sum() == 0 or len(pool) == 0:
            continue
        exact = len(pool) * held / held.sum()
        sizes = np.floor(exact).astype(np.int64)
        rest = len(pool) - int(sizes.sum())
        order = np.lexsort((np.arange(len(held)), -(exact - sizes)))  # largest remainder
        sizes[order[:rest]] += 1
        for pid, piece in enumerate(np.split(pool, np.cumsum(sizes)[:-1])):
            shards[pid].append(piece)
    return [np.sort(np.concatenate(s)) if s else np.zeros(0, np.int64) for s in shards]


def refine_accuracy(clients: LocalClients, state: dict[str, torch.Tensor],
                    spec: dict[str, Any], conf: dict[str, Any], server_round: int,
                    test: tuple[torch.Tensor, torch.Tensor], shards: list[np.ndarray],
                    *, device: torch.device, batch_size: int = 512) -> dict[str, Any]:
    """Global and fine-tuned ("refine") accuracy of ``state`` on the clients' test shards.

    Every client with a non-empty shard trains ``state`` by its ordinary local training
    (:meth:`LocalClients.train`: its train split, ``local-epochs``, the scenario's local
    hyperparameters overridden by ``conf``'s ``hp.*`` keys, seeded by ``server_round``), then
    both models are evaluated on its shard. A client whose fine-tuning diverges scores 0 on
    its shard and is counted in ``diverged``.

    Returns
    -------
    dict
        ``global_acc`` and ``refine_acc`` (means over clients weighted by shard size),
        ``samples``, ``diverged`` and ``clients`` (per client: id, samples, both accuracies).
    """
    x, y = test
    model = clients.fixed_model(spec)
    rows = []
    for pid, shard in enumerate(shards):
        if len(shard) == 0:
            continue
        idx = torch.as_tensor(shard)
        split = (x[idx], y[idx])
        model.load_state_dict(state)
        before = evaluate(model.to(device), split, batch_size=batch_size,
                          device=device)["eval_acc"]
        tuned, metrics = clients.train(pid, server_round, state, spec, conf)
        diverged = bool(metrics.get("diverged")) or not tuned
        after = 0.0
        if not diverged:
            model.load_state_dict(tuned)
            after = evaluate(model.to(device), split, batch_size=batch_size,
                             device=device)["eval_acc"]
        rows.append({"client": pid, "samples": len(shard), "global_acc": float(before),
                     "refine_acc": float(after), "diverged": diverged})
    if not rows:
        raise ValueError("refine_accuracy: every test shard is empty")
    n = sum(r["samples"] for r in rows)
    return {"global_acc": sum(r["samples"] * r["global_acc"] for r in rows) / n,
            "refine_acc": sum(r["samples"] * r["refine_acc"] for r in rows) / n,
            "samples": n, "diverged": sum(r["diverged"] for r in rows), "clients": rows}
