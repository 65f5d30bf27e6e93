"""Training core: first-order bi-level search, plain training and evaluation on tensors.

Data lives in memory as ``(x, y)`` tensors; batches are index permutations drawn from an
explicit ``torch.Generator`` so a seed fixes every step. ``device`` is always explicit.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fednas.errors import ConfigError

Split = tuple[torch.Tensor, torch.Tensor]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; make CPU kernels deterministic; return a generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {name!r} requested but CUDA is not available; "
                          "use 'auto' or 'cpu'")
    return torch.device(name)


def batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
            drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(n)`` in batches."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start: start + batch_size]


def cycle_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches (reshuffled at each pass)."""
    while True:
        yield from batches(n, batch_size, generator, drop_last=True)


@dataclass
class EpochStats:
    """Running sums of one epoch."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += float(loss) * len(y)
        self.correct += int((logits.argmax(1) == y).sum())
        self.seen += len(y)
        self.steps += 1

    def result(self, prefix: str) -> dict[str, float]:
        seen = max(self.seen, 1)
        return {f"{prefix}_loss": self.loss / seen, f"{prefix}_acc": self.correct / seen}


def arch_step(model: nn.Module, val: Split, idx: torch.Tensor, arch_opt: torch.optim.Optimizer,
              stats: EpochStats, device: torch.device) -> None:
    """One first-order α step on the validation batch ``idx`` (stats accumulated)."""
    xv, yv = val[0][idx].to(device), val[1][idx].to(device)
    arch_opt.zero_grad(set_to_none=True)
    logits = model(xv)
    loss = F.cross_entropy(logits, yv)
    loss.backward()
    arch_opt.step()
    stats.add(loss.detach(), logits.detach(), yv)


def bilevel_batches(model: nn.Module, train: Split, val: Split, *,
                    arch_opt: torch.optim.Optimizer | None, arch_stats: EpochStats, steps: int,
                    batch_size: int, generator: torch.Generator, device: torch.device
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``steps`` first-order bi-level steps: each takes the α step on a val
    batch (none when ``arch_opt`` is None: warm-up), then yields the train batch ``(x, y)``
    (on ``device``) for the caller's weight step."""
    train_it = cycle_batches(len(train[1]), batch_size, generator)
    val_it = cycle_batches(len(val[1]), batch_size, generator)
    for _ in range(steps):
        if arch_opt is not None:
            arch_step(model, val, next(val_it), arch_opt, arch_stats, device)
        idx = next(train_it)
        yield train[0][idx].to(device), train[1][idx].to(device)


def checked_loss(logits: torch.Tensor, y: torch.Tensor, what: str, hint: str,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of a weight step; :class:`FloatingPointError` when it is not finite
    (the client reports itself diverged)."""
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss became {float(loss.detach())}; {hint}")
    return loss


def clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grad_clip: float,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> None:
    """Clip the gradients of ``params`` to ``grad_clip``, step, then step the scheduler."""
    nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def search_steps(model: nn.Module, train: Split, val: Split, *, weight_opt: torch.optim.Optimizer,
                 arch_opt: torch.optim.Optimizer | None, steps: int, batch_size: int,
                 grad_clip: float, generator: torch.Generator, device: torch.device,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 progress=None) -> dict[str, float]:
    """First-order DARTS: per step, one α step on a val batch then one weight step.

    ``arch_opt`` None skips the α step (warm-up). The scheduler, if any, steps per batch.
    """
    model.train()
    weights = [p for g in weight_opt.param_groups for p in g["params"]]
    stats, arch_stats = EpochStats(), EpochStats()
    for x, y in bilevel_batches(model, train, val, arch_opt=arch_opt, arch_stats=arch_stats,
                                steps=steps, batch_size=batch_size, generator=generator,
                                device=device):
        weight_opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = checked_loss(logits, y, "search", "lower search.lr")
        loss.backward()
        clipped_step(weight_opt, weights, grad_clip, scheduler)
        stats.add(loss.detach(), logits.detach(), y)
        if progress is not None:
            progress()
    out = stats.result("train")
    if arch_opt is not None:
        out.update(arch_stats.result("arch"))
    return out


def train_epoch(model: nn.Module, data: Split, *, optimizer: torch.optim.Optimizer,
                batch_size: int, grad_clip: float, generator: torch.Generator,
                device: torch.device, scheduler=None, label_smoothing: float = 0.0,
                progress=None) -> dict[str, float]:
    """One pass of supervised training over ``data``."""
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stats = EpochStats()
    for idx in batches(len(data[1]), batch_size, generator, drop_last=True):
        x, y = data[0][idx].to(device), data[1][idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = checked_loss(logits, y, "training", "lower the lr", label_smoothing)
        loss.backward()
        clipped_step(optimizer, params, grad_clip, scheduler)
        stats.add(loss.detach(), logits.detach(), y)
        if progress is not None:
            progress()
    return stats.result("train")


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, *, batch_size: int, device: torch.device
             ) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    stats = EpochStats()
    n = len(data[1])
    for start in range(0, n, batch_size):
        x = data[0][start: start + batch_size].to(device)
        y = data[1][start: start + batch_size].to(device)
        logits = model(x)
        stats.add(F.cross_entropy(logits, y), logits, y)
    model.train(was_training)
    return stats.result("eval")


def make_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float
                   ) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or Adam."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer: {name!r} is not allowed; allowed values: ['sgd', 'adam']")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   lr_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step schedule: cosine to ``lr_min``, one-cycle, or constant (None)."""
    total_steps = max(total_steps, 1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps, lr_min)
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=total_steps)
    return None


def steps_per_epoch(n: int, batch_size: int, cap: int = 0) -> int:
    """Full batches in an epoch of ``n`` samples, capped at ``cap`` when ``cap > 0``."""
    steps = max(n // batch_size, 1)
    return min(steps, cap) if cap else steps


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` to ``end``."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, *, batch_size: int,
                   device: torch.device) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``x`` (cumulative average, no grads).

    A subnet inheriting a supernet's weights inherits BN statistics gathered under the
    mixture of ops; recalibrating on a few hundred proxy images makes its evaluation honest.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) == 0:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start: start + batch_size].to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model
