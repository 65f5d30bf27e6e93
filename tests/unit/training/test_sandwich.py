"""Sandwich-rule search steps on the width space."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.spaces.registry import build_space
from fednas.training.sandwich import sandwich_steps, sandwich_widths, shard_choices
from fednas.training.train import evaluate, search_steps


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def space():
    torch.manual_seed(0)
    return build_space("width", input_shape=(1, 8, 8), num_classes=10, depth=8,
                       base_channels=8, width_choices=(0.25, 0.5, 1.0))


def train(net, fn, steps=60):
    tr, va = digits()
    w_opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-3)
    return fn(net, tr, va, weight_opt=w_opt, arch_opt=a_opt, steps=steps, batch_size=64,
              grad_clip=5.0, generator=torch.Generator().manual_seed(0),
              device=torch.device("cpu"))


def test_sandwich_widths_are_largest_smallest_then_random_within_the_shard():
    net = space()
    net.set_shard([torch.tensor([True, True, False])] * net.num_prunable)
    choices = shard_choices(net)
    assert choices == [[0.25, 0.5]] * net.num_prunable
    widths = sandwich_widths(choices, 3, torch.Generator().manual_seed(0))
    assert widths[0] == [0.5] * net.num_prunable and widths[1] == [0.25] * net.num_prunable
    assert len(widths) == 5 and all(w in (0.25, 0.5) for ws in widths for w in ws)


def test_sandwich_trains_only_the_shard_and_every_width_learns():
    net = space()
    net.set_shard([torch.tensor([True, True, False])] * net.num_prunable)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = train(net, sandwich_steps)
    assert stats["train_kd"] > 0 and "arch_loss" in stats
    conv = net.prunable_layers()[0].rsplit(".", 1)[0] + ".conv1.weight"
    k = net.channel_choices[0][1]  # channels of width 0.5
    after = net.state_dict()[conv]
    assert torch.equal(after[k:], before[conv][k:])  # outside the shard: untouched
    assert not torch.equal(after[:k], before[conv][:k])
    _, val = digits()
    net.set_shard(None)
    for widths in ([0.25] * net.num_prunable, [0.5] * net.num_prunable):
        acc = evaluate(net.subnet(net._genotype(widths)), val, batch_size=512,
                       device=torch.device("cpu"))["eval_acc"]
        assert acc > 0.5, widths


def test_sandwich_makes_the_smallest_width_better_than_mixture_search():
    _, val = digits()
    accs = {}
    for name, fn in (("sandwich", sandwich_steps), ("mixture", search_steps)):
        net = space()
        train(net, fn)
        small = net.subnet(net._genotype([0.25] * net.num_prunable))
        accs[name] = evaluate(small, val, batch_size=512, device=torch.device("cpu"))["eval_acc"]
    assert accs["sandwich"] > accs["mixture"] + 0.05, accs


def test_sandwich_needs_the_width_space():
    with pytest.raises(ConfigError, match='search.sandwich: .* needs space.name = "width"'):
        load_config(None, ["search.sandwich=true"])
    cfg = load_config(None, ["search.sandwich=true", "space.name=width"])
    assert cfg.search.sandwich_samples == 2
