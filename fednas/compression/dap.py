"""DAP: train the pruning gates with the weights frozen, select a subset, extract it.

The gates, the two-temperature relaxation and the exact cost model are in
:mod:`fednas.compression.dap_gates` (read its docstring first; the paper's body could not
be read while writing this, so the maths is our reconstruction from its abstract).

**Objective.** At step ``k`` with temperatures ``(T_k, τ_k)`` and a batch ``(x, y)``::

    J(θ) = CE(f(x; w, z), y) + λ · Σ_d max(0, E_π[C_d] / B_d − 1)      (penalty "hinge")
    J(θ) = CE(f(x; w, z), y) + λ · Σ_d E_π[C_d] / C_d(full)            (penalty "linear")

``z ~ σ((θ/T_k + L) / τ_k)`` masks the output channels of the gated layers, ``w`` (every
model tensor, BN statistics included) is frozen, ``d`` runs over the capped dimensions
(params, FLOPs) with absolute limits ``B_d`` from a :class:`~fednas.compression.budget.Budget`
(fractions of the full model as in ``[compression]``). Only ``θ`` is trained (Adam).

**Extraction.** The subset is the mode ``1[θ > 0]`` (the limit of ``T → 0``), at least one
unit per layer; while the exact cost model says it exceeds the budget, the kept unit with
the lowest logit is dropped. :func:`extract` copies the kept channels' tensors into a
deep copy of the model (a smaller network of the same class, no masks) and measures it.

Choices made here, where the paper (as far as we could read it) does not decide:
the hinge on the *relative* overshoot (scale-free ``λ``, same excess as
:mod:`fednas.compression.budget`); geometric annealing of both temperatures from
``Schedule``'s start to end values; the expectation (not a sample) of the cost; the model in
eval mode while gates train (frozen BN statistics; Conv-4 keeps batch statistics); gates
on the activation right before the nonlinearity (after BN when there is one, else after the
layer, bias included) so that a zero gate is exactly a removed channel; channel groups
contiguous in index order; a layer never loses its last unit; repair by lowest logit.
Defaults (λ = 5, Adam lr 0.05, ``T`` and ``τ`` from 1 to 0.1) come from a toy HandCNN: with
``T`` fixed at 1 the mode's cost strayed 30 % from ``E[C]``; annealed, it stays within 10 %.
The run config's ``compression.dap-penalty-weight`` and ``[meta.dap] penalty-weight`` default
to λ = 20 instead: on the width-space ResNet and Conv-4, λ = 5 left the mode 33 % over target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fednas.compression.budget import Budget, Limits
from fednas.compression.dap_gates import DapGates, masked, measure
from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, SearchSpace
from fednas.training.train import Split, cycle_batches

PENALTIES = ("hinge", "linear")


@dataclass(frozen=True)
class Schedule:
    """Geometric annealing ``t_k = start · (end / start)^(k / (steps − 1))`` of both
    temperatures: ``prob`` is ``T`` (in ``π = σ(θ/T)``), ``sample`` is ``τ``."""

    prob: tuple[float, float] = (1.0, 0.1)
    sample: tuple[float, float] = (1.0, 0.1)

    def at(self, step: int, steps: int) -> tuple[float, float]:
        """``(T, τ)`` at ``step`` of ``steps``."""
        frac = step / max(steps - 1, 1)
        return tuple(a * (b / a) ** frac for a, b in (self.prob, self.sample))  # type: ignore

    def check(self) -> None:
        """Raise :class:`ConfigError` unless every temperature is a positive finite number."""
        for key, pair in (("prob", self.prob), ("sample", self.sample)):
            if len(pair) != 2 or not all(isinstance(t, int | float) and 0 < t < float("inf")
                                         for t in pair):
                raise ConfigError(f"compression.dap.{key}-temperature: need two positive "
                                  f"numbers (start, end), got {pair!r}")


def prunable(source: nn.Module, genotype: Genotype | None = None) -> nn.Module:
    """The network DAP gates: a width-space supernet becomes its subnet (``genotype``, by
    default full width); any other module is returned as is (checked by the gates)."""
    if isinstance(source, SearchSpace):
        if source.space_name != "width":
            raise ConfigError(f"compression.selection: 'dap' supports the width space, not "
                              f"{source.space_name!r} (see fednas.compression.dap_gates)")
        return source.subnet(genotype or source.max_genotype())
    return source


def resolve_limits(gates: DapGates, budget: Budget) -> Limits:
    """Absolute ``(max_params, max_flops)`` of ``budget`` (fractions of the full model).

    Raises
    ------
    ConfigError
        If the budget is invalid, sets no limit, or asks for less than the smallest
        reachable network (named in the message).
    """
    limits = budget.resolve(*gates.full)
    if limits == (None, None):
        raise ConfigError("compression: 'dap' needs compression.params and/or compression.flops")
    small = gates.smallest()
    for key, lim, low in zip(("params", "flops"), limits, small, strict=True):
        if lim is not None and lim < low:
            raise ConfigError(f"compression.{key}: {lim} is below the smallest network DAP can "
                              f"reach from this model ({small[0]} params, {small[1]} FLOPs: "
                              f"one unit per gated layer)")
    return limits


def penalty(expected: torch.Tensor, limits: Limits, full: tuple[int, int],
            mode: str = "hinge") -> torch.Tensor:
    """The complexity term (without ``λ``) for expected ``[params, flops]``, see module doc."""
    if mode not in PENALTIES:
        raise ConfigError(f"compression.dap.penalty: {mode!r} is not one of {list(PENALTIES)}")
    out = expected.new_zeros(())
    for d, lim in enumerate(limits):
        if lim is not None:
            out = out + (F.relu(expected[d] / lim - 1) if mode == "hinge"
                         else expected[d] / max(full[d], 1))
    return out


def train_gates(model: nn.Module, gates: DapGates, data: Split, *, budget: Budget,
                device: torch.device, generator: torch.Generator, steps: int = 200,
                batch_size: int = 64, lr: float = 0.05, lam: float = 5.0,
                schedule: Schedule = Schedule(), mode: str = "hinge", offset: int = 0,
                total: int = 0) -> dict[str, Any]:
    """Train the gate logits ``θ`` on ``data`` with every tensor of ``model`` frozen.

    Parameters
    ----------
    model
        The trained network the gates were built for; moved to ``device``, left unchanged
        (weights, ``requires_grad`` and train/eval mode are restored).
    gates
        Its :class:`DapGates`, updated in place (moved to ``device``).
    data
        ``(x, y)`` inputs and class labels (the large source task of the transfer setup).
    budget
        Target params and/or FLOPs, absolute or as fractions of the full model.
    device, generator
        Where to compute; the CPU generator drawing batches and gate noise.
    steps, batch_size, lr
        Adam steps on ``θ``, batch size, learning rate.
    lam
        ``λ >= 0``, weight of the complexity term.
    schedule, mode
        Temperature annealing; ``"hinge"`` or ``"linear"`` penalty.
    offset, total
        These steps are ``offset .. offset + steps - 1`` of a schedule of ``total`` steps
        (federated gate rounds); ``total = 0``: a schedule of its own ``steps``.

    Returns
    -------
    dict
        ``task_loss``, ``penalty`` (last step), ``expected_params`` / ``expected_flops``
        (at the final ``T``), ``mode_params`` / ``mode_flops`` and ``kept_units`` of the
        mode ``1[θ > 0]``, ``limits``, final ``t_prob`` / ``t_sample`` and ``history``
        (expected params at every step).

    Raises
    ------
    ConfigError
        On a bad argument, or a budget below the smallest reachable network.
    """
    if steps < 1 or batch_size < 1 or lr <= 0 or lam < 0:
        raise ConfigError(f"compression.dap: need steps >= 1, batch-size >= 1, lr > 0, "
                          f"lambda >= 0; got {steps}, {batch_size}, {lr}, {lam}")
    schedule.check()
    penalty(torch.zeros(2), (None, None), (1, 1), mode)  # validates the mode
    limits = resolve_limits(gates, budget)
    x, y = data
    model.to(device)
    gates.to(device)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in frozen:
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.Adam(gates.parameters(), lr=lr)
    history: list[float] = []
    task = pen = torch.zeros(())
    t_prob = t_sample = 0.0
    try:
        for step, idx in zip(range(steps), cycle_batches(len(y), batch_size, generator),
                             strict=False):
            t_prob, t_sample = schedule.at(offset + step, total or steps)
            z = gates.sample(t_prob, t_sample, generator)
            with masked(model, gates, z):
                task = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            expected = gates.expected_cost(t_prob)
            pen = penalty(expected, limits, gates.full, mode)
            opt.zero_grad(set_to_none=True)
            (task + lam * pen.to(task.dtype)).backward()
            opt.step()
            history.append(float(expected[0].detach()))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    with torch.no_grad():
        expected = gates.expected_cost(t_prob)
    keep = gates.mode()
    cost = gates.hard_cost(keep)
    return {"task_loss": float(task.detach()), "penalty": float(pen.detach()),
            "expected_params": float(expected[0]), "expected_flops": float(expected[1]),
            "mode_params": cost[0], "mode_flops": cost[1],
            "kept_units": [int(k.sum()) for k in keep], "limits": limits,
            "t_prob": t_prob, "t_sample": t_sample, "history": history}


def _over(cost: tuple[int, int], limits: Limits) -> bool:
    return any(lim is not None and c > lim for c, lim in zip(cost, limits, strict=True))


def select(gates: DapGates, budget: Budget | None = None) -> list[torch.Tensor]:
    """The kept units (one bool tensor per layer): the mode ``1[θ > 0]``, repaired under
    ``budget`` by dropping the lowest-logit kept unit until the exact cost fits.

    Raises
    ------
    ConfigError
        If the budget is below the smallest reachable network.
    """
    keep = gates.mode()
    if budget is None:
        return keep
    limits = resolve_limits(gates, budget)
    theta = [t.detach().cpu() for t in gates.theta]
    while _over(gates.hard_cost(keep), limits):
        options = [(float(t[i]), layer, i) for layer, (t, k) in enumerate(zip(theta, keep,
                                                                              strict=True))
                   if int(k.sum()) > 1 for i in k.nonzero().flatten().tolist()]
        _, layer, i = min(options)  # non-empty: the smallest network fits (checked above)
        keep[layer][i] = False
    return keep


def _slice(m: nn.Module, src: torch.Tensor | None, dst: torch.Tensor | None,
           src_channels: int | None) -> None:
    """Keep input channels ``src`` and output channels ``dst`` of one module, in place."""
    def param(t: nn.Parameter, rows: torch.Tensor | None, cols: torch.Tensor | None):
        data = t.detach()
        data = data if rows is None else data[rows]
        data = data if cols is None else data[:, cols]
        return nn.Parameter(data.clone(), requires_grad=t.requires_grad)

    if isinstance(m, nn.Linear) and src is not None:  # flattened (C, H, W): C-major columns
        mult = m.in_features // src_channels
        src = (src[:, None] * mult + torch.arange(mult, device=src.device)).reshape(-1)
    if isinstance(m, nn.Conv2d | nn.Linear):
        m.weight = param(m.weight, dst, src)
        if m.bias is not None and dst is not None:
            m.bias = param(m.bias, dst, None)
        if isinstance(m, nn.Conv2d):
            m.out_channels, m.in_channels = m.weight.shape[:2]
        else:
            m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.BatchNorm2d) and dst is not None:
        for name in ("weight", "bias"):
            if getattr(m, name) is not None:
                setattr(m, name, param(getattr(m, name), dst, None))
        for name in ("running_mean", "running_var"):
            if getattr(m, name) is not None:
                setattr(m, name, getattr(m, name)[dst].clone())
        m.num_features = len(dst)


def extract(model: nn.Module, gates: DapGates, keep: list[torch.Tensor] | None = None,
            budget: Budget | None = None) -> nn.Module:
    """A standalone copy of ``model`` holding only the kept channels' weights.

    Parameters
    ----------
    model
        The network the gates were built for (not modified).
    gates
        Its trained :class:`DapGates`.
    keep
        One bool tensor per gated layer (units to keep); default :func:`select` under
        ``budget``.
    budget
        Checked on the built network, measured with :mod:`fednas.models.flops`.

    Raises
    ------
    ConfigError
        If ``keep`` has the wrong shapes or empties a layer, or the budget is below the
        smallest reachable network.
    """
    given = keep is not None
    keep = [k.detach().cpu().bool() for k in keep] if given else select(gates, budget)
    if [k.shape for k in keep] != [s.shape for s in gates.sizes] or not all(
            k.any() for k in keep):
        raise ConfigError(f"dap: keep needs one bool per unit {[len(s) for s in gates.sizes]} "
                          "and at least one unit per layer")
    if given and budget is not None and _over(gates.hard_cost(keep),
                                              resolve_limits(gates, budget)):
        raise ConfigError(f"dap: the given units cost {gates.hard_cost(keep)}, over the budget")
    channels = [m.nonzero().flatten() for m in gates.channel_masks([k.float() for k in keep])]
    net = copy.deepcopy(model)
    device = next(net.parameters()).device
    with torch.no_grad():
        for link in gates.layout.links:
            src = None if link.src is None else channels[link.src].to(device)
            dst = None if link.dst is None else channels[link.dst].to(device)
            size = None if link.src is None else gates.layout.channels[link.src]
            _slice(net.get_submodule(link.module), src, dst, size)
    if budget is not None:
        measured, limits = measure(net, gates.input_shape), budget.resolve(*gates.full)
        if _over(measured, limits):
            raise RuntimeError(f"dap: extracted network {measured} exceeds {limits}: the cost "
                               "model does not match this model (a bug)")
    return net
