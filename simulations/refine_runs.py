"""A finished federated run's fixed model in the refine setting (:mod:`fednas.federated.refine`):
every client fine-tunes the run's final model on its own training data and tests it on its
shard of the test split, beside the global model on the same shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.federated.refine import client_test_shards, refine_accuracy
from fednas.reporting.rundir import read_metrics
from simulations.client_app import local_clients
from simulations.runner import MODEL_NAME


def refine_run_dir(run_dir: str | Path, phase: str = "baseline", *,
                   device: torch.device) -> dict[str, Any]:
    """Global and refine accuracy of the model that ``phase`` trained in ``run_dir``.

    The clients are the run's own (its config, seed and partitions). Their local
    hyperparameters are the run's, except in a FedEx run, where θ's most likely local
    configuration at the end (``fedex_best`` of the phase's last round) is used, as the
    reference's ``--mle`` evaluation does. The test shards follow the clients' training label
    counts and are seeded with the run's seed.

    Returns
    -------
    dict
        ``conf`` (the ``hp.*`` overrides used), ``global_acc``, ``refine_acc``, ``samples``,
        ``diverged`` (see :func:`fednas.federated.refine.refine_accuracy`).

    Raises
    ------
    FileNotFoundError
        When the run dir lacks the model's weights (``<model>.pt``) or its config.
    ConfigError
        When the run is not federated.
    """
    run_dir = Path(run_dir)
    weights = run_dir / f"{MODEL_NAME[phase]}.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the refine evaluation needs the run's weights")
    cfg = load_config(run_dir / "config.toml")
    if cfg.mode != "federated":
        raise ConfigError(f"{run_dir}: a {cfg.mode} run has no clients to fine-tune the model")
    rows = [m for m in read_metrics(run_dir) if m.get("phase") == phase]
    best = (rows[-1].get("fedex_best") if rows else None) or {}
    conf = {f"hp.{k}": float(v) for k, v in best.items()}
    saved = torch.load(weights, weights_only=True)
    spec = saved.get("meta", {}).get("spec") or {"kind": "baseline"}
    clients = local_clients(cfg)
    data = clients.data
    labels = [clients.splits(pid)[0][1].numpy() for pid in range(cfg.partition.num_clients)]
    shards = client_test_shards(labels, data.test_y.numpy(), data.num_classes, cfg.seed)
    out = refine_accuracy(clients, saved["state_dict"], spec, conf, len(rows) + 1,
                          (data.test_x, data.test_y), shards, device=device,
                          batch_size=cfg.runtime.eval_batch_size)
    return {"conf": conf, **{k: out[k] for k in ("global_acc", "refine_acc", "samples",
                                                  "diverged")}}
