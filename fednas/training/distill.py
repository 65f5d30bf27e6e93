"""Knowledge distillation on a server-side proxy set (Hinton et al. 2015; FedDF; DNA).

The teacher is any module — the aggregated supernet (full mixture), its argmax-α subnet —
or several client models whose logits are averaged (FedDF, Lin et al. 2020). The student
minimises :func:`kd_loss` on proxy inputs; with DNA (Li et al. 2020) student blocks also
regress the teacher's block outputs (:func:`block_regression_loss`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fednas.training.train import batches

log = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            labels: torch.Tensor | None = None, temperature: float = 4.0,
            beta: float = 0.0) -> torch.Tensor:
    """Distillation loss ``T² · KL(p_t ‖ p_s) + β · CE(z_s, y)``, averaged over the batch.

    Parameters
    ----------
    student_logits, teacher_logits
        ``(N, classes)`` logits; the teacher's are treated as constants (detached).
    labels
        ``(N,)`` class indices, or None (unlabelled proxy data: the CE term is dropped).
    temperature
        ``T > 0``; ``p = softmax(z / T)``. The ``T²`` factor keeps gradients on scale.
    beta
        Weight ``β >= 0`` of the cross-entropy on ``labels``.
    """
    if temperature <= 0 or beta < 0:
        raise ValueError(f"kd_loss: need temperature > 0 and beta >= 0, got {temperature}, {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_loss: student logits {tuple(student_logits.shape)} and teacher "
                         f"logits {tuple(teacher_logits.shape)} differ in shape")
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    loss = temperature**2 * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    if labels is not None and beta > 0:
        loss = loss + beta * F.cross_entropy(student_logits, labels)
    return loss


@torch.no_grad()
def ensemble_logits(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Mean logits of ``models`` on ``x`` (the FedDF teacher), without gradients.

    The models' train/eval modes are left as they are (use eval for a teacher).
    """
    if not models:
        raise ValueError("ensemble_logits: needs at least one model")
    return torch.stack([m(x) for m in models]).mean(0)


def _as_list(teachers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    return [teachers] if isinstance(teachers, nn.Module) else list(teachers)


@torch.no_grad()
def predict_logits(models: list[nn.Module], x: torch.Tensor, batch_size: int,
             device: torch.device) -> torch.Tensor:
    """Ensemble logits over ``x`` in eval mode (modes restored), on the CPU."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        return torch.cat([ensemble_logits(models, x[i: i + batch_size].to(device)).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def agreement(student: nn.Module, teachers: nn.Module | Sequence[nn.Module], x: torch.Tensor,
              *, batch_size: int, device: torch.device) -> float:
    """Fraction of ``x`` on which the student's top-1 class equals the teachers' (eval mode)."""
    s = predict_logits([student], x, batch_size, device).argmax(1)
    t = predict_logits(_as_list(teachers), x, batch_size, device).argmax(1)
    return float((s == t).float().mean()) if len(x) else 0.0


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module],
            proxy_x: torch.Tensor, proxy_y: torch.Tensor | None = None, *, epochs: int,
            lr: float, batch_size: int, temperature: float = 4.0, beta: float = 0.0,
            device: torch.device, generator: torch.Generator, momentum: float = 0.9,
            weight_decay: float = 0.0, grad_clip: float = 5.0, cosine: bool = False,
            max_steps: int = 0,
            blocks: tuple[Sequence[nn.Module], Sequence[nn.Module]] | None = None,
            dna_weight: float = 0.0) -> dict[str, list[float]]:
    """Train ``student`` to match the (ensemble) teacher on proxy data with SGD.

    Teacher logits are computed once, in eval mode; the student trains in train mode on
    shuffled batches drawn from ``generator`` (so a seed fixes every step).

    Parameters
    ----------
    student
        The model to train, already on ``device``.
    teachers
        One teacher or several (FedDF: their logits are averaged), on ``device``.
    proxy_x, proxy_y
        Server-side proxy inputs and optional labels (used only when ``beta > 0``).
    epochs, lr, batch_size, momentum, weight_decay, grad_clip
        SGD (Nesterov when ``momentum > 0``).
    cosine
        Anneal the learning rate to 0 over the run (constant otherwise).
    max_steps
        Stop after this many steps (0 = ``epochs`` full passes).
    temperature, beta
        See :func:`kd_loss`.
    blocks, dna_weight
        DNA: ``(student blocks, teacher blocks)``, modules whose outputs are paired; the loss
        adds ``dna_weight`` × :func:`block_regression_loss` of their outputs. Needs a single
        teacher; teacher outputs are then computed per batch (in eval mode).
    device, generator
        Where to train; source of the batch order.

    Returns
    -------
    dict
        ``{"loss": [mean loss of each epoch]}``.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"distill: need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, "
                         f"{batch_size}, {lr}")
    if beta > 0 and proxy_y is None:
        log.warning("distill: beta=%s but the proxy set has no labels; the CE term is skipped",
                    beta)
    if proxy_y is not None and len(proxy_y) != len(proxy_x):
        raise ValueError(f"distill: {len(proxy_x)} proxy inputs but {len(proxy_y)} labels")
    dna = blocks is not None and dna_weight > 0
    if dna and len(_as_list(teachers)) != 1:
        raise ValueError("distill: DNA block regression needs a single teacher")
    teacher_logits = None if dna else predict_logits(_as_list(teachers), proxy_x, batch_size,
                                                     device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    per_epoch = -(-len(proxy_x) // batch_size)
    total_steps = min(max_steps, epochs * per_epoch) if max_steps else epochs * per_epoch
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total_steps, 1))
             if cosine else None)
    feats: dict[str, list[torch.Tensor]] = {"s": [], "t": []}
    hooks = []
    if dna:
        for key, mods in zip("st", blocks, strict=True):
            hooks += [m.register_forward_hook(lambda _m, _i, out, k=key: feats[k].append(out))
                      for m in mods]
    teacher = _as_list(teachers)[0]
    t_mode = teacher.training
    student.train()
    losses: list[float] = []
    step = 0
    try:
        for _ in range(epochs):
            total, seen = 0.0, 0
            for idx in batches(len(proxy_x), batch_size, generator):
                if step >= total_steps:
                    break
                x = proxy_x[idx].to(device)
                y = None if proxy_y is None else proxy_y[idx].to(device)
                feats["s"].clear()
                feats["t"].clear()
                if dna:
                    teacher.eval()
                    with torch.no_grad():
                        t_logits = teacher(x)
                else:
                    t_logits = teacher_logits[idx].to(device)
                loss = kd_loss(student(x), t_logits, y, temperature, beta)
                if dna:
                    loss = loss + dna_weight * block_regression_loss(feats["s"], feats["t"])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"distillation loss became {float(loss)}; "
                                             "lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                total, seen = total + loss.item() * len(idx), seen + len(idx)
            if seen:
                losses.append(total / seen)
    finally:
        for h in hooks:
            h.remove()
        teacher.train(t_mode)
    return {"loss": losses}


def block_regression_loss(student_feats: Sequence[torch.Tensor],
                          teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """DNA block loss: mean over blocks of the MSE between student and teacher block outputs.

    Teacher features are treated as constants (detached).

    Raises
    ------
    ValueError
        If the lists are empty or differ in length, or block ``i``'s shapes differ.
    """
    if not student_feats or len(student_feats) != len(teacher_feats):
        raise ValueError(f"block_regression_loss: need the same non-zero number of student and "
                         f"teacher blocks, got {len(student_feats)} and {len(teacher_feats)}")
    losses = []
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats, strict=True)):
        if s.shape != t.shape:
            raise ValueError(f"block_regression_loss: block {i}: student output shape "
                             f"{tuple(s.shape)} != teacher output shape {tuple(t.shape)}")
        losses.append(F.mse_loss(s, t.detach()))
    return torch.stack(losses).mean()
