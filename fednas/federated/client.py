"""Client-side work of the federated phases, independent of Flower's message types.

Virtual clients keep no state between rounds: everything a client needs arrives in the
message (its shard, the global regions, the round) or is recomputed deterministically from
the scenario (its data partition). What a client reads of the scenario is a
:class:`~fednas.federated.setup.ClientSetup` (a few sections, not the whole run config);
:class:`LocalClients` holds it with the run's dataset, the partitions and the models once per
process — memory the simulation pays once per Ray worker, not once per client (the ClientApp
keeps one per scenario). Models are built once per process and reused: a client loads its
weights into them in place and returns copies of what it trained.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.data.datasets import Dataset
from fednas.data.partition import client_train_val, partition_indices
from fednas.federated.devices import client_device, placement
from fednas.federated.faults import poison, start_fault
from fednas.federated.setup import (
    ClientSetup,
    build_fixed_model,
    decode_spec,
    encode_spec,
    local_hps,
    make_space,
)
from fednas.federated.shards import Masks, load_slices, slice_state
from fednas.spaces.base import SearchSpace
from fednas.training.sandwich import search_step_fn
from fednas.training.train import (
    evaluate,
    make_optimizer,
    seed_everything,
    steps_per_epoch,
    train_epoch,
)
from fednas.training.vectorised import VectorisedTrainer

Split = tuple[torch.Tensor, torch.Tensor]
Result = tuple[dict[str, torch.Tensor], dict[str, float]]
TEMPLATES = 4  # fixed-model templates kept per process


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
        self._trainer: tuple[tuple, VectorisedTrainer] | None = None
        self._on_device: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None
        self._supernet: tuple[SearchSpace, dict[str, torch.Tensor], torch.Tensor] | None = None

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
                                 seed=self.setup.seed, min_size=p.min_partition_size,
                                 groups=self.data.train_groups, by=self.data.group_field)

    def splits(self, pid: int, device: torch.device | None = None) -> tuple[Split, Split]:
        """Client ``pid``'s own train and val splits of its partition (deterministic).

        With a CUDA ``device`` they are cut from a copy of the train set moved there once per
        process (a cohort's clients then never copy their images to the GPU).
        """
        parts = self.parts
        if not 0 <= pid < len(parts):
            raise ValueError(f"partition id {pid} outside 0..{len(parts) - 1}")
        train_idx, val_idx = client_train_val(parts[pid], self.setup.partition.client_val_fraction,
                                              self.setup.seed + pid)
        x, y = self.data.train_x, self.data.train_y
        if device is not None and device.type != "cpu":
            if self._on_device is None or self._on_device[0] != device:
                self._on_device = (device, x.to(device), y.to(device))
            _, x, y = self._on_device
        tr = torch.as_tensor(train_idx, device=x.device)
        va = torch.as_tensor(val_idx, device=x.device)
        return (x[tr], y[tr]), (x[va], y[va])

    def make_space(self) -> SearchSpace:
        """The scenario's supernet (seeded initialisation)."""
        return make_space(self.setup.space, self.setup.seed, self.data.input_shape,
                          self.data.num_classes)

    @cached_property
    def arch_shapes(self) -> tuple[torch.Size, ...]:
        """Shapes of the supernet's α tensors (decoding shard masks)."""
        return tuple(a.shape for a in self.make_space().arch_parameters())

    def fixed_model(self, spec: dict[str, Any]) -> nn.Module:
        """This process's model of ``spec``, whose weights the caller overwrites in place.

        Deriving a subnet builds the whole supernet first, which was a third of a small
        client's round; the model is built once per process and reused by every client that
        trains or evaluates it (they load their weights into it and copy out what they
        return). Its initial weights are meaningless here, so this does not reseed torch.
        """
        key = encode_spec(spec)
        if key not in self._templates:
            self._templates[key] = build_fixed_model(self.setup, decode_spec(key),
                                                     self.data.input_shape,
                                                     self.data.num_classes)
            while len(self._templates) > TEMPLATES:
                self._templates.popitem(last=False)
        self._templates.move_to_end(key)
        return self._templates[key]

    def vectorised_trainer(self, spec: dict[str, Any], grad_clip: float,
                           label_smoothing: float, device: torch.device) -> VectorisedTrainer:
        """A :class:`VectorisedTrainer` over this process's model of ``spec``."""
        key = (encode_spec(spec), grad_clip, label_smoothing, str(device))
        if self._trainer is None or self._trainer[0] != key:
            self._trainer = (key, VectorisedTrainer(
                copy.deepcopy(self.fixed_model(spec)), grad_clip=grad_clip,
                label_smoothing=label_smoothing, device=device,
                eval_batch_size=self.setup.eval_batch_size))
        return self._trainer[1]

    def supernet(self) -> SearchSpace:
        """This process's supernet, reset to the seeded initialisation (weights and torch's
        global RNG state exactly as :meth:`make_space` leaves them, without rebuilding it)."""
        if self._supernet is None:
            space = self.make_space()
            self._supernet = (space, {k: v.clone() for k, v in space.state_dict().items()},
                              torch.get_rng_state())
        space, init, rng = self._supernet
        space.load_state_dict(init)
        torch.set_rng_state(rng)
        return space

    def shard_slices(self, masks: Masks) -> dict[str, Any]:
        """The state regions of a shard (α whole), as :meth:`search` slices them."""
        space = self._supernet[0] if self._supernet is not None else self.supernet()
        slices = space.shard_slices(masks)
        names = {id(p): n for n, p in space.named_parameters()}
        for a in space.arch_parameters():
            slices[names[id(a)]] = None
        return slices

    def seed(self, server_round: int, pid: int, salt: int) -> torch.Generator:
        """Seed torch for client ``pid``'s work in ``server_round`` and return its generator
        (salt 1: search, 2: training)."""
        return seed_everything(hash((self.setup.seed, server_round, pid, salt)) % 2**31)

    # -- the three kinds of client work -------------------------------------------------
    def search(self, pid: int, server_round: int, regions: dict[str, torch.Tensor],
               masks: Masks, conf: dict[str, Any]) -> Result:
        """Local first-order bi-level search on the client's shard; returns trained regions.

        ``conf`` is the message's config: ``lr`` and optional ``hp.*`` overrides (FedEx),
        ``report-val`` (1: report the val loss after training, 2: before and after) and
        ``warmup-rounds`` (α is not updated in rounds up to it), ``sandwich`` (0/1: overrides
        ``search.sandwich``) and ``local-steps`` (overrides ``federation.local-steps``); the
        static-width baselines send the last two (:mod:`simulations.hetero_phases`).
        """
        setup = self.setup
        nan = start_fault(setup.federation, setup.seed, "train.search", server_round, pid)
        generator = self.seed(server_round, pid, 1)
        device = client_device()
        train, val = self.splits(pid)
        space = self.supernet()
        slices = self.shard_slices(masks)
        state = space.state_dict()
        load_slices(state, regions, slices)
        space.set_shard(masks)
        space.to(device)
        s = setup.search
        hp = local_hps(setup, "search", conf)
        batch = max(1, int(hp["batch-size"]))
        w_opt = make_optimizer("sgd", space.weights(), lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight-decay"])
        a_opt = torch.optim.Adam(space.arch_parameters(), lr=hp["arch-lr"], betas=(0.5, 0.999),
                                 weight_decay=s.arch_weight_decay)
        cap = int(conf.get("local-steps", setup.federation.local_steps))
        steps = steps_per_epoch(len(train[1]), batch, cap) * int(hp["local-epochs"])
        report = int(conf.get("report-val", 0))
        if server_round <= int(conf.get("warmup-rounds", 0)):
            a_opt = None  # warm-up round: the weights train, α stays as the server sent it
        metrics: dict[str, float] = {"num-examples": len(train[1]), "partition-id": pid,
                                     "diverged": 0, "steps": steps, "num-val": len(val[1]),
                                     **placement(device)}
        if report >= 2:
            metrics["val_loss_pre"] = self._val_loss(space, val, device)
        if "sandwich" in conf:
            s = dataclasses.replace(s, sandwich=bool(conf["sandwich"]))
        try:
            stats = search_step_fn(s)(space, train, val, weight_opt=w_opt, arch_opt=a_opt,
                                      steps=steps, batch_size=min(batch, len(val[1])),
                                      grad_clip=s.grad_clip, generator=generator,
                                      device=device)
        except FloatingPointError:
            metrics["diverged"] = 1
            return {}, metrics
        self._after_training(metrics, stats, space, val, device, report)
        out = slice_state({k: v.detach().cpu() for k, v in space.state_dict().items()}, slices)
        out = {k: v.clone() for k, v in out.items()}
        if nan:
            poison(out, metrics, server_round, pid)
        return out, metrics

    def train(self, pid: int, server_round: int, state: dict[str, torch.Tensor],
              spec: dict[str, Any], conf: dict[str, Any]) -> Result:
        """Local supervised training of a fixed model (the FedAvg route); ``conf`` as in
        :meth:`search`."""
        nan = start_fault(self.setup.federation, self.setup.seed, "train", server_round, pid)
        generator = self.seed(server_round, pid, 2)
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
        self._after_training(metrics, stats, model, val, device, report)
        out = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if nan:
            poison(out, metrics, server_round, pid)
        return out, metrics

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

    def dap_gates(self, pid: int, server_round: int, state: dict[str, torch.Tensor],
                  spec: dict[str, Any], conf: dict[str, Any]) -> Result:
        """DAP's gate steps on the client's train split, weights frozen (the ``train.dap``
        route: :mod:`fednas.compression.dap_federated`); returns only the gate logits."""
        from fednas.compression.dap_federated import client_update

        device = client_device()
        train_split, _ = self.splits(pid)
        out, metrics = client_update(self.fixed_model(spec), state, train_split, conf,
                                     self.seed(server_round, pid, 5), device)
        return out, {"num-examples": len(train_split[1]), "partition-id": pid, "diverged": 0,
                     **metrics, **placement(device)}

    # -- shared steps ---------------------------------------------------------------------
    def _val_loss(self, model: nn.Module, val: Split, device: torch.device) -> float:
        return evaluate(model, val, batch_size=self.setup.eval_batch_size,
                        device=device)["eval_loss"]

    def _after_training(self, metrics: dict[str, float], stats: dict[str, float],
                        model: nn.Module, val: Split, device: torch.device,
                        report: int) -> None:
        """Add the training stats and the post-training val loss (if asked)."""
        metrics.update(stats)
        if report >= 1:
            metrics["val_loss"] = self._val_loss(model, val, device)
