"""Size-matched random architectures (``[random]``): seeded, within the tolerance, and the
seed's first draw when off."""

from __future__ import annotations

import pytest
import torch

from fednas.errors import ConfigError
from fednas.models.flops import count_params
from fednas.spaces.cell import CellSupernet
from fednas.spaces.stats import random_genotype

OPS = ("skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_3x3")


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return CellSupernet(input_shape=(1, 8, 8), num_classes=10, channels=4, layers=2,
                     nodes=2, stem_stride=1, ops=OPS)


def test_off_is_the_seeds_first_uniform_draw(space):
    first = space.random_genotype(torch.Generator().manual_seed(5 + 3))
    assert random_genotype(space, 5) == first
    assert random_genotype(space, 5, draw=1) != first


def test_matched_draws_are_within_the_tolerance_distinct_and_seeded(space):
    searched = space.random_genotype(torch.Generator().manual_seed(0))
    target = count_params(space.subnet(searched))
    draws = [random_genotype(space, 1, searched=searched, tolerance=0.15, draw=d)
             for d in range(4)]
    for g in draws:
        assert abs(count_params(space.subnet(g)) - target) <= 0.15 * target
    assert len({str(g) for g in draws}) == 4
    assert draws == [random_genotype(space, 1, searched=searched, tolerance=0.15, draw=d)
                     for d in range(4)]


def test_an_unreachable_size_is_a_config_error(space):
    with pytest.raises(ConfigError, match=r"random.params-tolerance: 0 of 50 random .* "
                                          r"have 10 ± 1% params"):
        random_genotype(space, 0, target_params=10, tolerance=0.01, max_tries=50)
