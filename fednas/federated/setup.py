"""What client work reads of a scenario, and the pure helpers of one client's round.

:class:`ClientSetup` holds the scenario's sections that clients read (built by the top layer);
the functions build the supernet and fixed models, apply FedEx's per-client hyperparameters
(:func:`local_hps`) and encode the model spec that messages carry (faults:
:mod:`fednas.federated.faults`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fednas.config.run_config import (
    BaselineConfig,
    FederationConfig,
    PartitionConfig,
    SearchConfig,
    SpaceConfig,
    TrainConfig,
)
from fednas.models.baselines import build_model
from fednas.models.resnet import CifarResNet
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space


@dataclass(frozen=True)
class ClientSetup:
    """The scenario's sections that client work reads (the top layer builds it)."""

    seed: int
    partition: PartitionConfig
    space: SpaceConfig
    search: SearchConfig
    retrain: TrainConfig
    baseline: BaselineConfig
    federation: FederationConfig
    eval_batch_size: int


def make_space(space: SpaceConfig, seed: int, input_shape: tuple[int, int, int],
               num_classes: int) -> SearchSpace:
    """The scenario's supernet, with the seed's deterministic initialisation."""
    torch.manual_seed(seed)
    return build_space(space.name, input_shape=input_shape, num_classes=num_classes,
                       **space.options())


def build_fixed_model(setup: ClientSetup, spec: dict[str, Any],
                      input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fixed (non-supernet) model from a spec: the derived subnet, the baseline, or a
    ResNet of the width space's stages with per-block inner widths ``mids`` (DAP's student).
    """
    if spec["kind"] == "baseline":
        b = setup.baseline
        return build_model(b.model, input_shape=input_shape, num_classes=num_classes,
                           width=int(spec.get("width", b.width)))
    if spec["kind"] == "pruned-resnet":
        w = setup.space.width
        return CifarResNet(input_shape[0], num_classes, w.base_channels,
                           [int(m) for m in spec["mids"]], w.stem_stride)
    genotype: Genotype = spec["genotype"]
    r = setup.retrain
    if genotype["space"] == "cell" and (r.channels or r.layers):
        c = setup.space.cell
        return CellNetwork(genotype, input_shape=input_shape, num_classes=num_classes,
                           channels=r.channels or c.channels, layers=r.layers or c.layers,
                           stem_stride=c.stem_stride, allowed_ops=c.ops)
    return make_space(setup.space, setup.seed, input_shape, num_classes).subnet(genotype)


def local_hps(setup: ClientSetup, phase: str, conf: dict[str, Any]) -> dict[str, float]:
    """The local hyperparameters of one client: the scenario's, overridden by ``hp.*`` keys
    of the message (FedEx samples them per client) and by the round's ``lr`` and
    ``arch-lr`` (``search.arch-lr-schedule``)."""
    src = setup.search if phase == "search" else setup.retrain
    hps: dict[str, float] = {
        "lr": float(conf.get("lr", src.lr)), "momentum": src.momentum,
        "weight-decay": src.weight_decay, "batch-size": src.batch_size,
        "local-epochs": setup.federation.local_epochs,
        "arch-lr": float(conf.get("arch-lr", setup.search.arch_lr))}
    for name in hps:
        if f"hp.{name}" in conf:
            hps[name] = float(conf[f"hp.{name}"])
    return hps


def encode_spec(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def decode_spec(text: str) -> dict[str, Any]:
    return json.loads(text)
