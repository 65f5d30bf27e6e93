"""Plain transfer for DAP (issue 32): pruned structures of equal complexity, conventional
fine-tuning on ``k`` labelled examples per class of unseen classes, and its accuracy.

DAP's paper targets transfer learning: a model trained on a large source task is pruned,
then fine-tuned on a small target task. Besides :mod:`fednas.compression.dap`'s selection,
this module gives the two baselines a pruning method must beat at the same complexity, as
``keep`` lists (one bool per unit of every gated layer) for :func:`~fednas.compression.dap.extract`:

- :func:`magnitude_keep`: L1-norm channel pruning (Li et al., "Pruning Filters for Efficient
  ConvNets", ICLR 2017) to the same budget. A unit's score is the mean L1 norm of the output
  filters of its channels (rows of the conv/linear weight that produces the gated
  activation), divided by the mean score of its layer: raw norms grow with the fan-in and
  with each layer's scale (before BN any scale is free), so only the norm *relative to its
  layer* is compared across layers. The globally lowest score is dropped until the exact
  cost :meth:`~fednas.compression.dap_gates.DapGates.hard_cost` fits (≥ 1 unit per layer).
- :func:`random_keep`: the same number of kept units per layer as a given selection (DAP's),
  chosen uniformly at random in each layer: the cost is identical (units of one layer have
  the same size when ``group_size`` divides the channels; else it differs by less than one
  group), so only *which* units are kept differs, not how the budget is spread over layers.

:func:`finetune` is conventional fine-tuning: a fresh ``ways``-class head (the one named
as :func:`fednas.meta.learners.find_head` does), every weight trained by Adam (or SGD) for a
fixed number of steps on the support set; :func:`transfer_accuracy` scores the query set and
:func:`select_lr` picks a learning rate on validation tasks. :func:`draw_tasks` draws the
seeded N-way K-shot tasks (the same tasks for every model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fednas.compression.budget import Budget, Limits
from fednas.compression.dap import resolve_limits
from fednas.compression.dap_gates import DapGates
from fednas.data.episodes import Episode, FewShotSet
from fednas.errors import ConfigError
from fednas.models import HEAD_NAMES

OPTIMIZERS = ("adam", "sgd")
BN_MODES = ("frozen", "train")


def _fits(cost: tuple[int, int], limits: Limits) -> bool:
    return all(lim is None or c <= lim for c, lim in zip(cost, limits, strict=True))


# ----------------------------------------------------------------------------- structures
def unit_norms(model: nn.Module, gates: DapGates) -> list[torch.Tensor]:
    """Per gated layer, the mean L1 norm of each unit's output filters (float64, CPU).

    A channel's filter is its row of every conv/linear weight whose output the layer gates
    (``Link.dst``); BN affine parameters are not counted.
    """
    chans = [torch.zeros(c, dtype=torch.float64) for c in gates.layout.channels]
    for link in gates.layout.links:
        m = model.get_submodule(link.module)
        if link.dst is not None and isinstance(m, nn.Conv2d | nn.Linear):
            chans[link.dst] += m.weight.detach().cpu().double().abs().flatten(1).sum(1)
    return [torch.stack([part.mean() for part in c.split(s.tolist())])
            for c, s in zip(chans, gates.sizes, strict=True)]


def magnitude_keep(model: nn.Module, gates: DapGates, budget: Budget) -> list[torch.Tensor]:
    """L1-norm pruning of ``model`` to ``budget``: the units to keep, one bool per unit.

    Scores are :func:`unit_norms` divided by their layer's mean (see the module docstring);
    the unit of lowest score is dropped, globally, until ``gates.hard_cost`` fits the
    budget; a layer's last unit is never dropped.

    Raises
    ------
    ConfigError
        If the budget sets no limit or is below the smallest reachable network.
    """
    limits = resolve_limits(gates, budget)
    norms = unit_norms(model, gates)
    scores = [n / n.mean() if float(n.mean()) > 0 else torch.ones_like(n) for n in norms]
    keep = [torch.ones(len(s), dtype=torch.bool) for s in gates.sizes]
    order = sorted((float(s[i]), layer, i) for layer, s in enumerate(scores)
                   for i in range(len(s)))
    for _, layer, i in order:
        if _fits(gates.hard_cost(keep), limits):
            return keep
        if int(keep[layer].sum()) > 1:
            keep[layer][i] = False
    if not _fits(gates.hard_cost(keep), limits):  # only with unequal unit sizes in a layer
        raise ConfigError(f"magnitude_keep: the largest unit of every layer costs "
                          f"{gates.hard_cost(keep)}, over the budget {limits}")
    return keep


def random_keep(gates: DapGates, counts: Sequence[int] | Sequence[torch.Tensor],
                generator: torch.Generator) -> list[torch.Tensor]:
    """A uniformly random subset with ``counts[l]`` units in gated layer ``l``.

    ``counts`` may be a selection (bool tensors, e.g. DAP's), whose per-layer counts are
    taken. Drawn with ``generator`` (CPU), layer by layer.

    Raises
    ------
    ConfigError
        If there is not one count per layer in ``1..units``.
    """
    n = [int(c.sum()) if isinstance(c, torch.Tensor) else int(c) for c in counts]
    units = [len(s) for s in gates.sizes]
    if len(n) != len(units) or not all(1 <= c <= u for c, u in zip(n, units, strict=True)):
        raise ConfigError(f"random_keep: need one count in 1..units per layer {units}, got {n}")
    keep = []
    for c, u in zip(n, units, strict=True):
        k = torch.zeros(u, dtype=torch.bool)
        k[torch.randperm(u, generator=generator)[:c]] = True
        keep.append(k)
    return keep


# ----------------------------------------------------------------------------- fine-tuning
def new_head(model: nn.Module, ways: int, generator: torch.Generator) -> nn.Linear:
    """Replace the last linear layer of ``model``'s head (``head``, ``classifier``, ``fc``
    or ``linear``) by a fresh ``ways``-class one, in place; return it.

    Initialised as :class:`torch.nn.Linear` is (uniform ±1/√fan-in), from ``generator``.
    """
    for attr in HEAD_NAMES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            break
    else:
        raise ConfigError(f"finetune: {type(model).__name__} has no head module "
                          f"({', '.join(HEAD_NAMES)})")
    name = attr if isinstance(head, nn.Linear) else next(
        (f"{attr}.{n}" for n, m in reversed(list(head.named_modules()))
         if isinstance(m, nn.Linear)), None)
    if name is None:
        raise ConfigError(f"finetune: {type(model).__name__}.{attr} holds no nn.Linear")
    old = model.get_submodule(name)
    fresh = nn.Linear(old.in_features, ways, bias=old.bias is not None)
    bound = 1.0 / math.sqrt(old.in_features)
    with torch.no_grad():
        fresh.weight.copy_(torch.rand(fresh.weight.shape, generator=generator) * 2 * bound
                           - bound)
        if fresh.bias is not None:
            fresh.bias.copy_(torch.rand(ways, generator=generator) * 2 * bound - bound)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf,
            fresh.to(old.weight.device, old.weight.dtype))
    return model.get_submodule(name)


def finetune(model: nn.Module, support: tuple[torch.Tensor, torch.Tensor], *, steps: int,
             lr: float, batch_size: int, device: torch.device, generator: torch.Generator,
             ways: int | None = None, head: str = "new", optimizer: str = "adam",
             weight_decay: float = 0.0, bn: str = "frozen") -> nn.Module:
    """Conventional fine-tuning of a copy of ``model`` on a small labelled ``support`` set.

    Parameters
    ----------
    model
        The (pruned or full) source network; not modified.
    support
        ``(x, y)``, labels ``0..ways-1`` (``k`` examples per class).
    steps, lr, batch_size
        Optimiser steps, learning rate, batch size (capped at the support size; batches
        are drawn from reshuffled passes over the support).
    device, generator
        Where to train; the CPU generator of the head's initialisation and the batches.
    ways
        Classes of the new head (default ``max(y) + 1``).
    head
        ``"new"``: a fresh ``ways``-class head (:func:`new_head`); ``"keep"``: train the
        model's own head (it must already have ``ways`` outputs).
    optimizer, weight_decay
        ``"adam"`` or ``"sgd"`` (momentum 0.9), on every parameter.
    bn
        ``"frozen"``: BN keeps the source's running statistics (eval mode; its affine
        weights still train), robust to 5-image batches; ``"train"``: train mode.

    Returns
    -------
    nn.Module
        The fine-tuned copy, in eval mode, on ``device``.
    """
    x, y = support
    if steps < 0 or lr <= 0 or batch_size < 1 or head not in ("new", "keep") \
            or optimizer not in OPTIMIZERS or bn not in BN_MODES or len(y) == 0:
        raise ConfigError(f"finetune: need steps >= 0, lr > 0, batch_size >= 1, a support, "
                          f"head in ('new', 'keep'), optimizer in {OPTIMIZERS}, bn in "
                          f"{BN_MODES}; got {steps}, {lr}, {batch_size}, {len(y)}, {head!r}, "
                          f"{optimizer!r}, {bn!r}")
    net = copy.deepcopy(model).to(device)
    if head == "new":
        new_head(net, ways or int(y.max()) + 1, generator)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay))
    net.train(bn == "train")
    n, size = len(y), min(batch_size, len(y))
    order, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos: pos + size]
        pos += size
        loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def transfer_accuracy(model: nn.Module, query: tuple[torch.Tensor, torch.Tensor], *,
                      device: torch.device, batch_size: int = 256) -> float:
    """Accuracy of ``model`` (eval mode, restored) on ``query`` ``(x, y)``."""
    was_training = model.training
    model.eval()
    x, y = query
    correct = sum(int((model(x[i: i + batch_size].to(device)).argmax(1).cpu()
                       == y[i: i + batch_size]).sum()) for i in range(0, len(y), batch_size))
    model.train(was_training)
    return correct / max(len(y), 1)


def task_accuracies(model: nn.Module, tasks: Sequence[Episode], *, lr: float, seed: int,
                    device: torch.device, **kwargs) -> list[float]:
    """Query accuracy after :func:`finetune` (``kwargs``) on each task's support; task ``i``
    uses the generator seeded ``seed + i`` (the same batches for every model)."""
    out = []
    for i, task in enumerate(tasks):
        net = finetune(model, (task.support_x, task.support_y), lr=lr, ways=task.ways,
                       device=device, generator=torch.Generator().manual_seed(seed + i),
                       **kwargs)
        out.append(transfer_accuracy(net, (task.query_x, task.query_y), device=device))
    return out


def select_lr(model: nn.Module, tasks: Sequence[Episode], lrs: Sequence[float], *, seed: int,
              **kwargs) -> tuple[float, dict[float, float]]:
    """The lr of ``lrs`` with the best mean accuracy on validation ``tasks`` (first on a tie)
    and every candidate's mean accuracy; ``kwargs`` go to :func:`finetune`."""
    if not lrs or not tasks:
        raise ConfigError("select_lr: need at least one lr and one validation task")
    scores = {lr: float(np.mean(task_accuracies(model, tasks, lr=lr, seed=seed, **kwargs)))
              for lr in lrs}
    return max(scores, key=lambda lr: (scores[lr], -list(lrs).index(lr))), scores


# ----------------------------------------------------------------------------- tasks
def draw_tasks(data: FewShotSet, class_ids: Sequence[int] | np.ndarray, *, ways: int,
               shots: int, queries: int, count: int, seed: int) -> list[Episode]:
    """``count`` seeded ``ways``-way ``shots``-shot tasks on ``class_ids`` of ``data``:
    classes without replacement per task, ``shots + queries`` distinct samples per class
    (support first), labels ``0..ways-1``.

    Raises
    ------
    ConfigError
        If there are fewer than ``ways`` classes or a class has too few samples.
    """
    ids = np.asarray(class_ids)
    labels = data.y.numpy()
    members = {int(c): np.flatnonzero(labels == c) for c in ids}
    small = min((len(m) for m in members.values()), default=0)
    if len(ids) < ways or small < shots + queries:
        raise ConfigError(f"transfer tasks: {ways}-way {shots}-shot with {queries} queries "
                          f"need {ways} classes of >= {shots + queries} samples; got "
                          f"{len(ids)} classes, the smallest of {small}")
    rng = np.random.default_rng(seed)
    tasks = []
    for _ in range(count):
        chosen = rng.choice(ids, size=ways, replace=False)
        picks = [rng.choice(members[int(c)], size=shots + queries, replace=False)
                 for c in chosen]
        support = torch.as_tensor(np.concatenate([p[:shots] for p in picks]))
        query = torch.as_tensor(np.concatenate([p[shots:] for p in picks]))
        tasks.append(Episode(data.x[support], torch.arange(ways).repeat_interleave(shots),
                             data.x[query], torch.arange(ways).repeat_interleave(queries),
                             tuple(int(c) for c in chosen)))
    return tasks
