"""DAP (issue 32): the two-temperature relaxation, the penalty, extraction, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fednas.compression.budget import Budget
from fednas.compression.dap import Schedule, extract, prunable, select, train_gates
from fednas.compression.dap_gates import (
    DapGates,
    keep_probability,
    logistic_noise,
    masked,
    measure,
    relaxed_gate,
)
from fednas.errors import ConfigError
from fednas.models.baselines import HandCNN
from fednas.models.conv4 import Conv4
from fednas.spaces.registry import build_space

SHAPE = (1, 8, 8)
CPU = torch.device("cpu")


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@pytest.fixture(scope="module")
def toy():
    """A HandCNN trained to separate 4 noisy templates: its task loss needs its channels."""
    torch.manual_seed(0)
    templates = torch.randn(4, *SHAPE)
    y = torch.randint(4, (128,))
    x = templates[y] + 0.8 * torch.randn(128, *SHAPE)
    model = HandCNN(input_shape=SHAPE, num_classes=4, width=4)
    opt = torch.optim.Adam(model.parameters(), 0.03)
    for _ in range(60):
        idx = torch.randint(128, (32,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, (x, y)


def test_two_temperatures_on_a_hand_checked_case():
    theta = torch.tensor([2.0, -1.0, 0.0])
    u = [0.25, 0.5, 0.9]
    noise = torch.tensor([math.log(p / (1 - p)) for p in u])
    # π = σ(θ / T) and z = σ((θ / T + L) / τ), at T = 2, τ = 0.5, by hand:
    assert keep_probability(theta, 2.0).tolist() == pytest.approx(
        [sigmoid(1.0), sigmoid(-0.5), 0.5])
    assert relaxed_gate(theta, noise, 2.0, 0.5).tolist() == pytest.approx(
        [sigmoid((1.0 + math.log(1 / 3)) / 0.5), sigmoid(-0.5 / 0.5),
         sigmoid(math.log(9.0) / 0.5)], rel=1e-6)
    # τ → 0: hard Bernoulli samples 1[θ/T + L > 0]; τ → ∞: 1/2.
    assert relaxed_gate(theta, noise, 2.0, 1e-4).tolist() == [0.0, 0.0, 1.0]
    assert relaxed_gate(theta, noise, 2.0, 1e6).tolist() == pytest.approx([0.5] * 3, abs=1e-5)
    # T → 0: π → 1[θ > 0] (θ = 0 stays undecided); T → ∞: π → 1/2.
    assert keep_probability(theta, 1e-4).tolist() == [1.0, 0.0, 0.5]
    assert keep_probability(theta, 1e6).tolist() == pytest.approx([0.5] * 3, abs=1e-5)
    # At every τ, z > 1/2 exactly when u > 1 − π: P(z > 1/2) = π.
    grid = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    pi = sigmoid(2.0 / 2.0)
    for tau in (0.1, 1.0, 5.0):
        z = relaxed_gate(torch.tensor(2.0, dtype=torch.float64), (grid / (1 - grid)).log(),
                         2.0, tau)
        assert torch.equal(z > 0.5, grid > 1 - pi)
    # The noise is log u − log(1 − u) of the generator's uniforms; the gates use it in order.
    u = torch.rand(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(logistic_noise(3, torch.Generator().manual_seed(5)),
                          (u.log() - (1 - u).log()).float())
    gates = DapGates(HandCNN(input_shape=SHAPE, num_classes=3, width=1), SHAPE)
    with torch.no_grad():
        for t, v in zip(gates.theta, (0.5, -0.5, 1.0), strict=True):
            t.fill_(v)
    z = torch.cat(gates.sample(2.0, 0.5, torch.Generator().manual_seed(3)))
    noise = logistic_noise(7, torch.Generator().manual_seed(3))  # 1 + 2 + 4 units
    assert torch.allclose(z, relaxed_gate(torch.cat(list(gates.theta)), noise, 2.0, 0.5))


def test_expected_cost_is_the_model_at_certain_gates():
    model = HandCNN(input_shape=SHAPE, num_classes=3, width=2)
    gates = DapGates(model, SHAPE)
    c, w = SHAPE[0], 2
    hand = (c * w * 9 + w) + (w * 2 * w * 9 + 2 * w) + (2 * w * 4 * 4 * w + 4 * w) + (4 * w * 3 + 3)
    assert gates.full[0] == hand == gates.hard_cost([torch.ones(len(s), dtype=torch.bool)
                                                     for s in gates.sizes])[0]
    with torch.no_grad():  # π = 1/2 everywhere: E[C] = C(E[n]) with E[n_l] = C_l / 2
        for t in gates.theta:
            t.zero_()
    half = [w / 2, w, 2 * w]
    expected = (c * half[0] * 9 + half[0]) + (half[0] * half[1] * 9 + half[1]) + (
        half[1] * 4 * half[2] + half[2]) + (half[2] * 3 + 3)
    assert float(gates.expected_cost()[0].detach()) == pytest.approx(expected)


def test_penalty_drives_expected_complexity_to_the_target(toy):
    model, data = toy
    gates = DapGates(model, SHAPE)
    stats = train_gates(model, gates, data, budget=Budget(params=0.3), device=CPU,
                        generator=torch.Generator().manual_seed(1), steps=150, batch_size=32,
                        lr=0.05, lam=5.0)
    target, full = stats["limits"][0], gates.full[0]
    assert stats["history"][0] > 0.85 * full
    assert 0.8 * target < stats["expected_params"] <= 1.05 * target
    # T annealed to 0.1: the subset 1[θ > 0] costs what its expectation does.
    assert stats["mode_params"] == pytest.approx(stats["expected_params"], rel=0.1)
    free = DapGates(model, SHAPE)  # control: without the penalty nothing is pruned
    train_gates(model, free, data, budget=Budget(params=0.3), device=CPU, lam=0.0,
                generator=torch.Generator().manual_seed(1), steps=40, batch_size=32, lr=0.1)
    assert float(free.expected_cost()[0].detach()) > 0.8 * full


def _models():
    torch.manual_seed(0)
    width = build_space("width", input_shape=SHAPE, num_classes=3, depth=8, base_channels=4)
    return {"cnn": HandCNN(input_shape=SHAPE, num_classes=3, width=4),
            "conv4": Conv4(input_shape=SHAPE, num_classes=3, hidden=6),
            "width": prunable(width)}


@pytest.mark.parametrize("name", ["cnn", "conv4", "width"])
@pytest.mark.parametrize("group_size", [1, 2])
def test_extraction_keeps_exactly_the_gated_units(name, group_size):
    model = _models()[name].eval()
    gates = DapGates(model, SHAPE, group_size=group_size)
    with torch.no_grad():
        for t in gates.theta:
            t.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(len(t)))
    mode_cost = gates.hard_cost(gates.mode())[0]  # a budget that forces the repair
    budget = Budget(params=max(gates.smallest()[0], int(0.8 * mode_cost)))
    keep = select(gates, budget)
    assert gates.hard_cost(keep)[0] < mode_cost
    net = extract(model, gates, budget=budget).eval()
    layout = gates.layout
    kept = [k.repeat_interleave(s).nonzero().flatten() for k, s in
            zip(keep, gates.sizes, strict=True)]
    for layer, (hook, k) in enumerate(zip(layout.hooks, keep, strict=True)):
        gated = net.get_submodule(hook)  # a conv, linear or BN: weight rows = channels
        assert gated.weight.shape[0] == len(kept[layer]) == int((gates.sizes[layer] * k).sum())
    for link in layout.links:  # conv weights: the kept rows and columns, copied
        weight = model.get_submodule(link.module).weight
        if weight.dim() == 4:
            weight = weight if link.dst is None else weight[kept[link.dst]]
            weight = weight if link.src is None else weight[:, kept[link.src]]
            assert torch.equal(net.get_submodule(link.module).weight, weight)
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), masked(model, gates, [k.float() for k in keep]):
        reference = model(x)
    with torch.no_grad():
        assert torch.allclose(net(x), reference, atol=1e-5)
    params, flops = measure(net, SHAPE)
    assert (params, flops) == gates.hard_cost(keep)
    assert params <= budget.params
    assert not any(model.get_submodule(h)._forward_hooks for h in layout.hooks)


def test_impossible_targets_name_the_smallest_network():
    model = _models()["cnn"]
    gates = DapGates(model, SHAPE)
    small = gates.smallest()
    assert small == measure(extract(model, gates, [torch.arange(len(s)) == 0
                                                   for s in gates.sizes]), SHAPE)
    with pytest.raises(ConfigError, match=rf"smallest.*{small[0]} params, {small[1]} FLOPs"):
        extract(model, gates, budget=Budget(params=small[0] - 1))
    with pytest.raises(ConfigError, match="over the budget"):
        extract(model, gates, gates.mode(), budget=Budget(params=0.5))
    with pytest.raises(ConfigError, match="smallest"):
        train_gates(model, gates, (torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long)),
                    budget=Budget(flops=small[1] - 1), device=CPU,
                    generator=torch.Generator().manual_seed(0), steps=1)
    cell = build_space("cell", input_shape=SHAPE, num_classes=3, channels=4, layers=2, nodes=2,
                       ops=("skip_connect", "sep_conv_3x3"))
    with pytest.raises(ConfigError, match="width space"):
        prunable(cell)
    with pytest.raises(ConfigError, match="Conv4"):
        DapGates(cell.subnet(cell.genotype()), SHAPE)


def test_training_is_seeded_and_leaves_the_model_alone(toy):
    model, data = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for seed in (4, 4, 5):
        gates = DapGates(model, SHAPE, group_size=2)
        stats = train_gates(model, gates, data, budget=Budget(flops=0.5), device=CPU,
                            generator=torch.Generator().manual_seed(seed), steps=20,
                            batch_size=16, schedule=Schedule(prob=(1.0, 0.5)))
        runs.append((torch.cat([t.detach() for t in gates.theta]), stats))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and model.training
