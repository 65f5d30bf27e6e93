"""What a supernet's α says: softmax snapshots, candidate names, entropy; the run's random
architecture of a space."""

from __future__ import annotations

import numpy as np
import torch

from fednas.spaces.base import Genotype, SearchSpace


def random_genotype(space: SearchSpace, seed: int) -> Genotype:
    """The run's random architecture: a function of the seed only."""
    return space.random_genotype(torch.Generator().manual_seed(seed + 3))


def alpha_snapshot(space: SearchSpace) -> dict[str, list[list[float]]]:
    """softmax(α) per group as nested lists: cell → normal/reduce, other spaces → layers
    (one row per α tensor)."""
    if space.space_name == "cell":
        groups = {"normal": space.alpha_normal, "reduce": space.alpha_reduce}
    else:
        groups = {"layers": torch.stack(list(space.arch_parameters()))}
    return {k: v.detach().softmax(-1).cpu().tolist() for k, v in groups.items()}


def alpha_columns(space: SearchSpace) -> list[str]:
    """Names of the α candidates (op names, width fractions, or the space's own)."""
    return space.candidate_names()


def alpha_entropy(space: SearchSpace) -> float:
    """Mean entropy (nats) of softmax(α) rows: falls as the search commits to choices."""
    ents = []
    for a in space.arch_parameters():
        p = a.detach().softmax(-1)
        ents.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()))
    return float(np.mean(ents))
