"""Few-shot meta-learning through learn2learn: MAML / ANIL / MetaSGD, meta-training, scoring.

Task sampling (:class:`TaskSampler`, :func:`fixed_tasks`) lives in :mod:`fednas.meta.task_sampler`
and is re-exported here. Any ``nn.Module`` can be wrapped: :class:`Conv4` (the MAML
baseline), a searched subnet, a supernet under a shard.
Batch norm uses batch statistics during adaptation and scoring (the MAML convention).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fednas.data.episodes import Episode, FewShotSet
from fednas.errors import ConfigError
from fednas.meta.l2l import l2l
from fednas.meta.task_sampler import TaskSampler as TaskSampler  # re-exported: part of the meta API
from fednas.meta.task_sampler import fixed_tasks as fixed_tasks
from fednas.models import HEAD_NAMES
from fednas.models.conv4 import Conv4 as Conv4  # re-exported: the baseline is part of the meta API

ALGORITHMS = ("maml", "anil", "metasgd")


def find_head(model: nn.Module, name: str | None = None) -> nn.Module:
    """The output layer ANIL adapts: ``model.<name>``, else head/classifier/fc/linear."""
    for attr in (name,) if name else HEAD_NAMES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"ANIL: {type(model).__name__} has no head module "
                     f"({name or ', '.join(HEAD_NAMES)}); pass head=<attribute name>")


# ----------------------------------------------------------------------------- learners
class MetaLearner(nn.Module):
    """Wrap ``model`` with a learn2learn algorithm; :meth:`adapt` returns the adapted model.

    ``maml`` adapts every parameter (``first_order`` for FOMAML), ``anil`` only the head
    (features shared, computed once per task), ``metasgd`` with learned per-parameter lrs.
    Inner steps use l2l's ``maml_update`` / ``meta_sgd_update``; parameters that a forward
    pass leaves unused (a supernet's ops outside its shard) are simply not adapted.
    """

    def __init__(self, model: nn.Module, algorithm: str = "maml", *, inner_lr: float = 0.4,
                 first_order: bool = False, head: str | None = None) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"meta.algorithm: unknown {algorithm!r}; allowed: {ALGORITHMS}")
        self.algorithm, self.inner_lr, self.first_order = algorithm, inner_lr, first_order
        self.model = model
        self.history: list[dict] = []
        if algorithm == "metasgd":
            self.learner = l2l.algorithms.MetaSGD(model, lr=inner_lr, first_order=first_order)
        else:
            target = find_head(model, head) if algorithm == "anil" else model
            self.learner = l2l.algorithms.MAML(target, lr=inner_lr, first_order=first_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the model feeds its head (ANIL), captured by a pre-hook on the head."""
        seen: list[torch.Tensor] = []
        hook = self.learner.module.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        return seen[-1]

    def _step(self, clone: nn.Module, loss: torch.Tensor, first_order: bool) -> None:
        """One inner step with l2l's update rule; parameters the loss does not use stay."""
        grads = torch.autograd.grad(loss, list(clone.module.parameters()),
                                    retain_graph=not first_order, create_graph=not first_order,
                                    allow_unused=True)
        if self.algorithm == "metasgd":
            clone.module = l2l.algorithms.meta_sgd_update(clone.module, clone.lrs, grads)
        else:
            clone.module = l2l.algorithms.maml_update(clone.module, clone.lr, grads)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, *,
              first_order: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``steps`` gradient steps on ``(x, y)`` from the meta-parameters (left untouched)."""
        fo = self.first_order if first_order is None else first_order
        clone = self.learner.clone()
        if self.algorithm == "anil":
            feats = self.features(x)
            for _ in range(steps):
                self._step(clone, F.cross_entropy(clone(feats), y), fo)
            return lambda q: clone(self.features(q))
        for _ in range(steps):
            self._step(clone, F.cross_entropy(clone(x), y), fo)
        return clone


def _seed_from(generator: torch.Generator | None) -> int:
    gen = generator if generator is not None else torch.default_generator
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def meta_train(model: nn.Module | MetaLearner, tasks: FewShotSet | TaskSampler,
               algorithm: str = "maml", *, ways: int, shots: int, queries: int,
               meta_batch: int = 4, inner_steps: int = 1, inner_lr: float = 0.4,
               outer_lr: float = 1e-3, iterations: int = 100, first_order: bool = False,
               device: torch.device | str = "cpu", generator: torch.Generator | None = None,
               head: str | None = None, before_step: Callable[[int], None] | None = None,
               callback: Callable[[dict], None] | None = None, arch_lr: float = 0.0
               ) -> MetaLearner:
    """Meta-train ``model`` on tasks from ``tasks`` (Adam outer loop); return the learner.

    Each iteration averages the query loss of ``meta_batch`` tasks after ``inner_steps``
    adaptation steps. ``before_step(iteration)`` runs before each outer step (AT-NAS samples
    a subnet there); ``callback`` gets ``{"iteration", "loss", "accuracy"}`` and the same
    records are kept in ``learner.history``. Architecture parameters (``arch_parameters()``)
    are meta-trained only with ``arch_lr > 0`` (MetaNAS: their own Adam, β = (0.5, 0.999) as
    in DARTS), else left as they are; the inner loop adapts them like any parameter the loss
    uses. A :class:`MetaLearner` continues with its own algorithm settings.
    """
    device = torch.device(device)
    if isinstance(model, MetaLearner):
        learner = model.to(device)
    else:
        learner = MetaLearner(model.to(device), algorithm, inner_lr=inner_lr,
                              first_order=first_order, head=head)
    if isinstance(tasks, TaskSampler):
        if (tasks.ways, tasks.shots, tasks.queries) != (ways, shots, queries):
            raise ConfigError(f"meta: the task sampler is {tasks.ways}-way {tasks.shots}-shot "
                              f"{tasks.queries}-query, not {ways}/{shots}/{queries}")
        sampler = tasks
    else:
        sampler = TaskSampler(tasks, ways=ways, shots=shots, queries=queries,
                              seed=_seed_from(generator))
    arch = getattr(learner.model, "arch_parameters", list)()
    frozen = {id(p) for p in arch}
    groups: list[dict] = [{"params": [p for p in learner.parameters() if id(p) not in frozen]}]
    if arch and arch_lr > 0:
        groups.append({"params": arch, "lr": arch_lr, "betas": (0.5, 0.999)})
    optimizer = torch.optim.Adam(groups, lr=outer_lr)
    learner.train()
    for it in range(iterations):
        if before_step is not None:
            before_step(it)
        optimizer.zero_grad()
        total_loss = total_acc = 0.0
        for _ in range(meta_batch):
            ep = sampler.sample().to(device)
            adapted = learner.adapt(ep.support_x, ep.support_y, inner_steps)
            logits = adapted(ep.query_x)
            loss = F.cross_entropy(logits, ep.query_y)
            (loss / meta_batch).backward()
            total_loss += float(loss.detach())
            total_acc += float((logits.argmax(1) == ep.query_y).float().mean())
        optimizer.step()
        record = {"iteration": it + 1, "loss": total_loss / meta_batch,
                  "accuracy": total_acc / meta_batch}
        learner.history.append(record)
        if callback is not None:
            callback(record)
    return learner


@contextlib.contextmanager
def _kept_buffers(model: nn.Module) -> Iterator[None]:
    """Restore BN running statistics that scoring in train mode would otherwise move."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved, strict=True):
                b.copy_(s)


def task_accuracies(model: nn.Module | MetaLearner, tasks: Sequence[Episode], *,
                    steps: int = 5, algorithm: str = "maml", inner_lr: float = 0.4,
                    device: torch.device | str = "cpu", head: str | None = None) -> np.ndarray:
    """Query accuracy of each task after ``steps`` first-order adaptation steps on its support.

    A :class:`MetaLearner` uses its own algorithm and lrs; a bare model is wrapped with
    ``algorithm`` and ``inner_lr``. The meta-parameters and buffers are left unchanged.
    """
    learner = model if isinstance(model, MetaLearner) else MetaLearner(
        model, algorithm, inner_lr=inner_lr, head=head)
    was_training = learner.training
    learner.to(device).train()
    accs = []
    with _kept_buffers(learner):
        for i in range(len(tasks)):
            ep = tasks[i].to(device)
            adapted = learner.adapt(ep.support_x, ep.support_y, steps, first_order=True)
            with torch.no_grad():
                accs.append(float((adapted(ep.query_x).argmax(1) == ep.query_y).float().mean()))
    learner.train(was_training)
    return np.asarray(accs)


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal 95 % confidence interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95: no values")
    spread = v.std(ddof=1) if v.size > 1 else 0.0
    return float(v.mean()), float(1.96 * spread / math.sqrt(v.size))


def evaluate_tasks(model: nn.Module | MetaLearner, tasks: Sequence[Episode], **kwargs
                   ) -> tuple[float, float]:
    """Mean query accuracy and 95 % CI over ``tasks`` (see :func:`task_accuracies`)."""
    return mean_ci95(task_accuracies(model, tasks, **kwargs))

