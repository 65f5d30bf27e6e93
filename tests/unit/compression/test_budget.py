"""Budgeted derivation: every derived model meets its measured budget, in both spaces."""

from __future__ import annotations

import pytest
import torch

from fednas.compression.budget import Budget, derive_under_budget, smallest_cost
from fednas.compression.perturbation import perturbation_scores
from fednas.errors import ConfigError
from fednas.models.baselines import build_model
from fednas.models.flops import count_flops, count_params
from fednas.spaces.registry import build_space

SHAPE = (1, 8, 8)
CELL_OPS = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")


def measured(space, genotype) -> tuple[int, int]:
    model = space.subnet(genotype)
    return count_params(model), count_flops(model, SHAPE)


@pytest.fixture(scope="module")
def cell():
    torch.manual_seed(0)
    space = build_space("cell", input_shape=SHAPE, num_classes=3, channels=4, layers=2,
                        nodes=2, ops=CELL_OPS)
    with torch.no_grad():  # a clear preference for the expensive op, so budgets bite
        for a in space.arch_parameters():
            a.normal_(0, 1)
            a[:, CELL_OPS.index("sep_conv_3x3")] += 1.0
    return space


@pytest.fixture(scope="module")
def width():
    torch.manual_seed(0)
    space = build_space("width", input_shape=SHAPE, num_classes=3, depth=8, base_channels=4)
    with torch.no_grad():
        for a in space.arch_parameters():
            a.normal_(0, 1)
    return space


@pytest.fixture(params=["cell", "width"])
def space(request):
    return request.getfixturevalue(request.param)


def test_budget_resolves_absolute_and_fraction_against_a_reference_model():
    ref = build_model("cnn", input_shape=SHAPE, num_classes=3, width=4)
    ref_params, ref_flops = count_params(ref), count_flops(ref, SHAPE)
    assert Budget(params=0.5).resolve(ref_params, ref_flops) == (int(0.5 * ref_params), None)
    assert Budget(flops=1.0).resolve(ref_params, ref_flops) == (None, ref_flops)
    assert Budget(params=1200, flops=3e4).resolve() == (1200, 30000)
    assert Budget().resolve(ref_params, ref_flops) == (None, None)


@pytest.mark.parametrize(("budget", "match"), [
    (Budget(params=0), "compression.params: must be"),
    (Budget(flops=-3), "compression.flops: must be"),
    (Budget(params=float("nan")), "compression.params: must be"),
    (Budget(flops=True), "compression.flops: must be"),
    (Budget(params=0.5), "compression.params: 0.5 is a fraction of a reference model"),
])
def test_bad_budgets_name_the_field(budget, match):
    with pytest.raises(ConfigError, match=match):
        budget.resolve()


def test_no_budget_or_a_loose_one_gives_the_argmax_genotype(space):
    assert derive_under_budget(space, (None, None)) == space.genotype()
    params, flops = space.cost(space.genotype())
    assert derive_under_budget(space, (params, flops)) == space.genotype()


@pytest.mark.parametrize("dims", ["params", "flops", "both"])
@pytest.mark.parametrize("frac", [0.0, 0.15, 0.4, 0.7])
def test_derived_model_meets_its_budget(space, dims, frac):
    low = smallest_cost(space)
    high = space.cost(space.genotype())
    limit = [int(lo + frac * (hi - lo)) for lo, hi in zip(low, high, strict=True)]
    limits = (limit[0] if dims != "flops" else None, limit[1] if dims != "params" else None)
    genotype = derive_under_budget(space, limits)
    cost = measured(space, genotype)
    for c, lim in zip(cost, limits, strict=True):
        assert lim is None or c <= lim
    assert space.subnet(genotype)(torch.zeros(2, *SHAPE)).shape == (2, 3)


def test_width_repair_leaves_no_affordable_upgrade(width):
    limits = (int(0.6 * width.cost(width.max_genotype())[0]), None)
    genotype = derive_under_budget(width, limits)
    probs = [a.detach().softmax(-1) for a in width.arch_parameters()]
    choices = list(width.width_choices)
    for i, w in enumerate(genotype["widths"]):
        for j, other in enumerate(choices):
            if probs[i][j] > probs[i][choices.index(w)]:
                upgraded = list(genotype["widths"])
                upgraded[i] = other
                assert measured(width, {**genotype, "widths": upgraded})[0] > limits[0]


def test_smallest_cost_is_reachable_and_a_lower_bound(space):
    low = smallest_cost(space)
    if space.space_name == "width":
        assert low == measured(space, space.min_genotype())
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        params, flops = measured(space, space.random_genotype(gen))
        assert params >= low[0] and flops >= low[1]
    genotype = derive_under_budget(space, low)
    assert measured(space, genotype) == low


@pytest.mark.parametrize("key", ["params", "flops"])
def test_impossible_budget_names_the_smallest_reachable_model(space, key):
    params, flops = smallest_cost(space)
    limits = (params - 1, None) if key == "params" else (None, flops - 1)
    expected = (f"compression.{key}: {limits[0] or limits[1]} is below the smallest reachable "
                f"model of this space ({params} params, {flops} FLOPs)")
    with pytest.raises(ConfigError) as err:
        derive_under_budget(space, limits)
    assert str(err.value) == expected


def test_bad_mode_and_missing_scores(cell):
    with pytest.raises(ConfigError, match="compression.selection: 'random' is not allowed"):
        derive_under_budget(cell, (None, None), mode="random")
    with pytest.raises(ConfigError, match="needs scores of shapes"):
        derive_under_budget(cell, (None, None), mode="perturbation")


def test_perturbation_ranks_a_useless_op_last_and_restores_the_shard():
    torch.manual_seed(0)
    ops = ("skip_connect", "max_pool_3x3", "sep_conv_3x3")
    useless = ops.index("sep_conv_3x3")
    space = build_space("cell", input_shape=SHAPE, num_classes=3, channels=4, layers=2,
                        nodes=2, ops=ops)
    with torch.no_grad():  # softmax weight ~1e-13: the op contributes nothing to the mixture
        for a in space.arch_parameters():
            a[:, useless] = -30.0
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    space.eval()
    with torch.no_grad():  # labels = the supernet's own predictions: full accuracy is 100 %
        y = space(x).argmax(1)
    shard = [torch.ones(a.shape, dtype=torch.bool) for a in space.arch_parameters()]
    shard[0][0, 0] = False
    space.set_shard(shard)
    scores = perturbation_scores(space, (x, y), torch.device("cpu"), batch_size=64)
    assert space.shard is not None and not bool(space.shard[0][0, 0])
    space.set_shard(None)
    for s in scores:  # normal and reduction cells: 5 edges x 3 ops each
        assert s.shape == (5, 3)
        assert torch.all(s[:, useless] == 0)
        assert torch.all(s[:, useless] < s[:, :useless].min(1).values)  # strictly last
    low, high = smallest_cost(space), space.cost(space.genotype())
    limits = ((low[0] + high[0]) // 2, None)
    genotype = derive_under_budget(space, limits, mode="perturbation", scores=scores)
    assert measured(space, genotype)[0] <= limits[0]
    assert all(op != "sep_conv_3x3" for op, _ in genotype["normal"] + genotype["reduce"])


def test_width_perturbation_scores_have_alpha_shapes(width):
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    scores = perturbation_scores(width, (x, y), torch.device("cpu"), batch_size=16)
    assert [s.shape for s in scores] == [a.shape for a in width.arch_parameters()]
    genotype = derive_under_budget(width, (None, None), mode="perturbation", scores=scores)
    assert len(genotype["widths"]) == width.num_prunable


def test_count_flops_per_sample_for_batch_statistics_models():
    from fednas.models.conv4 import Conv4

    model = Conv4(input_shape=SHAPE, num_classes=5, hidden=8)  # BatchNorm: batch statistics
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # 1×1 in block 4
        count_flops(model, SHAPE)
    per_sample = count_flops(model, SHAPE, batch=2)
    assert per_sample == count_flops(model, SHAPE, batch=4) > count_params(model)
    ref = build_model("cnn", input_shape=SHAPE, num_classes=3, width=4)
    assert count_flops(ref, SHAPE, batch=3) == count_flops(ref, SHAPE)


def test_reachable_candidates_grow_with_the_budget_and_fit_it():
    """Device tiers in the cell space (issue 31): a candidate is kept when the cheapest
    genotype containing it fits; the kept genotype of a tight budget really fits."""
    from fednas.compression.budget import (
        derive_under_budget,
        largest_cost,
        reachable_candidates,
        smallest_cost,
    )
    from fednas.spaces.registry import build_space

    torch.manual_seed(0)
    space = build_space("cell", input_shape=(1, 8, 8), num_classes=4, channels=4, layers=2,
                        nodes=2, ops=("skip_connect", "max_pool_3x3", "sep_conv_3x3"))
    small, large = smallest_cost(space), largest_cost(space)
    assert small[0] < large[0] and small[1] < large[1]
    shares = []
    for frac in (0.3, 0.4, 1.0):
        limits = (int(frac * large[0]), None)
        masks = reachable_candidates(space, limits)
        assert [m.shape for m in masks] == [a.shape for a in space.alpha_parameters()]
        assert all(bool(m.any(-1).all()) for m in masks)  # a candidate per row
        shares.append(float(sum(m.sum() for m in masks)))
        # restricted to those candidates, derivation still meets the budget (measured)
        with torch.no_grad():
            for a, m in zip(space.alpha_parameters(), masks, strict=True):
                a.copy_(torch.where(m, torch.zeros_like(a), torch.full_like(a, -30.0)))
        genotype = derive_under_budget(space, limits)
        assert space.cost(genotype)[0] <= limits[0]
    assert shares[0] < shares[1] <= shares[2] == sum(a.numel() for a in space.alpha_parameters())
