"""The meta phase's ``dap`` model: a run's trained network pruned by DAP on the meta-train
classes, then meta-trained and scored like every other model (issue 32).

DAP (Colombo & Gao 2021) learns the architecture where data is plentiful and retrains the
extracted structure on tasks with very few examples. Here the plentiful data is every image
of the meta-train classes:

1. the source (``meta.dap.source``: the run's trained Conv-4 baseline, or its searched
   width-space subnet) is built as the meta phase builds it, with a ``meta.ways``-class
   head, under the shot count's seed (:func:`fednas.meta.models.initial_model`);
2. a *linear probe* (a copy whose head spans all meta-train classes) fits that head on the
   frozen body (``probe-steps``), which gives the gates a task loss on the source task;
3. DAP's gates (:mod:`fednas.compression.dap`) train on the probe with every weight frozen,
   under ``[meta.dap]``'s budget measured on the ``ways``-class network (the one that is
   meta-trained), and the kept channels are extracted from that network: the pruned body
   keeps its trained weights, the ``ways``-class head stays new.

The gates' cost model is built on the ``ways``-class network and applied to the probe by
module name, so the budget refers to the model that is scored, not to the probe's wider
head. Steps 2–3 do not depend on the shot count; the result is computed once per phase and
copied for every shot count (:class:`DapSource`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fednas.compression.budget import Budget
from fednas.compression.dap import extract, select, train_gates
from fednas.compression.dap_gates import DapGates, measure
from fednas.config.meta_dap import DapMetaConfig
from fednas.data.episodes import FewShotSet
from fednas.models import HEAD_NAMES
from fednas.training.train import cycle_batches


def with_head(model: nn.Module, classes: int) -> nn.Module:
    """A copy of ``model`` whose linear head (``head``/``classifier``/``fc``/``linear``) has
    ``classes`` outputs (freshly initialised); every other tensor is shared by value."""
    probe = copy.deepcopy(model)
    for name in HEAD_NAMES:
        head = getattr(probe, name, None)
        if isinstance(head, nn.Linear):
            setattr(probe, name, nn.Linear(head.in_features, classes).to(head.weight.device))
            return probe
    raise ValueError(f"meta.dap: {type(model).__name__} has no linear head "
                     f"({', '.join(HEAD_NAMES)})")


def fit_probe(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
              batch_size: int, device: torch.device, generator: torch.Generator
              ) -> dict[str, float]:
    """Fit only the head of ``probe`` (eval mode, body frozen) by Adam on ``(x, y)``;
    return its last loss and its accuracy on ``x``."""
    head = next(getattr(probe, n) for n in HEAD_NAMES if isinstance(getattr(probe, n, None),
                                                                    nn.Linear))
    probe.to(device).eval()
    in_head = {id(p) for p in head.parameters()}
    body = [p for p in probe.parameters() if id(p) not in in_head]
    for p in body:
        p.requires_grad_(False)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loss = torch.zeros(())
    for _, idx in zip(range(steps), cycle_batches(len(y), batch_size, generator), strict=False):
        loss = F.cross_entropy(probe(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in body:
        p.requires_grad_(True)
    with torch.no_grad():
        correct = sum(int((probe(x[i:i + 512].to(device)).argmax(1).cpu() == y[i:i + 512]).sum())
                      for i in range(0, len(y), 512))
    return {"probe_loss": float(loss.detach()), "probe_train_acc": correct / max(len(y), 1)}


def prune_on_source(model: nn.Module, pool: FewShotSet, d: DapMetaConfig, *, seed: int,
                    device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """DAP on the meta-train ``pool``: ``model`` (a ``ways``-class network) pruned under
    ``d``'s budget (see the module docstring).

    Returns
    -------
    tuple
        The extracted network (its body's kept weights; its head sliced from ``model``'s) and
        a record: params/FLOPs of the source and of the result, the kept units per layer,
        the probe's loss and accuracy, the gate report without its history.

    Raises
    ------
    ConfigError
        If the budget is below the smallest reachable network or the model is unsupported.
    """
    ids = np.unique(pool.y.numpy())
    y = torch.as_tensor(np.searchsorted(ids, pool.y.numpy()), dtype=torch.int64)
    x = pool.x
    shape = tuple(x.shape[1:])
    model = model.to(device)
    gates = DapGates(model, shape, group_size=d.group_size)
    budget = Budget(params=d.params or None, flops=d.flops or None)
    probe = with_head(model, len(ids))
    generator = torch.Generator().manual_seed(seed)
    record: dict[str, Any] = fit_probe(probe, x, y, steps=d.probe_steps, lr=d.probe_lr,
                                       batch_size=d.batch_size, device=device,
                                       generator=generator)
    report = train_gates(probe, gates, (x, y), budget=budget, device=device,
                         generator=generator, steps=d.steps, batch_size=d.batch_size,
                         lr=d.lr, lam=d.penalty_weight)
    keep = select(gates, budget)
    pruned = extract(model, gates, keep, budget)
    params, flops = measure(pruned, shape)
    report.pop("history")
    record.update({"source_params": gates.full[0], "source_flops": gates.full[1],
                   "params": params, "flops": flops,
                   "params_ratio": params / max(gates.full[0], 1),
                   "kept_units": [int(k.sum()) for k in keep],
                   "gates": {k: v for k, v in report.items() if k not in ("limits",
                                                                          "kept_units")},
                   "classes": len(ids), "images": len(y)})
    return pruned, record


class DapSource:
    """The ``dap`` model of one meta phase: pruned once, copied for every shot count."""

    def __init__(self, d: DapMetaConfig, pool: FewShotSet, seed: int,
                 device: torch.device) -> None:
        self.d, self.pool, self.seed, self.device = d, pool, seed, device
        self._done: tuple[nn.Module, dict[str, Any]] | None = None

    def model(self, build: Any) -> tuple[nn.Module, str, dict[str, Any]]:
        """The pruned network (a fresh copy), where its weights came from, and DAP's record.
        ``build(name)`` gives ``(model, source)`` as :func:`~fednas.meta.models.initial_model`.
        """
        if self._done is None:
            source, origin = build(self.d.source)
            pruned, record = prune_on_source(source, self.pool, self.d, seed=self.seed,
                                             device=self.device)
            self._done = pruned.cpu(), {"source": self.d.source, "source_init": origin,
                                        **record}
        pruned, record = self._done
        return copy.deepcopy(pruned), f"dap({record['source_init']})", record
