"""Width search space: a slimmable CIFAR ResNet for channel pruning (CASD / SWP / DCP style).

A CIFAR-style ResNet (He et al. 2016, depth 6n+2, basic blocks, option-B shortcuts) whose
prunable layers are the inner convolutions of the basic blocks. Each prunable layer keeps its
full-width weights; a width choice ``f`` uses the first ``k = max(1, round(f * C))`` filters
(slimmable weight sharing), so residual shapes never change. One α vector per layer mixes the
choices in the search forward pass by FBNetV2-style channel masking::

    m = Σ_j softmax(α)_j · 1[c < k_j]        (a C-vector multiplying the block's inner activation)

which costs a single full-width pass. :meth:`SlimmableResNet.set_active_widths` switches to
hard widths (the sandwich rule: largest / smallest / random widths), and
:meth:`SlimmableResNet.subnet` builds a standalone :class:`CifarResNet` with sliced weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fednas.errors import CheckpointError, ConfigError
from fednas.models.resnet import BasicBlock, CifarResNet, build_body, resnet_blocks
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.registry import register_space

__all__ = ["BasicBlock", "CifarResNet", "SlimmableResNet"]

# Depths that denote bottleneck ResNets (He et al. 2016b); 164 is also 6n+2 but would build a
# 2.6M-param basic-block net instead of the 1.7M-param ResNet-164 a user expects.
_BOTTLENECK_DEPTHS = frozenset({164, 1001})


@register_space("width")
class SlimmableResNet(SearchSpace):
    """Slimmable ResNet supernet over per-layer width fractions (the ``"width"`` space).

    Parameters
    ----------
    input_shape
        ``(C, H, W)`` of one input image; any size works (global average pooling).
    num_classes
        Number of output logits.
    depth
        ``6n + 2`` (20, 32, 44, 56, 110, ...): three stages of ``n`` basic blocks.
    base_channels
        Channels of the first stage (16 for the standard CIFAR ResNets).
    width_choices
        Fractions of each prunable layer's channels, in (0, 1]; must include 1.0.
    stem_stride
        1, or 2 for cheap search on 28×28 inputs.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 20,
        base_channels: int = 16,
        width_choices: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if not _is_int(depth) or depth < 8 or (depth - 2) % 6 or depth in _BOTTLENECK_DEPTHS:
            raise ConfigError(
                f"space.width.depth: must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got "
                f"{depth!r} (164 and 1001 name bottleneck ResNets, which are not supported)"
            )
        if not _is_int(base_channels) or base_channels < 1:
            raise ConfigError(
                f"space.width.base-channels: must be a positive int, got {base_channels!r}"
            )
        if not _is_int(stem_stride) or stem_stride not in (1, 2):
            raise ConfigError(f"space.width.stem-stride: must be 1 or 2, got {stem_stride!r}")
        self.width_choices = _check_choices(width_choices)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.depth, self.base_channels, self.stem_stride = depth, base_channels, stem_stride
        n = (depth - 2) // 6
        full = [c for c in (base_channels, 2 * base_channels, 4 * base_channels) for _ in range(n)]
        build_body(self, self.input_shape[0], self.num_classes, base_channels, full, stem_stride)
        self.channel_choices: list[list[int]] = [
            [max(1, round(f * c)) for f in self.width_choices] for c in full
        ]
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(self.width_choices))) for _ in full
        )
        self._active: list[int] | None = None

    # ----------------------------------------------------------------- structure
    @property
    def num_prunable(self) -> int:
        """Number of prunable layers (one per basic block)."""
        return len(self.alphas)

    def prunable_layers(self) -> list[str]:
        """Qualified names of the prunable convolutions, in α order."""
        n = self.num_prunable // 3
        return [f"layer{i // n + 1}.{i % n}.conv1" for i in range(self.num_prunable)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """One α vector per prunable layer over :attr:`width_choices`."""
        return list(self.alphas)

    # ----------------------------------------------------------------- forward
    def set_active_widths(self, widths: Sequence[float] | None) -> None:
        """Fix the width fraction of every prunable layer (hard), or ``None`` for the α mixture.

        Raises
        ------
        ValueError
            If ``widths`` has the wrong length or a value that is not a width choice.
        """
        if widths is None:
            self._active = None
            return
        idx = self._choice_indices(widths, ValueError, "set_active_widths")
        self._active = [ks[j] for ks, j in zip(self.channel_choices, idx, strict=True)]

    @contextmanager
    def active_widths(self, widths: Sequence[float] | None) -> Iterator[None]:
        """Context manager: :meth:`set_active_widths` inside, the previous widths restored after."""
        previous = self._active
        self.set_active_widths(widths)
        try:
            yield
        finally:
            self._active = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` under the active widths or the α channel mixture."""
        x = self.stem(x)
        probs = self.shard_softmax() if self._active is None else None
        for i, block in enumerate(resnet_blocks(self)):
            if probs is None:
                x = block(x, width=self._active[i])
            else:
                x = block(x, mask=self._mixture_mask(i, probs[i]))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def _mixture_mask(self, i: int, probs: torch.Tensor) -> torch.Tensor:
        alpha = self.alphas[i]
        c = self.channel_choices[i][-1]
        ks = torch.tensor(self.channel_choices[i], device=alpha.device)
        masks = (torch.arange(c, device=alpha.device) < ks[:, None]).to(alpha.dtype)
        return probs @ masks

    def shard_slices(self, masks: list[torch.Tensor]) -> dict[str, tuple[slice, ...] | None]:
        """Whole shared tensors; each block's inner channels up to the shard's widest choice."""
        slices: dict[str, tuple[slice, ...] | None] = dict.fromkeys(self.state_dict())
        for i, name in enumerate(self.prunable_layers()):
            prefix = name.rsplit(".", 1)[0]
            active = [k for k, on in zip(self.channel_choices[i], masks[i].tolist(),
                                         strict=True) if on]
            rows = (slice(0, max(active)),)
            slices[f"{prefix}.conv1.weight"] = rows
            for part in ("weight", "bias", "running_mean", "running_var"):
                slices[f"{prefix}.bn1.{part}"] = rows
            slices[f"{prefix}.conv2.weight"] = (slice(None), slice(0, max(active)))
        return slices

    # ----------------------------------------------------------------- genotypes
    def _genotype(self, widths: list[float]) -> Genotype:
        return {
            "space": self.space_name,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "widths": widths,
        }

    def candidate_names(self) -> list[str]:
        return [str(c) for c in self.width_choices]

    def genotype(self) -> Genotype:
        """The argmax-α width fraction of every prunable layer."""
        return self._genotype([self.width_choices[int(a.argmax())] for a in self.alphas])

    def max_genotype(self) -> Genotype:
        """Every prunable layer at full width."""
        return self._genotype([self.width_choices[-1]] * self.num_prunable)

    def min_genotype(self) -> Genotype:
        """Every prunable layer at the smallest width choice."""
        return self._genotype([self.width_choices[0]] * self.num_prunable)

    def random_genotype(self, generator: torch.Generator) -> Genotype:
        """A uniformly random width choice per layer (reproducible through ``generator``)."""
        idx = torch.randint(len(self.width_choices), (self.num_prunable,), generator=generator)
        return self._genotype([self.width_choices[int(j)] for j in idx])

    def subnet(self, genotype: Genotype) -> CifarResNet:
        """A standalone :class:`CifarResNet` with the genotype's widths and sliced weights.

        Every tensor is copied (first-``k`` slicing of the prunable channels), so the subnet's
        output equals this supernet's under ``set_active_widths(genotype["widths"])``.

        Raises
        ------
        CheckpointError
            If the genotype is for another space, depth or base width, or its widths do not
            match this space's prunable layers and width choices.
        """
        self.check_genotype(genotype)
        for key, mine in (("depth", self.depth), ("base_channels", self.base_channels)):
            if genotype.get(key) != mine:
                raise CheckpointError(
                    f"genotype {key} is {genotype.get(key)!r}, this width space has {mine}"
                )
        idx = self._choice_indices(genotype.get("widths"), CheckpointError, "genotype widths")
        mids = [ks[j] for ks, j in zip(self.channel_choices, idx, strict=True)]
        model = CifarResNet(
            self.input_shape[0], self.num_classes, self.base_channels, mids, self.stem_stride
        )
        source = self.state_dict()
        with torch.no_grad():
            state = {
                name: source[name][tuple(slice(0, s) for s in t.shape)].clone()
                for name, t in model.state_dict().items()
            }
        model.load_state_dict(state)
        param = next(self.parameters())
        return model.to(device=param.device, dtype=param.dtype).train(self.training)

    def _choice_indices(
        self, widths: Sequence[float], error: type[Exception], where: str
    ) -> list[int]:
        """Indices into :attr:`width_choices` of ``widths``; raise ``error`` if they don't fit."""
        if isinstance(widths, str | bytes) or not isinstance(widths, Sequence):
            raise error(f"{where}: must be a list of width fractions, got {widths!r}")
        if len(widths) != self.num_prunable:
            raise error(
                f"{where}: expected {self.num_prunable} widths (one per prunable layer), "
                f"got {len(widths)}"
            )
        idx = []
        for i, w in enumerate(widths):
            j = next((j for j, f in enumerate(self.width_choices) if _same(w, f)), None)
            if j is None:
                raise error(
                    f"{where}: width {w!r} of layer {i} is not one of {list(self.width_choices)}"
                )
            idx.append(j)
        return idx


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(w: object, f: float) -> bool:
    return isinstance(w, int | float) and not isinstance(w, bool) and math.isclose(w, f)


def _check_choices(choices: Sequence[float]) -> tuple[float, ...]:
    """Validate and sort width fractions: non-empty, distinct, in (0, 1], including 1.0."""
    key = "space.width.width-choices"
    try:
        values = sorted(float(f) for f in choices)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: must be a list of numbers, got {choices!r}") from exc
    if not values or any(not 0.0 < f <= 1.0 for f in values):
        raise ConfigError(f"{key}: every fraction must be in (0, 1], got {choices!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: duplicate fractions in {choices!r}")
    if values[-1] != 1.0:
        raise ConfigError(f"{key}: must include 1.0 (the full width), got {choices!r}")
    return tuple(values)
