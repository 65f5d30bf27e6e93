"""What a supernet's α says: softmax snapshots, candidate names, entropy; the run's random
architecture of a space."""

from __future__ import annotations

import numpy as np
import torch

from fednas.spaces.base import Genotype, SearchSpace


def random_genotype(space: SearchSpace, seed: int, *, searched: Genotype | None = None,
                    target_params: int = 0, tolerance: float = 0.0, draw: int = 0,
                    max_tries: int = 5000) -> Genotype:
    """The run's random architecture: a function of the seed (and the options) only.

    The ``draw``-th architecture of the seed's uniform sequence; with ``tolerance`` > 0,
    the ``draw``-th of those whose subnet's parameters are within ± ``tolerance`` of the
    ``searched`` subnet's (both measured on the built subnets; or of ``target_params``).
    ``tolerance = 0, draw = 0`` is the seed's first draw.

    Raises
    ------
    ConfigError
        When ``max_tries`` draws hold fewer than ``draw + 1`` size-matched architectures.
    """
    from fednas.errors import ConfigError
    from fednas.models.flops import count_params

    if tolerance > 0 and searched is not None:
        target_params = count_params(space.subnet(searched))
    generator = torch.Generator().manual_seed(seed + 3)
    found, sizes = 0, []
    for _ in range(max_tries if tolerance > 0 else draw + 1):
        genotype = space.random_genotype(generator)
        if tolerance > 0:
            params = count_params(space.subnet(genotype))
            sizes.append(params)
            if abs(params - target_params) > tolerance * target_params:
                continue
        if found == draw:
            return genotype
        found += 1
    raise ConfigError(f"random.params-tolerance: {found} of {max_tries} random architectures "
                      f"have {target_params} ± {tolerance:.0%} params (drawn: "
                      f"{min(sizes)}..{max(sizes)}), random.draw = {draw} needs {draw + 1}; "
                      "widen the tolerance or lower the draw")


def alpha_snapshot(space: SearchSpace) -> dict[str, list[list[float]]]:
    """softmax(α) per group as nested lists: cell → normal/reduce, other spaces → layers
    (one row per α tensor)."""
    if space.space_name == "cell":
        groups = {"normal": space.alpha_normal, "reduce": space.alpha_reduce}
    else:
        groups = {"layers": torch.stack(list(space.alpha_parameters()))}
    return {k: v.detach().softmax(-1).cpu().tolist() for k, v in groups.items()}


def alpha_columns(space: SearchSpace) -> list[str]:
    """Names of the α candidates (op names, width fractions, or the space's own)."""
    return space.candidate_names()


def alpha_entropy(space: SearchSpace) -> float:
    """Mean entropy (nats) of softmax(α) rows: falls as the search commits to choices
    (α only: the cell space's edge-normalisation β is left out)."""
    ents = []
    for a in space.alpha_parameters():
        p = a.detach().softmax(-1)
        ents.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()))
    return float(np.mean(ents))
