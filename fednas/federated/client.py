"""Client-side work of the federated phases, independent of Flower's message types.

Virtual clients keep no state between rounds: everything a client needs arrives in the
message (its shard, the global regions, the round) or is recomputed deterministically from
the scenario (its data partition). What a client reads of the scenario is a
:class:`ClientSetup` (a few sections, not the whole run config); :class:`LocalClients` holds
it with the run's dataset, the partitions and the model templates once per process — memory
the simulation pays once per Ray worker, not once per client (the ClientApp keeps one per
scenario).
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
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
from fednas.data.datasets import Dataset
from fednas.data.partition import client_train_val, partition_indices
from fednas.federated.devices import client_device, placement
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
Result = tuple[dict[str, torch.Tensor], dict[str, float]]
TEMPLATES = 4  # fixed-model templates kept per process


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
    """A fixed (non-supernet) model from a spec: the derived subnet or the baseline."""
    if spec["kind"] == "baseline":
        b = setup.baseline
        return build_model(b.model, input_shape=input_shape, num_classes=num_classes,
                           width=int(spec.get("width", b.width)))
    genotype: Genotype = spec["genotype"]
    r = setup.retrain
    if genotype["space"] == "cell" and (r.channels or r.layers):
        c = setup.space.cell
        return CellNetwork(genotype, input_shape=input_shape, num_classes=num_classes,
                           channels=r.channels or c.channels, layers=r.layers or c.layers,
                           stem_stride=c.stem_stride, allowed_ops=c.ops)
    return make_space(setup.space, setup.seed, input_shape, num_classes).subnet(genotype)


def inject_fault(federation: FederationConfig, pid: int) -> bool:
    """Fault injection (federation.fault-partitions): raise, or return True to report NaN."""
    if pid not in federation.fault_partitions:
        return False
    if federation.fault_kind == "raise":
        raise RuntimeError(f"injected fault on partition {pid}")
    return True


def local_hps(setup: ClientSetup, phase: str, conf: dict[str, Any]) -> dict[str, float]:
    """The local hyperparameters of one client: the scenario's, overridden by ``hp.*`` keys
    of the message (FedEx samples them per client) and by the round's ``lr``."""
    src = setup.search if phase == "search" else setup.retrain
    hps: dict[str, float] = {
        "lr": float(conf.get("lr", src.lr)), "momentum": src.momentum,
        "weight-decay": src.weight_decay, "batch-size": src.batch_size,
        "local-epochs": setup.federation.local_epochs, "arch-lr": setup.search.arch_lr}
    for name in hps:
        if f"hp.{name}" in conf:
            hps[name] = float(conf[f"hp.{name}"])
    return hps


def encode_spec(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def decode_spec(text: str) -> dict[str, Any]:
    return json.loads(text)


class LocalClients:
    """The clients of one run in this process.

    Parameters
    ----------
    setup
        What the clients read of the scenario.
    load
        Loads the run's dataset (called once, when a client first needs it).
    """

    def __init__(self, setup: ClientSetup, load: Callable[[], Dataset]) -> None:
        self.setup = setup
        self._load = load
        self._templates: OrderedDict[str, nn.Module] = OrderedDict()

    @cached_property
    def data(self) -> Dataset:
        """The run's dataset."""
        return self._load()

    @cached_property
    def parts(self) -> list[np.ndarray]:
        """Every client's sample indices (deterministic in the seed)."""
        p = self.setup.partition
        return partition_indices(self.data.train_y.numpy(), p.num_clients, p.scheme,
                                 alpha=p.alpha, classes_per_client=p.classes_per_client,
                                 seed=self.setup.seed, min_size=p.min_partition_size)

    def splits(self, pid: int) -> tuple[Split, Split]:
        """Client ``pid``'s own train and val splits of its partition (deterministic)."""
        data, parts = self.data, self.parts
        if not 0 <= pid < len(parts):
            raise ValueError(f"partition id {pid} outside 0..{len(parts) - 1}")
        train_idx, val_idx = client_train_val(parts[pid], self.setup.partition.client_val_fraction,
                                              self.setup.seed + pid)
        tr, va = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        return (data.train_x[tr], data.train_y[tr]), (data.train_x[va], data.train_y[va])

    def make_space(self) -> SearchSpace:
        """The scenario's supernet (seeded initialisation)."""
        return make_space(self.setup.space, self.setup.seed, self.data.input_shape,
                          self.data.num_classes)

    @cached_property
    def arch_shapes(self) -> tuple[torch.Size, ...]:
        """Shapes of the supernet's α tensors (decoding shard masks)."""
        return tuple(a.shape for a in self.make_space().arch_parameters())

    def fixed_model(self, spec: dict[str, Any]) -> nn.Module:
        """A fresh copy of ``spec``'s model whose weights the caller overwrites.

        Deriving a subnet builds the whole supernet first, which was a third of a small
        client's round; the structure is built once per process and copied (its initial
        weights are meaningless here, so this does not reseed torch).
        """
        key = encode_spec(spec)
        if key not in self._templates:
            self._templates[key] = build_fixed_model(self.setup, decode_spec(key),
                                                     self.data.input_shape,
                                                     self.data.num_classes)
            while len(self._templates) > TEMPLATES:
                self._templates.popitem(last=False)
        self._templates.move_to_end(key)
        return copy.deepcopy(self._templates[key])

    # -- the three kinds of client work -------------------------------------------------
    def search(self, pid: int, server_round: int, regions: dict[str, torch.Tensor],
               masks: Masks, conf: dict[str, Any]) -> Result:
        """Local first-order bi-level search on the client's shard; returns trained regions.

        ``conf`` is the message's config: ``lr`` and optional ``hp.*`` overrides (FedEx),
        and ``report-val`` (1: report the val loss after training, 2: before and after).
        """
        setup = self.setup
        generator = self._seed(server_round, pid, 1)
        device = client_device()
        train, val = self.splits(pid)
        space = self.make_space()
        slices = space.shard_slices(masks)
        names = {id(p): n for n, p in space.named_parameters()}
        for a in space.arch_parameters():
            slices[names[id(a)]] = None
        state = space.state_dict()
        load_slices(state, regions, slices)
        space.load_state_dict(state)
        space.set_shard(masks)
        space.to(device)
        s = setup.search
        hp = local_hps(setup, "search", conf)
        batch = max(1, int(hp["batch-size"]))
        w_opt = make_optimizer("sgd", space.weights(), lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight-decay"])
        a_opt = torch.optim.Adam(space.arch_parameters(), lr=hp["arch-lr"], betas=(0.5, 0.999),
                                 weight_decay=s.arch_weight_decay)
        steps = steps_per_epoch(len(train[1]), batch, setup.federation.local_steps) \
            * int(hp["local-epochs"])
        report = int(conf.get("report-val", 0))
        metrics: dict[str, float] = {"num-examples": len(train[1]), "partition-id": pid,
                                     "diverged": 0, "steps": steps, "num-val": len(val[1]),
                                     **placement(device)}
        if report >= 2:
            metrics["val_loss_pre"] = self._val_loss(space, val, device)
        try:
            stats = search_step_fn(s)(space, train, val, weight_opt=w_opt, arch_opt=a_opt,
                                      steps=steps, batch_size=min(batch, len(val[1])),
                                      grad_clip=s.grad_clip, generator=generator,
                                      device=device)
        except FloatingPointError:
            metrics["diverged"] = 1
            return {}, metrics
        self._after_training(metrics, stats, space, val, pid, device, report)
        out = slice_state({k: v.cpu() for k, v in space.state_dict().items()}, slices)
        return out, metrics

    def train(self, pid: int, server_round: int, state: dict[str, torch.Tensor],
              spec: dict[str, Any], conf: dict[str, Any]) -> Result:
        """Local supervised training of a fixed model (the FedAvg route); ``conf`` as in
        :meth:`search`."""
        generator = self._seed(server_round, pid, 2)
        device = client_device()
        train_split, val = self.splits(pid)
        model = self.fixed_model(spec)
        model.load_state_dict(state)
        model.to(device)
        r = self.setup.retrain
        hp = local_hps(self.setup, "train", conf)
        opt = make_optimizer(r.optimizer, model.parameters(), lr=hp["lr"],
                             momentum=hp["momentum"], weight_decay=hp["weight-decay"])
        report = int(conf.get("report-val", 0))
        metrics: dict[str, float] = {"num-examples": len(train_split[1]), "partition-id": pid,
                                     "diverged": 0, "num-val": len(val[1]), **placement(device)}
        if report >= 2:
            metrics["val_loss_pre"] = self._val_loss(model, val, device)
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
        self._after_training(metrics, stats, model, val, pid, device, report)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics

    def evaluate(self, pid: int, state: dict[str, torch.Tensor], spec: dict[str, Any]
                 ) -> dict[str, float]:
        """A fixed model's loss/accuracy on the client's val split."""
        _, val = self.splits(pid)
        model = self.fixed_model(spec)
        model.load_state_dict(state)
        device = client_device()
        result = evaluate(model.to(device), val, batch_size=self.setup.eval_batch_size,
                          device=device)
        return {"num-examples": len(val[1]), "partition-id": pid, **result}

    # -- shared steps ---------------------------------------------------------------------
    def _seed(self, server_round: int, pid: int, salt: int) -> torch.Generator:
        return seed_everything(hash((self.setup.seed, server_round, pid, salt)) % 2**31)

    def _val_loss(self, model: nn.Module, val: Split, device: torch.device) -> float:
        return evaluate(model, val, batch_size=self.setup.eval_batch_size,
                        device=device)["eval_loss"]

    def _after_training(self, metrics: dict[str, float], stats: dict[str, float],
                        model: nn.Module, val: Split, pid: int, device: torch.device,
                        report: int) -> None:
        """Add the training stats, the post-training val loss (if asked) and injected faults."""
        metrics.update(stats)
        if report >= 1:
            metrics["val_loss"] = self._val_loss(model, val, device)
        if inject_fault(self.setup.federation, pid):
            metrics["train_loss"] = float("nan")
