"""The interface every weight-sharing supernet implements, and genotype files.

A search space is an ``nn.Module`` supernet whose forward pass mixes candidate choices
with softmax(α). Two parameter groups are kept apart: :meth:`SearchSpace.weights` (trained on
the train split) and :meth:`SearchSpace.arch_parameters` (α, trained on the val split).
A *genotype* is a JSON-serialisable ``dict`` describing one discrete architecture; it always
carries ``"space": <registered name>``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fednas.errors import CheckpointError
from fednas.models.flops import count_flops, count_params

Genotype = dict[str, Any]

class SearchSpace(nn.Module, ABC):
    """Base class of weight-sharing supernets.

    Subclasses set ``self.input_shape`` and ``self.num_classes`` and implement the abstract
    methods. ``weights()`` defaults to every parameter that is not in ``arch_parameters()``.
    """

    space_name: str = ""
    input_shape: tuple[int, int, int]
    num_classes: int

    @abstractmethod
    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters α (one tensor per edge or layer), and any others the
        space has (the cell space's edge-normalisation β): what the α optimiser trains, the
        server aggregates and shards mask (one mask per tensor)."""

    def alpha_parameters(self) -> list[nn.Parameter]:
        """The arch parameters that score candidates (``rows × candidates``): what plots,
        α entropy, budgets and DARTS-PT read. By default all of :meth:`arch_parameters`."""
        return self.arch_parameters()

    def alpha_weights(self) -> list[torch.Tensor]:
        """What derivation ranks candidates by, one tensor per :meth:`alpha_parameters` tensor:
        softmax(α) by default (the cell space multiplies in edge normalisation's β)."""
        return [a.softmax(-1) for a in self.alpha_parameters()]

    @abstractmethod
    def genotype(self) -> Genotype:
        """The discrete architecture preferred by the current α."""

    @abstractmethod
    def subnet(self, genotype: Genotype) -> nn.Module:
        """A standalone discrete model for ``genotype`` with weights copied from the supernet."""

    @abstractmethod
    def random_genotype(self, generator: torch.Generator) -> Genotype:
        """A uniformly random discrete architecture of this space (for baselines)."""

    shard: list[torch.Tensor] | None = None

    def set_shard(self, masks: list[torch.Tensor] | None) -> None:
        """Restrict the forward pass to a shard (one bool mask per α tensor); None = all."""
        if masks is not None:
            shapes = [tuple(a.shape) for a in self.arch_parameters()]
            if [tuple(m.shape) for m in masks] != shapes or any(
                    not bool(m.any(-1).all()) for m in masks):
                raise ValueError(f"shard masks must have shapes {shapes} with at least one "
                                 "candidate per row")
            masks = [m.to(dtype=torch.bool, device=a.device)
                     for m, a in zip(masks, self.arch_parameters(), strict=True)]
        self.shard = masks

    def shard_softmax(self) -> list[torch.Tensor]:
        """softmax(α) per α tensor, renormalised over the shard's candidates when set."""
        alphas = self.arch_parameters()
        if self.shard is None:
            return [a.softmax(-1) for a in alphas]
        return [a.masked_fill(~m, float("-inf")).softmax(-1)
                for a, m in zip(alphas, self.shard, strict=True)]

    def shard_slices(self, masks: list[torch.Tensor]) -> dict[str, tuple[slice, ...] | None]:
        """State-dict regions a client trains under ``masks``: key -> slice (None = whole).

        Keys left out are not part of the shard and neither travel nor get aggregated.
        The default is the whole state (no weight saving); spaces override it.
        """
        return dict.fromkeys(self.state_dict())

    def candidate_names(self) -> list[str]:
        """Names of the candidates along the last axis of every α tensor (plots, reports);
        by default their indices. The cell space names its ops, the width space its widths."""
        return [str(i) for i in range(self.alpha_parameters()[0].shape[-1])]

    def weights(self) -> list[nn.Parameter]:
        """All trainable parameters that are not architecture parameters."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def check_genotype(self, genotype: Genotype) -> None:
        """Raise :class:`CheckpointError` if ``genotype`` does not belong to this space."""
        if genotype.get("space") != self.space_name:
            raise CheckpointError(
                f"genotype is for space {genotype.get('space')!r}, not {self.space_name!r}"
            )

    def cost(self, genotype: Genotype) -> tuple[int, int]:
        """Measured ``(params, flops)`` of the discrete model of ``genotype`` (one sample)."""
        model = self.subnet(genotype)
        return count_params(model), count_flops(model, self.input_shape)


def save_genotype(genotype: Genotype, path: str | Path) -> None:
    """Write ``genotype`` as pretty JSON."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")  # replaced in one step: never half-written
    tmp.write_text(json.dumps(genotype, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_genotype(path: str | Path) -> Genotype:
    """Read a genotype JSON file written by :func:`save_genotype`."""
    try:
        genotype = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read genotype {path}: {exc}") from exc
    if not isinstance(genotype, dict) or "space" not in genotype:
        raise CheckpointError(f"{path} is not a fednas genotype (no 'space' key)")
    return genotype
