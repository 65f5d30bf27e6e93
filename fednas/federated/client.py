"""Client-side work of the federated phases, independent of Flower's message types.

Virtual clients keep no state between rounds: everything a client needs arrives in the
message (its shard, the global regions, the round) or is recomputed deterministically from
the config (its data partition). Per process, the dataset and partitions are cached, which
is memory the simulation pays once per Ray worker, not once per client.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.config.run_config import RunConfig
from fednas.data.datasets import Dataset
from fednas.data.partition import client_train_val, partition_indices
from fednas.data.run_data import run_dataset
from fednas.federated.shards import Masks, load_slices, slice_state
from fednas.models.baselines import build_model
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space
from fednas.training.sandwich import search_step_fn
from fednas.training.train import (
    evaluate,
    make_optimizer,
    seed_everything,
    steps_per_epoch,
    train_epoch,
)

Split = tuple[torch.Tensor, torch.Tensor]


@lru_cache(maxsize=2)
def _partitions(cfg: RunConfig) -> list[np.ndarray]:
    data = dataset(cfg)
    p = cfg.partition
    return partition_indices(data.train_y.numpy(), p.num_clients, p.scheme, alpha=p.alpha,
                             classes_per_client=p.classes_per_client, seed=cfg.seed,
                             min_size=p.min_partition_size)


@lru_cache(maxsize=2)
def dataset(cfg: RunConfig) -> Dataset:
    """The run's dataset (cached per process)."""
    return run_dataset(cfg)


def client_splits(cfg: RunConfig, pid: int) -> tuple[Split, Split]:
    """Client ``pid``'s own train and val splits of its partition (deterministic)."""
    data = dataset(cfg)
    parts = _partitions(cfg)
    if not 0 <= pid < len(parts):
        raise ValueError(f"partition id {pid} outside 0..{len(parts) - 1}")
    train_idx, val_idx = client_train_val(parts[pid], cfg.partition.client_val_fraction,
                                          cfg.seed + pid)
    tr, va = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    return (data.train_x[tr], data.train_y[tr]), (data.train_x[va], data.train_y[va])


def client_device() -> torch.device:
    """CUDA when Ray gave this worker a GPU (CUDA_VISIBLE_DEVICES is set per actor)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def assigned_gpu() -> int:
    """The GPU id Ray assigned to this worker, or -1."""
    try:
        import ray

        if ray.is_initialized():
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            return int(ids[0]) if ids else -1
    except Exception:  # noqa: BLE001 - outside a Ray worker there is simply no assignment
        return -1
    return -1


def placement(device: torch.device) -> dict[str, int]:
    """Where this client ran: worker pid, Ray GPU id (-1: none) and whether it used CUDA."""
    import os

    return {"pid": os.getpid(), "gpu-id": assigned_gpu(), "cuda": int(device.type == "cuda")}


def make_space(cfg: RunConfig) -> SearchSpace:
    """The supernet of the scenario, with the seed's deterministic initialisation."""
    data = dataset(cfg)
    torch.manual_seed(cfg.seed)
    return build_space(cfg.space.name, input_shape=data.input_shape,
                       num_classes=data.num_classes, **cfg.space.options())


@lru_cache(maxsize=4)
def arch_shapes(cfg: RunConfig) -> tuple[torch.Size, ...]:
    """Shapes of the supernet's α tensors (cached per process: decoding shard masks)."""
    return tuple(a.shape for a in make_space(cfg).arch_parameters())


def build_fixed_model(cfg: RunConfig, spec: dict[str, Any]) -> nn.Module:
    """A fixed (non-supernet) model from a spec: the derived subnet or the baseline."""
    data = dataset(cfg)
    if spec["kind"] == "baseline":
        return build_model(cfg.baseline.model, input_shape=data.input_shape,
                           num_classes=data.num_classes,
                           width=int(spec.get("width", cfg.baseline.width)))
    genotype: Genotype = spec["genotype"]
    if genotype["space"] == "cell" and (cfg.retrain.channels or cfg.retrain.layers):
        c = cfg.space.cell
        return CellNetwork(genotype, input_shape=data.input_shape, num_classes=data.num_classes,
                           channels=cfg.retrain.channels or c.channels,
                           layers=cfg.retrain.layers or c.layers, stem_stride=c.stem_stride,
                           allowed_ops=c.ops)
    return make_space(cfg).subnet(genotype)


@lru_cache(maxsize=4)
def _fixed_template(cfg: RunConfig, spec_text: str) -> nn.Module:
    return build_fixed_model(cfg, decode_spec(spec_text))


def fixed_model_for_state(cfg: RunConfig, spec: dict[str, Any]) -> nn.Module:
    """A fresh copy of ``spec``'s model whose weights the caller overwrites (client routes).

    Deriving a subnet builds the whole supernet first, which was a third of a small client's
    round; the structure is built once per process and copied (its initial weights are
    meaningless here, so unlike :func:`build_fixed_model` this does not reseed torch).
    """
    return copy.deepcopy(_fixed_template(cfg, encode_spec(spec)))


def inject_fault(cfg: RunConfig, pid: int) -> bool:
    """Fault injection (federation.fault-partitions): raise, or return True to report NaN."""
    if pid not in cfg.federation.fault_partitions:
        return False
    if cfg.federation.fault_kind == "raise":
        raise RuntimeError(f"injected fault on partition {pid}")
    return True


def _seed(cfg: RunConfig, server_round: int, pid: int, salt: int) -> torch.Generator:
    return seed_everything(hash((cfg.seed, server_round, pid, salt)) % 2**31)


def local_hps(cfg: RunConfig, phase: str, conf: dict[str, Any]) -> dict[str, float]:
    """The local hyperparameters of one client: the scenario's, overridden by ``hp.*`` keys
    of the message (FedEx samples them per client) and by the round's ``lr``."""
    src = cfg.search if phase == "search" else cfg.retrain
    hps: dict[str, float] = {
        "lr": float(conf.get("lr", src.lr)), "momentum": src.momentum,
        "weight-decay": src.weight_decay, "batch-size": src.batch_size,
        "local-epochs": cfg.federation.local_epochs, "arch-lr": cfg.search.arch_lr}
    for name in hps:
        if f"hp.{name}" in conf:
            hps[name] = float(conf[f"hp.{name}"])
    return hps


def _val_loss(model: nn.Module, val: Split, cfg: RunConfig, device: torch.device) -> float:
    return evaluate(model, val, batch_size=cfg.runtime.eval_batch_size,
                    device=device)["eval_loss"]


def _after_training(metrics: dict[str, float], stats: dict[str, float], model: nn.Module,
                    val: Split, cfg: RunConfig, pid: int, device: torch.device,
                    report: int) -> None:
    """Add the training stats, the post-training val loss (if asked) and injected faults."""
    metrics.update(stats)
    if report >= 1:
        metrics["val_loss"] = _val_loss(model, val, cfg, device)
    if inject_fault(cfg, pid):
        metrics["train_loss"] = float("nan")


def search(cfg: RunConfig, pid: int, server_round: int, regions: dict[str, torch.Tensor],
           masks: Masks, conf: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                        dict[str, float]]:
    """Local first-order bi-level search on the client's shard; returns trained regions.

    ``conf`` is the message's config: ``lr`` and optional ``hp.*`` overrides (FedEx), and
    ``report-val`` (1: report the val loss after training, 2: before and after).
    """
    generator = _seed(cfg, server_round, pid, 1)
    device = client_device()
    train, val = client_splits(cfg, pid)
    space = make_space(cfg)
    slices = space.shard_slices(masks)
    names = {id(p): n for n, p in space.named_parameters()}
    for a in space.arch_parameters():
        slices[names[id(a)]] = None
    state = space.state_dict()
    load_slices(state, regions, slices)
    space.load_state_dict(state)
    space.set_shard(masks)
    space.to(device)
    s, f = cfg.search, cfg.federation
    hp = local_hps(cfg, "search", conf)
    batch = max(1, int(hp["batch-size"]))
    w_opt = make_optimizer("sgd", space.weights(), lr=hp["lr"], momentum=hp["momentum"],
                           weight_decay=hp["weight-decay"])
    a_opt = torch.optim.Adam(space.arch_parameters(), lr=hp["arch-lr"], betas=(0.5, 0.999),
                             weight_decay=s.arch_weight_decay)
    steps = steps_per_epoch(len(train[1]), batch, f.local_steps) * int(hp["local-epochs"])
    report = int(conf.get("report-val", 0))
    metrics: dict[str, float] = {"num-examples": len(train[1]), "partition-id": pid,
                                 "diverged": 0, "steps": steps, "num-val": len(val[1]),
                                 **placement(device)}
    if report >= 2:
        metrics["val_loss_pre"] = _val_loss(space, val, cfg, device)
    try:
        step_fn = search_step_fn(cfg)
        stats = step_fn(space, train, val, weight_opt=w_opt, arch_opt=a_opt, steps=steps,
                        batch_size=min(batch, len(val[1])), grad_clip=s.grad_clip,
                        generator=generator, device=device)
    except FloatingPointError:
        metrics["diverged"] = 1
        return {}, metrics
    _after_training(metrics, stats, space, val, cfg, pid, device, report)
    out = slice_state({k: v.cpu() for k, v in space.state_dict().items()}, slices)
    return out, metrics


def train(cfg: RunConfig, pid: int, server_round: int, state: dict[str, torch.Tensor],
          spec: dict[str, Any], conf: dict[str, Any]
          ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Local supervised training of a fixed model (the FedAvg route); ``conf`` as in search."""
    generator = _seed(cfg, server_round, pid, 2)
    device = client_device()
    train_split, val = client_splits(cfg, pid)
    model = fixed_model_for_state(cfg, spec)
    model.load_state_dict(state)
    model.to(device)
    r = cfg.retrain
    hp = local_hps(cfg, "train", conf)
    opt = make_optimizer(r.optimizer, model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                         weight_decay=hp["weight-decay"])
    report = int(conf.get("report-val", 0))
    metrics: dict[str, float] = {"num-examples": len(train_split[1]), "partition-id": pid,
                                 "diverged": 0, "num-val": len(val[1]), **placement(device)}
    if report >= 2:
        metrics["val_loss_pre"] = _val_loss(model, val, cfg, device)
    try:
        for _ in range(int(hp["local-epochs"])):
            stats = train_epoch(model, train_split, optimizer=opt,
                                batch_size=min(max(1, int(hp["batch-size"])),
                                               len(train_split[1])),
                                grad_clip=r.grad_clip, generator=generator, device=device,
                                label_smoothing=r.label_smoothing)
    except FloatingPointError:
        metrics["diverged"] = 1
        return {}, metrics
    _after_training(metrics, stats, model, val, cfg, pid, device, report)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics


def evaluate_local(cfg: RunConfig, pid: int, state: dict[str, torch.Tensor],
                   spec: dict[str, Any]) -> dict[str, float]:
    """A fixed model's loss/accuracy on the client's val split."""
    _, val = client_splits(cfg, pid)
    model = fixed_model_for_state(cfg, spec)
    model.load_state_dict(state)
    device = client_device()
    result = evaluate(model.to(device), val, batch_size=cfg.runtime.eval_batch_size,
                      device=device)
    return {"num-examples": len(val[1]), "partition-id": pid, **result}


def encode_spec(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def decode_spec(text: str) -> dict[str, Any]:
    return json.loads(text)
