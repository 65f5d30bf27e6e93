"""Device tiers (issue 31): the seeded assignment, each tier's width and shards."""

from __future__ import annotations

import pytest
import torch

from fednas.config.devices import DevicesConfig
from fednas.errors import ConfigError
from fednas.federated.tiers import (
    assign_tiers,
    tier_counts,
    tier_limits,
    tier_masks,
    tier_shard,
    tier_width,
    uniform_genotype,
)
from fednas.spaces.registry import build_space

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return build_space("width", input_shape=SHAPE, num_classes=4, depth=8, base_channels=8,
                       width_choices=(0.25, 0.5, 0.75, 1.0))


@pytest.mark.parametrize("clients, fractions, counts", [
    (10, (0.25, 0.5, 0.25), [3, 5, 2]),   # 2.5 / 5 / 2.5: ties to the first tier
    (4, (0.25, 0.5, 0.25), [1, 2, 1]),
    (3, (0.9, 0.05, 0.05), [1, 1, 1]),    # every tier keeps a client
    (100, (1 / 3, 1 / 3, 1 / 3), [34, 33, 33]),
])
def test_counts_round_to_the_fractions_and_leave_no_tier_empty(clients, fractions, counts):
    assert tier_counts(clients, fractions) == counts


def test_fewer_clients_than_tiers_is_an_error():
    with pytest.raises(ConfigError, match="3 tiers need at least as many clients"):
        tier_counts(2, (0.3, 0.3, 0.4))


def test_assignment_is_a_seeded_draw_with_the_counts():
    a = assign_tiers(20, (0.25, 0.5, 0.25), seed=3)
    assert a == assign_tiers(20, (0.25, 0.5, 0.25), seed=3)
    assert a != assign_tiers(20, (0.25, 0.5, 0.25), seed=4)
    assert [a.count(t) for t in range(3)] == tier_counts(20, (0.25, 0.5, 0.25))
    assert a[:5] != sorted(a[:5]) or a[5:10] != sorted(a[5:10])  # not in id order


def test_tier_width_is_the_largest_uniform_width_within_budget(space):
    full = space.cost(space.max_genotype())
    for frac in (0.3, 0.55, 0.8, 1.0):
        limits = tier_limits((frac, None), full)
        w = tier_width(space, limits, "t")
        assert space.cost(uniform_genotype(space, w))[0] <= limits[0]
        wider = [c for c in space.width_choices if c > w]
        if wider:
            assert space.cost(uniform_genotype(space, min(wider)))[0] > limits[0]
    assert tier_width(space, (None, full[1]), "t") == 1.0
    with pytest.raises(ConfigError, match="tier 'tiny' allows 10 params"):
        tier_width(space, (10, None), "tiny")


def test_masks_and_shards_stay_within_the_tier(space):
    allowed = tier_masks(space, 0.5)
    assert [m.tolist() for m in allowed] == [[True, True, False, False]] * space.num_prunable
    alphas = [torch.randn(a.shape) for a in space.arch_parameters()]
    alphas[0][3] = 50.0  # the largest width is the favourite: still out of reach
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        shard = tier_shard(alphas, allowed, 1, g)
        assert all(int(s.sum()) == 1 and not (s & ~ok).any()
                   for s, ok in zip(shard, allowed, strict=True))
    assert [m.tolist() for m in tier_shard(alphas, allowed, 0, g)] == [
        m.tolist() for m in allowed]
    # the regions that travel stop at the tier's widest channel
    slices = space.shard_slices(allowed)
    name = space.prunable_layers()[0].rsplit(".", 1)[0]
    assert slices[f"{name}.conv1.weight"] == (slice(0, space.channel_choices[0][1]),)


def test_cell_space_tiers_are_refused():
    cell = build_space("cell", input_shape=SHAPE, num_classes=4, channels=4, layers=2,
                       nodes=2)
    with pytest.raises(ConfigError, match="space.name = 'cell' is not supported"):
        tier_masks(cell, 0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": (1.0,)}, "set devices.names first"),
    ({"names": ("a", "a"), "fractions": (0.5, 0.5), "params": (0.5, 1.0)}, "distinct"),
    ({"names": ("a", "b"), "fractions": (0.5,), "params": (0.5, 1.0)}, "one value per tier"),
    ({"names": ("a", "b"), "fractions": (0.5, 0.6), "params": (0.5, 1.0)}, "summing to 1"),
    ({"names": ("a", "b"), "fractions": (0.5, 0.5), "params": (0.5, 0.0)}, "tier 'b' has no"),
])
def test_devices_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DevicesConfig(**kwargs).check()


def test_devices_config_budgets_and_speeds():
    d = DevicesConfig(names=("s", "l"), fractions=(0.5, 0.5), params=(0.25, 1.0),
                      flops=(0.0, 0.5))
    d.check()
    assert (d.tiers, d.budget(0), d.budget(1), d.speed_of(1)) == (
        2, (0.25, None), (1.0, 0.5), 1.0)
    assert DevicesConfig().tiers == 0


def test_strategy_sends_each_tier_only_its_channels(space, task_identity):
    """Acceptance (issue 31): a tier-0 client's message holds no region outside its tier."""
    from flwr.app import ConfigRecord

    from fednas.federated.codec import to_record, to_state_dict
    from fednas.federated.shards import decode_masks
    from strategies.fednas import FedNAS

    strategy = FedNAS(space, shard_size=0, seed=0, fraction_train=1.0, min_train_nodes=4)
    strategy.node_partitions = {100 + p: p for p in range(4)}
    tiers = assign_tiers(4, (0.5, 0.5), seed=1)
    widths = (0.25, 1.0)
    strategy.allowed = {p: tier_masks(space, widths[t]) for p, t in enumerate(tiers)}
    state = space.state_dict()
    messages = list(strategy.configure_train(1, to_record(state), ConfigRecord({}), grid=None))
    assert len(messages) == 4
    shapes = [a.shape for a in space.arch_parameters()]
    block = space.prunable_layers()[0].rsplit(".", 1)[0]
    for m in messages:
        pid = int(m.content["config"]["partition-id"])
        width = widths[tiers[pid]]
        masks = decode_masks(list(m.content["config"]["shard"]), shapes)
        assert all(not (mk & ~ok).any() for mk, ok in zip(masks, strategy.allowed[pid],
                                                           strict=True))
        regions = to_state_dict(m.content["arrays"])
        k = space.channel_choices[0][space.width_choices.index(width)]
        assert regions[f"{block}.conv1.weight"].shape[0] == k
        assert regions[f"{block}.conv2.weight"].shape[1] == k

