"""Tests of the width search space (slimmable CIFAR ResNet)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fednas.errors import CheckpointError, ConfigError
from fednas.models.flops import count_flops, count_params
from fednas.spaces.base import load_genotype, save_genotype
from fednas.spaces.registry import SPACES
from fednas.spaces.width import SlimmableResNet

SMALL = (1, 8, 8)


def make(input_shape=SMALL, num_classes=10, seed=0, **options) -> SlimmableResNet:
    torch.manual_seed(seed)
    return SlimmableResNet(input_shape=input_shape, num_classes=num_classes, **options)


def randomise_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN affine parameters and running statistics (defaults hide slicing bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


def test_registered() -> None:
    assert SPACES.get("width") is SlimmableResNet
    assert SlimmableResNet.space_name == "width"


@pytest.mark.parametrize(
    ("shape", "stem_stride"), [((1, 28, 28), 2), ((3, 32, 32), 1), ((1, 8, 8), 1), (SMALL, 2)]
)
def test_forward_shape(shape, stem_stride) -> None:
    net = make(shape, num_classes=7, stem_stride=stem_stride)
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 7)
    net.set_active_widths(net.min_genotype()["widths"])
    assert net(x).shape == (2, 7)
    assert net.subnet(net.random_genotype(torch.Generator().manual_seed(0)))(x).shape == (2, 7)


def test_structure_and_names() -> None:
    net = make(depth=32)
    assert net.num_prunable == 15 == len(net.prunable_layers()) == len(net.arch_parameters())
    modules = dict(net.named_modules())
    for name in net.prunable_layers():
        assert isinstance(modules[name], nn.Conv2d)
    assert net.prunable_layers()[0] == "layer1.0.conv1"
    assert net.prunable_layers()[-1] == "layer3.4.conv1"
    assert net.channel_choices[0] == [4, 8, 12, 16] and net.channel_choices[-1] == [16, 32, 48, 64]
    assert all(a.shape == (4,) and a.abs().max() < 1e-2 for a in net.arch_parameters())


def test_alpha_init_follows_global_seed() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    assert all(
        torch.equal(x, y) for x, y in zip(a.arch_parameters(), b.arch_parameters(), strict=True)
    )
    assert not torch.equal(a.arch_parameters()[0], c.arch_parameters()[0])


def test_gradients_reach_alpha_and_weights() -> None:
    net = make()
    x, y = torch.randn(4, *SMALL), torch.randint(10, (4,))
    F.cross_entropy(net(x), y).backward()
    for alpha in net.arch_parameters():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weights())
    assert net.layer2[0].conv1.weight.grad.abs().sum() > 0


def test_hard_widths_give_no_alpha_gradient_and_zero_grad_outside_width() -> None:
    net = make()
    net.set_active_widths([0.25] * net.num_prunable)
    F.cross_entropy(net(torch.randn(4, *SMALL)), torch.randint(10, (4,))).backward()
    assert all(a.grad is None for a in net.arch_parameters())
    grad = net.layer1[0].conv1.weight.grad
    assert grad[:4].abs().sum() > 0 and grad[4:].abs().sum() == 0
    assert net.layer1[0].conv2.weight.grad[:, 4:].abs().sum() == 0


def test_weights_and_arch_parameters_partition_parameters() -> None:
    net = make()
    weights = {id(p) for p in net.weights()}
    arch = {id(p) for p in net.arch_parameters()}
    assert weights.isdisjoint(arch)
    assert weights | arch == {id(p) for p in net.parameters()}
    assert len(arch) == 9


def test_peaked_alpha_mixture_equals_hard_width() -> None:
    net = make()
    randomise_bn(net)
    net.eval()
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))  # all mass on 0.5
    x = torch.randn(3, *SMALL)
    mixed = net(x)
    assert net.genotype()["widths"] == [0.5] * 9
    with net.active_widths(net.genotype()["widths"]):
        hard = net(x)
    assert net._active is None  # context manager restored the mixture
    torch.testing.assert_close(mixed, hard, atol=1e-5, rtol=0)


def test_genotype_json_round_trip(tmp_path) -> None:
    net = make()
    with torch.no_grad():
        net.arch_parameters()[2][0] = 5.0
    g = net.genotype()
    assert g["space"] == "width" and g["depth"] == 20 and g["base_channels"] == 16
    assert g["widths"][2] == 0.25 and len(g["widths"]) == 9
    assert json.loads(json.dumps(g)) == g
    save_genotype(g, tmp_path / "genotype.json")
    loaded = load_genotype(tmp_path / "genotype.json")
    assert loaded == g
    assert count_params(net.subnet(loaded)) == count_params(net.subnet(g))


def test_random_genotype_is_seeded_and_valid() -> None:
    net = make()
    g1 = net.random_genotype(torch.Generator().manual_seed(5))
    g2 = net.random_genotype(torch.Generator().manual_seed(5))
    assert g1 == g2
    seen = set()
    for seed in range(10):
        seen.update(net.random_genotype(torch.Generator().manual_seed(seed))["widths"])
    assert seen == set(net.width_choices)


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_subnet_equals_active_width_supernet(stem_stride) -> None:
    net = make((3, 12, 12), stem_stride=stem_stride)
    randomise_bn(net)
    net.eval()
    x = torch.randn(5, 3, 12, 12)
    gen = torch.Generator().manual_seed(0)
    genotypes = [net.max_genotype(), net.min_genotype()] + [
        net.random_genotype(gen) for _ in range(3)
    ]
    for g in genotypes:
        sub = net.subnet(g)
        assert not sub.training
        assert not any("alpha" in name for name, _ in sub.named_parameters())
        net.set_active_widths(g["widths"])
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x), atol=1e-5, rtol=0)
    net.set_active_widths(None)


def test_subnet_is_a_copy() -> None:
    net = make()
    sub = net.subnet(net.min_genotype())
    assert sub.layer1[0].conv1.weight.shape[0] == 4
    with torch.no_grad():
        sub.layer1[0].conv1.weight.zero_()
    assert net.layer1[0].conv1.weight[:4].abs().sum() > 0


def test_smaller_widths_cost_strictly_less() -> None:
    net = make((1, 16, 16), stem_stride=2)
    costs = [net.cost(net._genotype([f] * 9)) for f in net.width_choices]
    for (p_small, f_small), (p_big, f_big) in zip(costs, costs[1:], strict=False):
        assert p_small < p_big and f_small < f_big
    one_layer = net.max_genotype()
    one_layer["widths"][4] = 0.5
    p, f = net.cost(one_layer)
    assert p < costs[-1][0] and f < costs[-1][1]


def test_full_width_subnet_is_plain_resnet20() -> None:
    net = make((3, 32, 32), num_classes=10)
    # ResNet-20: stem conv+BN, 9 blocks of two 3x3 convs + 2 BN, option-B 1x1 shortcuts, fc.
    expected = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for i in range(3):
            expected += c_in * c * 9 + c * c * 9 + 4 * c
            if i == 0 and c_in != c:
                expected += c_in * c + 2 * c
            c_in = c
    expected += 64 * 10 + 10
    sub = net.subnet(net.max_genotype())
    assert count_params(sub) == expected == 272_474
    assert count_params(net) == expected + 9 * 4  # plus α
    assert count_flops(sub, (3, 32, 32)) > 0


@pytest.mark.parametrize("depth", [21, 164, 2, 0, -4, 20.0, True])
def test_bad_depth_raises_config_error(depth) -> None:
    with pytest.raises(ConfigError, match=r"space\.width\.depth.*6n\+2"):
        make(depth=depth)


@pytest.mark.parametrize(
    "choices", [(0.5,), (0.0, 1.0), (0.5, 1.5), (), (0.5, 0.5, 1.0), ("a", 1.0), (-0.5, 1.0)]
)
def test_bad_width_choices_raise_config_error(choices) -> None:
    with pytest.raises(ConfigError, match=r"space\.width\.width-choices"):
        make(width_choices=choices)


def test_width_choices_are_sorted_and_other_options_checked() -> None:
    net = make(width_choices=[1.0, 0.5], depth=8)
    assert net.width_choices == (0.5, 1.0) and net.num_prunable == 3
    assert net.channel_choices[0] == [8, 16]
    with pytest.raises(ConfigError, match=r"space\.width\.stem-stride"):
        make(stem_stride=3)
    with pytest.raises(ConfigError, match=r"space\.width\.base-channels"):
        make(base_channels=0)


def test_tiny_fractions_keep_one_channel() -> None:
    net = make(base_channels=2, width_choices=(0.1, 1.0), depth=8)
    assert [ks[0] for ks in net.channel_choices] == [1, 1, 1]
    assert count_params(net.subnet(net.min_genotype())) < count_params(
        net.subnet(net.max_genotype())
    )


def test_wrong_genotype_raises_checkpoint_error() -> None:
    net = make()
    good = net.max_genotype()
    bad = [
        ({**good, "space": "cell"}, "space"),
        ({**good, "widths": good["widths"][:-1]}, "expected 9 widths"),
        ({**good, "widths": [*good["widths"][:-1], 0.3]}, "not one of"),
        ({**good, "widths": "1.0"}, "list"),
        ({k: v for k, v in good.items() if k != "widths"}, "list"),
        ({**good, "depth": 32}, "depth"),
        ({**good, "base_channels": 8}, "base_channels"),
    ]
    for genotype, message in bad:
        with pytest.raises(CheckpointError, match=message):
            net.subnet(genotype)
    with pytest.raises(ValueError, match="not one of"):
        net.set_active_widths([0.3] * 9)


def test_sgd_steps_reduce_loss() -> None:
    net = make(seed=0, depth=8, base_channels=8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, *SMALL, generator=gen)
    y = torch.randint(10, (16,), generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_sandwich_step_reduces_loss_of_every_width() -> None:
    net = make(seed=1, depth=8, base_channels=8)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, *SMALL, generator=gen)
    y = torch.randint(10, (16,), generator=gen)
    opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    widths = [net.max_genotype()["widths"], net.min_genotype()["widths"]]  # sandwich rule

    def losses() -> list[float]:
        with torch.no_grad():
            out = []
            for w in widths:
                net.set_active_widths(w)
                out.append(F.cross_entropy(net(x), y).item())
            return out

    before = losses()
    for _ in range(15):
        opt.zero_grad()
        for w in [*widths, net.random_genotype(gen)["widths"]]:
            net.set_active_widths(w)
            F.cross_entropy(net(x), y).backward()
        opt.step()
    after = losses()
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)
