"""Cell supernet and subnet weights: `subnet` copies them out, `load_subnet` back in."""

from __future__ import annotations

import pytest
import torch

from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space

OPS = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_3x3")
SMALL = dict(input_shape=(1, 8, 8), num_classes=4, channels=4, layers=3, nodes=2, ops=OPS)


def supernet(seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_space("cell", **(SMALL | options))


def retrained(space, genotype, seed: int = 1) -> CellNetwork:
    """A subnet of ``genotype`` whose every tensor differs from the supernet's (BN stats too)."""
    net = space.subnet(genotype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.add_(0.3 * torch.randn(value.shape, generator=gen)).abs_()
    return net


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_load_subnet_then_subnet_is_the_retrained_network(seed):
    space = supernet()
    genotype = space.random_genotype(torch.Generator().manual_seed(seed))
    net = retrained(space, genotype).eval()
    before = {k: v.clone() for k, v in space.state_dict().items()}
    copied = space.load_subnet(net)
    assert copied == len(net.state_dict())  # every tensor of the subnet has a place
    back = space.subnet(genotype).eval()
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(6, 1, 8, 8)
    assert torch.allclose(back(x), net(x), atol=1e-6)
    # α and the ops of the edges the genotype does not use keep the supernet's values
    changed = {k for k, v in space.state_dict().items() if not torch.equal(v, before[k])}
    assert not changed & {"alpha_normal", "alpha_reduce"}
    used = {f"cells.{i}.edges.{edge}.ops.{name}." for i, cell in enumerate(back.cells)
            for name, edge in cell.edge_ids}
    ops = {k for k in changed if ".edges." in k}
    assert ops and all(k.startswith(tuple(used)) for k in ops)


def test_load_subnet_rejects_another_layout():
    space = supernet()
    genotype = space.random_genotype(torch.Generator().manual_seed(0))
    wider = CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=4, channels=6, layers=3)
    with pytest.raises(ValueError, match="does not fit the supernet"):
        space.load_subnet(wider)
    deeper = CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=4, channels=4, layers=4)
    with pytest.raises(ValueError, match="4 cells, the supernet has 3"):
        space.load_subnet(deeper)
    assert all(torch.equal(v, supernet().state_dict()[k]) for k, v in space.state_dict().items())


def test_load_subnet_with_partial_channels_keeps_the_supernet_ops():
    space = supernet(partial_channels=2)
    genotype = space.random_genotype(torch.Generator().manual_seed(0))
    net = retrained(space, genotype)
    space.load_subnet(net)
    assert torch.equal(space.stem[0].weight, net.stem[0].weight)
    assert torch.equal(space.cells[1].preprocess1[1].weight,
                       net.cells[1].preprocess1[1].weight)
    ref = supernet(partial_channels=2)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in space.state_dict().items()
               if ".edges." in k)  # C/K-wide ops: nothing of the C-wide subnet fits
