"""DAP's gates trained federatedly on the clients (``compression.dap-rounds > 0``).

The server holds the gate logits ``θ`` (one per channel group of the full-width subnet) and
the frozen full-width weights. A round of the ``train.dap`` route:

* **down**: the frozen weights (BN statistics included) and ``θ``, both as arrays, and the
  gate settings as config (:func:`gate_config`: steps, lr, penalty, temperatures, group
  size, the budget's absolute limits, where the round's steps sit in the whole schedule);
  a deployment would keep the weights on the device after the first round; Flower's
  messages are stateless, so here they travel every round (``bytes_down``);
* **on the client**: :func:`~fednas.compression.dap.train_gates` on its own labelled train
  split with every weight frozen (:func:`client_update`): the same objective as on the
  server, with the temperatures at this round's part of the global schedule;
* **up**: ``θ`` only (``gates.<name>`` arrays: a few hundred floats for a ResNet-20, no
  weights), averaged by the server weighted by the clients' example counts (the masked
  weighted mean of the fixed-model rounds, which leaves the weights unchanged since no
  client returns them).

After the last round the server selects and extracts the subnet exactly as after gate
training on its proxy split (:mod:`fednas.compression.dap_student`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fednas.compression.budget import Budget
from fednas.compression.dap import Schedule, train_gates
from fednas.compression.dap_gates import DapGates
from fednas.config.compression import CompressionConfig
from fednas.training.train import Split

PREFIX = "gates."


def pack(gates: DapGates) -> dict[str, torch.Tensor]:
    """``θ`` as arrays of a message (``gates.theta.<i>``)."""
    return {PREFIX + k: v.detach().cpu().clone() for k, v in gates.state_dict().items()}


def unpack(gates: DapGates, state: dict[str, torch.Tensor]) -> None:
    """Load the ``gates.*`` entries of ``state`` into ``gates``."""
    gates.load_state_dict({k[len(PREFIX):]: v for k, v in state.items()
                           if k.startswith(PREFIX)})


def weights_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the gate entries (the frozen model's tensors)."""
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def gate_config(c: CompressionConfig, limits: tuple[int | None, int | None],
                rounds: int) -> dict[str, Any]:
    """The ``dap-*`` config entries of every round (a limit of 0: none); the client places
    round ``r``'s steps at ``(r - 1) · dap-steps`` of the ``dap-total`` schedule."""
    return {"dap-steps": c.dap_steps, "dap-lr": c.dap_lr,
            "dap-penalty-weight": c.dap_penalty_weight, "dap-penalty": c.dap_penalty,
            "dap-group-size": c.dap_group_size, "dap-batch-size": c.batch_size,
            "dap-t": [c.dap_t_start, c.dap_t_end], "dap-tau": [c.dap_tau_start, c.dap_tau_end],
            "dap-limit-params": limits[0] or 0, "dap-limit-flops": limits[1] or 0,
            "dap-total": rounds * c.dap_steps}


def client_update(model: nn.Module, state: dict[str, torch.Tensor], data: Split,
                  conf: dict[str, Any], generator: torch.Generator, device: torch.device
                  ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One client's gate steps in round ``conf["server-round"]``: ``model`` (the full-width
    subnet's architecture) takes the frozen weights of ``state``, the gates its ``θ``;
    returns the new ``θ`` and metrics."""
    model.load_state_dict(weights_only(state))
    gates = DapGates(model, tuple(data[0].shape[1:]), group_size=int(conf["dap-group-size"]))
    unpack(gates, state)
    limits = (int(conf["dap-limit-params"]) or None, int(conf["dap-limit-flops"]) or None)
    report = train_gates(
        model, gates, data, budget=Budget(params=limits[0], flops=limits[1]), device=device,
        generator=generator, steps=int(conf["dap-steps"]),
        batch_size=min(int(conf["dap-batch-size"]), len(data[1])), lr=float(conf["dap-lr"]),
        lam=float(conf["dap-penalty-weight"]), mode=str(conf["dap-penalty"]),
        schedule=Schedule(tuple(conf["dap-t"]), tuple(conf["dap-tau"])),
        offset=(int(conf["server-round"]) - 1) * int(conf["dap-steps"]),
        total=int(conf["dap-total"]))
    return pack(gates), {"train_loss": report["task_loss"], "dap_penalty": report["penalty"],
                         "dap_expected_params": report["expected_params"]}
