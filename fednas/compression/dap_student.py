"""DAP as the compression phase's third way to choose the student (``selection = "dap"``).

The greedy derivations (:mod:`fednas.compression.budget`) pick one width choice per layer of
the width space and slice its *first* ``k`` channels. DAP instead prunes the full-width
subnet of the aggregated supernet channel by channel: gates over the inner channels of every
basic block are trained on the server's proxy split with every weight frozen, under the
budget's complexity penalty (:mod:`fednas.compression.dap`), and the kept channels, in any
position, are extracted into a :class:`~fednas.models.resnet.CifarResNet` whose per-block
widths (``mids``) need not be width choices. Clients build that architecture from the spec
``{"kind": "pruned-resnet", "mids": [...]}`` (:func:`fednas.federated.setup.build_fixed_model`).

Choices made here:

* the source is the full-width subnet (every width choice at 1.0) with its BN statistics
  re-estimated on the proxy split: the aggregated supernet's statistics mix all the widths
  clients trained (sandwich rule), and DAP's gates train with BN in eval mode;
* the task loss needs labels; with ``compression.use-labels = false`` (the proxy split as
  unlabelled public data) the labels are the full-width subnet's own predictions, so the
  gates learn to keep what preserves the unpruned model's decisions;
* the kept units are recorded (one 0/1 list per gated layer), so a resumed run rebuilds the
  same student without training the gates again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fednas.compression.budget import Budget, Limits
from fednas.compression.dap import Schedule, extract, select, train_gates
from fednas.compression.dap_gates import DapGates, measure
from fednas.config.compression import CompressionConfig
from fednas.spaces.base import SearchSpace
from fednas.training.distill import predict_logits
from fednas.training.train import Split, recalibrate_bn


def full_width_source(space: SearchSpace, proxy_x: torch.Tensor, batch_size: int,
            device: torch.device) -> nn.Module:
    """The full-width subnet of ``space`` with BN statistics of the proxy images."""
    from fednas.compression.dap import prunable

    full = prunable(space).to(device)
    return recalibrate_bn(full, proxy_x, batch_size=batch_size, device=device)


def _budget(limits: Limits) -> Budget:
    return Budget(params=limits[0], flops=limits[1])


def dap_student(space: SearchSpace, limits: Limits, c: CompressionConfig, proxy: Split,
                seed: int, device: torch.device, eval_batch_size: int = 1000
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Prune the full-width subnet of ``space`` under ``limits`` by DAP on ``proxy``.

    Parameters
    ----------
    space
        The aggregated width-space supernet (not modified).
    limits
        Absolute ``(max_params, max_flops)``; ``None`` leaves a dimension free.
    c
        ``[compression]``: the ``dap-*`` keys, ``batch-size`` and ``use-labels``.
    proxy
        The server's proxy split ``(x, y)``; ``y`` is used only with ``use-labels``.
    seed
        Seeds the batch order and the gate noise.
    device, eval_batch_size
        Where to compute; batch size of the pseudo-labelling pass.

    Returns
    -------
    tuple
        The extracted student (its weights are the kept channels' weights) and a record:
        ``selection``, ``mids``, ``keep`` (per gated layer, 0/1 per unit), measured
        ``params``/``flops``, the limits, ``labels`` (``"proxy"`` or ``"pseudo"``) and the
        gate training report (without its per-step history).

    Raises
    ------
    ConfigError
        If the space is not the width space, or the budget is below the smallest network
        DAP can reach (one channel per block; named in the message).
    """
    x, y = proxy
    full = full_width_source(space, x, c.batch_size, device)
    labels = y if c.use_labels else predict_logits([full], x, eval_batch_size,
                                                   device).argmax(1)
    gates = DapGates(full, tuple(x.shape[1:]), group_size=c.dap_group_size)
    budget = _budget(limits)
    report = train_gates(full, gates, (x, labels.cpu()), budget=budget, device=device,
                         generator=torch.Generator().manual_seed(seed + 45),
                         steps=c.dap_steps, batch_size=c.batch_size, lr=c.dap_lr,
                         lam=c.dap_penalty_weight, mode=c.dap_penalty,
                         schedule=Schedule((c.dap_t_start, c.dap_t_end),
                                           (c.dap_tau_start, c.dap_tau_end)))
    report.pop("history")
    return extract_student(full, gates, limits,
                           labels="proxy" if c.use_labels else "pseudo",
                           gates={k: v for k, v in report.items() if k != "limits"})


def extract_student(full: nn.Module, trained: DapGates, limits: Limits, **extra: Any
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Select the kept units of the ``trained`` gates under ``limits``, extract them from the
    full-width subnet ``full`` and record the student (``extra`` joins the record): the
    common end of gate training on the server and on the clients."""
    keep = select(trained, _budget(limits))
    student = extract(full, trained, keep, _budget(limits))
    params, flops = measure(student, trained.input_shape)
    return student, {
        "selection": "dap", "mids": block_widths(student),
        "keep": [k.int().tolist() for k in keep], "params": params, "flops": flops,
        "limit_params": limits[0], "limit_flops": limits[1],
        "full_params": trained.full[0], "full_flops": trained.full[1], **extra}


def rebuild_student(space: SearchSpace, record: dict[str, Any], c: CompressionConfig,
                    proxy_x: torch.Tensor, device: torch.device) -> nn.Module:
    """The student of a :func:`dap_student` ``record`` again (no gate training), e.g. after
    a resume: the same source and the recorded kept units give the same weights."""
    full = full_width_source(space, proxy_x, c.batch_size, device)
    gates = DapGates(full, tuple(proxy_x.shape[1:]), group_size=c.dap_group_size)
    keep = [torch.tensor(k, dtype=torch.bool) for k in record["keep"]]
    return extract(full, gates, keep, _budget((record["limit_params"],
                                               record["limit_flops"])))


def block_widths(model: nn.Module) -> list[int]:
    """The inner width of every basic block of a :class:`~fednas.models.resnet.CifarResNet`."""
    from fednas.models.resnet import resnet_blocks

    return [int(b.conv1.out_channels) for b in resnet_blocks(model)]
