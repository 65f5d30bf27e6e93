"""DAP gates: the relaxed Bernoulli gates of Differentiable Architecture Pruning (issue 32).

Colombo & Gao, "Differentiable Architecture Pruning for Transfer Learning" (ICML 2021
workshop, arXiv 2107.03375) cast pruning a trained model as a complexity-penalised subset
selection over its units, solved with a *two-temperature* relaxation. This module holds
the gates, the relaxation and the exact cost model; :mod:`fednas.compression.dap` trains
the gates and extracts the pruned network.

Only the abstract of the paper could be read while writing this; the equations below are
our reconstruction of a two-temperature Bernoulli relaxation, in our own notation, and
must be checked against Sec. 3 of the paper before results are attributed to it.

**Units.** A gated layer ``l`` has ``C_l`` output channels split into ``G_l`` contiguous
channel groups of ``group_size`` channels (the last may be smaller), sizes ``s_{l,i}``.
Unit ``(l, i)`` carries a logit ``θ_{l,i}`` and a keep variable ``a_{l,i} ~ Bernoulli(π_{l,i})``.

**Two temperatures.** (1) the *probability* temperature ``T`` sets how sharply the logit
decides, ``π = σ(θ / T)``: annealing ``T → 0`` turns the distribution into the point mass
on ``1[θ > 0]``, the discrete subset; (2) the *sampling* temperature ``τ`` relaxes the draw
(binary concrete, Maddison et al. 2017; Jang et al. 2017)::

    L = log u − log(1 − u),  u ~ U(0, 1)        z = σ((logit π + L) / τ) = σ((θ/T + L) / τ)

``z > 1/2`` exactly when ``u > 1 − π``, so ``P(z > 1/2) = π`` at every ``τ``; ``τ → 0``
gives hard Bernoulli(π) samples and ``τ → ∞`` gives ``z → 1/2``. The loss sees ``z``
(pathwise gradients); the complexity is an expectation under ``π`` (no sampling noise).

**Cost model.** With ``n_l = Σ_i s_{l,i} a_{l,i}`` kept channels, the params and the FLOPs
(:mod:`fednas.models.flops` counts conv/linear multiply-adds, not bias or BN) are exactly
``C(n) = c_0 + Σ_l c_l n_l + Σ_{l≠m} c_{lm} n_l n_m``: every weight tensor is sized by at
most two different gated layers. Layers are gated independently, so
``E[C] = C(E[n])`` with ``E[n_l] = Σ_i s_{l,i} π_{l,i}`` — exact, not an approximation.
``c_0`` is the measured full model minus the gated terms, so ``C`` at hard gates equals
``count_params`` / ``count_flops`` of the extracted network (tested).

Supported models: :class:`~fednas.models.baselines.HandCNN` (both convs and the hidden
linear), :class:`~fednas.models.conv4.Conv4` (the four conv blocks) and
:class:`~fednas.models.resnet.CifarResNet`, i.e. the width space's subnets (the inner
channels of every basic block; residual widths are shared by a stage and stay). The cell
space is not supported yet: removing an op from a node leaves a node that a cell genotype
cannot express (two ops per node) and :class:`~fednas.spaces.cellnet.DiscreteCell` cannot
build, and pruning both ops of a node would change the next cells' input channels; it
needs a variable-arity discrete cell in ``cellnet.py`` first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from fednas.errors import ConfigError
from fednas.models.flops import count_flops, count_params


def keep_probability(theta: torch.Tensor, t_prob: float) -> torch.Tensor:
    """``π = σ(θ / T)``: the keep probability at probability temperature ``T > 0``."""
    return torch.sigmoid(theta / t_prob)


def logistic_noise(n: int, generator: torch.Generator, eps: float = 1e-6) -> torch.Tensor:
    """``n`` draws of ``L = log u − log(1 − u)``, ``u ~ U(eps, 1 − eps)``, on the CPU."""
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(eps, 1 - eps)
    return (u.log() - (-u).log1p()).float()


def relaxed_gate(theta: torch.Tensor, noise: torch.Tensor, t_prob: float,
                 t_sample: float) -> torch.Tensor:
    """The relaxed gate ``z = σ((θ/T + L) / τ)`` (``T``: probability, ``τ``: sampling)."""
    return torch.sigmoid((theta / t_prob + noise) / t_sample)


@dataclass(frozen=True)
class Link:
    """A module whose tensors are sized by gated layers: ``src`` feeds its input channels,
    ``dst`` is its output (``None``: that side is not gated)."""

    module: str
    src: int | None
    dst: int | None


@dataclass(frozen=True)
class Layout:
    """Where a model is gated: per layer the module whose output is masked and its channels."""

    hooks: tuple[str, ...]
    channels: tuple[int, ...]
    links: tuple[Link, ...]


def layout_of(model: nn.Module) -> Layout:
    """The gated layers of a supported model (see the module docstring).

    Raises
    ------
    ConfigError
        If the model's class is not supported.
    """
    from fednas.models.baselines import HandCNN
    from fednas.models.conv4 import Conv4
    from fednas.models.resnet import CifarResNet

    if isinstance(model, HandCNN):
        names = ("features.0", "features.3", "head.1")
        chans = tuple(model.get_submodule(n).weight.shape[0] for n in names)
        links = (Link("features.0", None, 0), Link("features.3", 0, 1), Link("head.1", 1, 2),
                 Link("head.3", 2, None))
        return Layout(names, chans, links)
    if isinstance(model, Conv4):
        hooks = tuple(f"features.{4 * i + 1}" for i in range(4))
        links = [Link(f"features.{4 * i + k}", i - 1 if k == 0 and i else None, i)
                 for i in range(4) for k in (0, 1)]
        chans = tuple(model.get_submodule(n).num_features for n in hooks)
        return Layout(hooks, chans, (*links, Link("head", 3, None)))
    if isinstance(model, CifarResNet):
        blocks = [f"layer{s}.{i}" for s in (1, 2, 3)
                  for i in range(len(model.get_submodule(f"layer{s}")))]
        links = [Link(f"{b}.{m}", src, dst) for layer, b in enumerate(blocks)
                 for m, src, dst in (("conv1", None, layer), ("bn1", None, layer),
                                     ("conv2", layer, None))]
        chans = tuple(model.get_submodule(f"{b}.bn1").num_features for b in blocks)
        return Layout(tuple(f"{b}.bn1" for b in blocks), chans, tuple(links))
    raise ConfigError(f"compression.selection: 'dap' prunes HandCNN, Conv4 and CifarResNet "
                      f"(width-space subnets), not {type(model).__name__}")


def measure(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(params, FLOPs per sample)`` measured on the module (two samples: batch-stat BN)."""
    return count_params(model), count_flops(model, input_shape, batch=2)


def _conv_out(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict:
    """Output ``H·W`` of each named conv on a zero batch (eval mode, restored)."""
    sizes: dict[str, int] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: sizes.__setitem__(n, out[0, 0].numel())) for n in names]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


class DapGates(nn.Module):
    """One logit per channel group of every gated layer of ``model``, and its cost model.

    Parameters
    ----------
    model
        A trained supported model (see :func:`layout_of`); it is only read.
    input_shape
        ``(C, H, W)`` of one input, for the FLOPs.
    group_size
        Channels per gated unit (1: channel-wise gates).
    init
        Initial logit ``θ`` of every unit (3: ``π ≈ 0.95`` at ``T = 1``, the full model).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], *, group_size: int = 1,
                 init: float = 3.0) -> None:
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ConfigError(f"compression.dap.group-size: must be a positive int, got "
                              f"{group_size!r}")
        self.layout = layout_of(model)
        self.input_shape = tuple(input_shape)
        self.sizes = [torch.tensor([min(group_size, c - s) for s in range(0, c, group_size)])
                      for c in self.layout.channels]
        self.theta = nn.ParameterList(nn.Parameter(torch.full((len(s),), float(init)))
                                      for s in self.sizes)
        self.full = measure(model, self.input_shape)
        terms = self._terms(model)
        n_full = [float(c) for c in self.layout.channels] + [1.0]
        const = [f - sum(v[d] * n_full[a] * n_full[b] for (a, b), v in terms.items())
                 for d, f in enumerate(self.full)]
        terms[-1, -1] = [terms.get((-1, -1), [0.0, 0.0])[d] + const[d] for d in range(2)]
        self._pairs = torch.tensor(list(terms), dtype=torch.long)  # -1: the constant factor 1
        self._coef = torch.tensor(list(terms.values()), dtype=torch.float64)

    def _terms(self, model: nn.Module) -> dict[tuple[int, int], list[float]]:
        """``(a, b) -> [params, flops]`` coefficients of ``n_a · n_b`` (``-1``: constant)."""
        chans = self.layout.channels
        convs = [k.module for k in self.layout.links
                 if isinstance(model.get_submodule(k.module), nn.Conv2d)]
        area = _conv_out(model, convs, self.input_shape)
        terms: dict[tuple[int, int], list[float]] = {}

        def add(a: int | None, b: int | None, params: float, flops: float) -> None:
            key = tuple(sorted((-1 if a is None else a, -1 if b is None else b)))
            if key[0] == key[1] != -1:
                raise ValueError(f"dap: layer {key[0]} would size both sides of one tensor")
            old = terms.setdefault(key, [0.0, 0.0])
            old[0] += params
            old[1] += flops

        for link in self.layout.links:
            m = model.get_submodule(link.module)
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise ConfigError(f"dap: grouped conv {link.module} cannot be gated")
                k = m.kernel_size[0] * m.kernel_size[1]
                cin = 1 if link.src is not None else m.in_channels
                cout = 1 if link.dst is not None else m.out_channels
                add(link.src, link.dst, k * cin * cout, 2 * k * cin * cout * area[link.module])
                if m.bias is not None:
                    add(None, link.dst, cout, 0.0)
            elif isinstance(m, nn.Linear):
                cin = m.in_features // chans[link.src] if link.src is not None else m.in_features
                cout = 1 if link.dst is not None else m.out_features
                add(link.src, link.dst, cin * cout, 2 * cin * cout)
                if m.bias is not None:
                    add(None, link.dst, cout, 0.0)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                add(None, link.dst, 2.0, 0.0)
        return terms

    # ------------------------------------------------------------------ the distribution
    def probs(self, t_prob: float = 1.0) -> list[torch.Tensor]:
        """Keep probabilities ``π_l = σ(θ_l / T)`` per layer."""
        return [keep_probability(t, t_prob) for t in self.theta]

    def sample(self, t_prob: float, t_sample: float,
               generator: torch.Generator) -> list[torch.Tensor]:
        """Relaxed gates ``z_l`` per layer; the noise is drawn on the CPU from ``generator``."""
        noise = logistic_noise(sum(len(s) for s in self.sizes), generator)
        out, start = [], 0
        for t in self.theta:
            n = noise[start: start + len(t)].to(device=t.device, dtype=t.dtype)
            out.append(relaxed_gate(t, n, t_prob, t_sample))
            start += len(t)
        return out

    def counts(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """``n_l = Σ_i s_{l,i} v_{l,i}`` per layer (float64): kept channels under ``values``."""
        return torch.stack([(s.to(v.device, torch.float64) * v.to(torch.float64)).sum()
                            for s, v in zip(self.sizes, values, strict=True)])

    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        """``[params, flops]`` of the polynomial cost model at channel counts ``counts``."""
        n = torch.cat([counts.to(torch.float64), counts.new_ones(1, dtype=torch.float64)])
        pairs, coef = self._pairs.to(n.device), self._coef.to(n.device)
        return (n[pairs[:, 0]] * n[pairs[:, 1]]) @ coef

    def expected_cost(self, t_prob: float = 1.0) -> torch.Tensor:
        """``E[C] = C(E[n])`` under ``π = σ(θ / T)`` (exact: layers are independent)."""
        return self.cost(self.counts(self.probs(t_prob)))

    def hard_cost(self, keep: Sequence[torch.Tensor]) -> tuple[int, int]:
        """``(params, flops)`` of the network keeping the units of ``keep`` (bool per unit)."""
        c = self.cost(self.counts([k.float() for k in keep]))
        return int(round(float(c[0]))), int(round(float(c[1])))

    def smallest(self) -> tuple[int, int]:
        """The cheapest reachable network: every layer keeps only its smallest unit."""
        return self.hard_cost([torch.arange(len(s)) == int(s.argmin()) for s in self.sizes])

    def mode(self) -> list[torch.Tensor]:
        """The most likely subset ``1[θ > 0]`` (``π > 1/2`` at any ``T``), with at least
        the highest-logit unit of every layer kept (a layer cannot vanish)."""
        keep = []
        for t in self.theta:
            k = t.detach().cpu() > 0
            k[int(t.detach().cpu().argmax())] = True
            keep.append(k)
        return keep

    def channel_masks(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-unit ``values`` expanded to one value per channel of every gated layer."""
        return [v.repeat_interleave(s.to(v.device)) for s, v in
                zip(self.sizes, values, strict=True)]


@contextmanager
def masked(model: nn.Module, gates: DapGates, values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside, ``model``'s gated layer outputs are multiplied by the per-unit ``values``
    (relaxed ``z`` to train, 0/1 to compare with the extracted network)."""
    hooks = []
    for name, mask in zip(gates.layout.hooks, gates.channel_masks(values), strict=True):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, mask=mask) -> torch.Tensor:
            return out * mask.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
