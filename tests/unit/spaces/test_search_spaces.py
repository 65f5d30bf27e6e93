"""Every registered op and search space: shapes, gradients, genotypes and subnets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fednas.errors import CheckpointError, ConfigError
from fednas.models.flops import count_flops, count_params
from fednas.spaces.base import load_genotype, save_genotype
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.ops import OPS
from fednas.spaces.registry import available_spaces, build_space

SMALL = {
    "cell": {"channels": 4, "layers": 3, "nodes": 2, "stem_stride": 1},
    "width": {"depth": 8, "base_channels": 4},
}
SHAPES = [(1, 8, 8), (3, 12, 12)]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape_and_gradient(name, stride):
    torch.manual_seed(0)
    op = OPS[name](6, stride, True)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 6, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
    y.pow(2).sum().backward()
    if name != "none":
        assert x.grad is not None and x.grad.abs().sum() > 0
        for p in op.parameters():
            assert p.grad is not None


def make(name: str, shape=(1, 8, 8), **extra):
    torch.manual_seed(0)
    return build_space(name, input_shape=shape, num_classes=5, **{**SMALL[name], **extra})


def test_both_spaces_registered():
    build_space("cell", input_shape=(1, 8, 8), num_classes=2, channels=2, layers=1, nodes=1)
    assert {"cell", "width"} <= set(available_spaces())
    with pytest.raises(ConfigError, match="space.name: unknown search space 'dense'"):
        build_space("dense", input_shape=(1, 8, 8), num_classes=2)


@pytest.mark.parametrize("name", available_spaces())
@pytest.mark.parametrize("shape", SHAPES)
def test_space_forward_and_gradients_reach_alpha_and_weights(name, shape):
    net = make(name, shape)
    x, y = torch.randn(4, *shape), torch.randint(0, 5, (4,))
    logits = net(x)
    assert logits.shape == (4, 5)
    F.cross_entropy(logits, y).backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weights())
    ids = {id(p) for p in net.arch_parameters()}
    assert ids.isdisjoint({id(p) for p in net.weights()})
    assert len(ids) + len(net.weights()) == len(list(net.parameters()))


@pytest.mark.parametrize("name", available_spaces())
def test_genotype_json_round_trip_and_subnet(name, tmp_path):
    net = make(name)
    genotype = net.genotype()
    assert genotype["space"] == name
    save_genotype(genotype, tmp_path / "g.json")
    loaded = load_genotype(tmp_path / "g.json")
    assert loaded == json.loads(json.dumps(genotype)) == genotype
    sub = net.subnet(loaded)
    assert sub(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    assert not any("alpha" in k for k in sub.state_dict())
    params, flops = net.cost(loaded)
    assert 0 < params < count_params(net) and flops > 0


@pytest.mark.parametrize("name", available_spaces())
def test_random_genotypes_are_valid_and_seeded(name):
    net = make(name)
    g1 = net.random_genotype(torch.Generator().manual_seed(3))
    g2 = net.random_genotype(torch.Generator().manual_seed(3))
    assert g1 == g2
    net.subnet(g1)


@pytest.mark.parametrize("name", available_spaces())
def test_genotype_from_other_space_is_rejected(name):
    other = make("width" if name == "cell" else "cell")
    with pytest.raises(CheckpointError, match="genotype is for space"):
        make(name).subnet(other.genotype())


def test_cell_subnet_equals_supernet_when_alpha_is_one_hot():
    """With α saturated on the genotype's edges (others on 'none'), both nets agree."""
    ops = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
    net = make("cell", ops=ops)
    net.eval()
    for module in net.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    wanted = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["max_pool_3x3", 2],
                         ["sep_conv_3x3", 0]],
              "reduce": [["max_pool_3x3", 1], ["sep_conv_3x3", 0], ["skip_connect", 2],
                         ["sep_conv_3x3", 1]]}
    with torch.no_grad():
        for kind, alpha in (("normal", net.alpha_normal), ("reduce", net.alpha_reduce)):
            alpha.fill_(-40.0)
            alpha[:, 0] = 40.0  # every edge 'none' ...
            for k, (op, j) in enumerate(wanted[kind]):
                edge = sum(2 + m for m in range(k // 2)) + j
                alpha[edge, 0] = -40.0
                alpha[edge, ops.index(op)] = 40.0  # ... except the chosen ones
    genotype = net.genotype()
    for kind in ("normal", "reduce"):
        assert sorted(map(tuple, genotype[kind])) == sorted(map(tuple, wanted[kind]))
    sub = net.subnet(genotype).eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(sub(x), net(x), atol=1e-4, rtol=1e-4)


def test_cell_genotype_picks_top2_edges_by_alpha():
    net = make("cell", ops=("none", "skip_connect", "conv_3x3"), nodes=2)
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[2, 2] = 5.0  # node 1: edges 2,3,4 = inputs 0,1,2
        net.alpha_normal[4, 1] = 4.0
        net.alpha_normal[3, 0] = 9.0  # 'none' never counts
    node1 = net.genotype()["normal"][2:]
    assert node1 == [["conv_3x3", 0], ["skip_connect", 2]]


@pytest.mark.parametrize("bad, match", [
    ({"normal": [["conv_7x7", 0], ["skip_connect", 1]]}, "not a candidate"),
    ({"normal": [["skip_connect", 5], ["skip_connect", 1]]}, "out of range"),
    ({"normal": [["none", 0], ["skip_connect", 1]]}, "not a candidate"),
    ({"normal": [["skip_connect", 0]]}, "two per node"),
])
def test_bad_cell_genotypes_are_rejected(bad, match):
    genotype = {"space": "cell", "normal": [["skip_connect", 0], ["skip_connect", 1]],
                "reduce": [["skip_connect", 0], ["skip_connect", 1]]}
    genotype.update(bad)
    with pytest.raises(CheckpointError, match=match):
        CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=3, channels=4, layers=2)


def test_cell_network_can_be_resized_for_retraining():
    net = make("cell")
    g = net.genotype()
    wide = CellNetwork(g, input_shape=(1, 8, 8), num_classes=5, channels=8, layers=4)
    assert count_params(wide) > count_params(net.subnet(g))
    assert count_flops(wide, (1, 8, 8)) > count_flops(net.subnet(g), (1, 8, 8))


def test_bad_space_options_name_the_key():
    with pytest.raises(ConfigError, match="space.cell.ops"):
        make("cell", ops=("conv_9x9",))
    with pytest.raises(ConfigError, match="space.cell.ops"):
        make("cell", ops=("none",))
