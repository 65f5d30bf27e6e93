"""Training core on tiny real data: the search moves α and learns; seeding reproduces."""

from __future__ import annotations

import pytest
import torch

from fednas.data.datasets import load_dataset
from fednas.errors import ConfigError
from fednas.models.baselines import HandCNN, build_model
from fednas.models.flops import count_flops, count_params
from fednas.spaces.registry import build_space
from fednas.training.train import (
    batches,
    evaluate,
    make_optimizer,
    make_scheduler,
    resolve_device,
    search_steps,
    seed_everything,
    steps_per_epoch,
    train_epoch,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", root=tmp_path_factory.mktemp("cache"), val_fraction=0.2)


def small_space(data, seed=0):
    torch.manual_seed(seed)
    return build_space("cell", input_shape=data.input_shape, num_classes=data.num_classes,
                       channels=4, layers=2, nodes=2,
                       ops=("skip_connect", "max_pool_3x3", "conv_3x3"))


def run_search(data, seed: int, steps: int = 30):
    gen = seed_everything(seed)
    net = small_space(data, seed)
    w_opt = make_optimizer("sgd", net.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-2, betas=(0.5, 0.999))
    before = [a.detach().clone() for a in net.arch_parameters()]
    stats = search_steps(net, (data.train_x, data.train_y), (data.val_x, data.val_y),
                         weight_opt=w_opt, arch_opt=a_opt, steps=steps, batch_size=32,
                         grad_clip=5.0, generator=gen, device=torch.device("cpu"))
    return net, before, stats


def test_search_updates_alpha_and_learns(digits):
    net, before, stats = run_search(digits, 0)
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), before, strict=True))
    assert {"train_loss", "train_acc", "arch_loss", "arch_acc"} <= set(stats)
    val = evaluate(net, (digits.val_x, digits.val_y), batch_size=100, device=torch.device("cpu"))
    assert val["eval_acc"] > 0.5  # chance is 0.1


def test_search_is_reproducible_for_a_seed(digits):
    a, _, sa = run_search(digits, 1, steps=5)
    b, _, sb = run_search(digits, 1, steps=5)
    c, _, _ = run_search(digits, 2, steps=5)
    assert sa == sb
    for x, y in zip(a.arch_parameters(), b.arch_parameters(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.alpha_normal, c.alpha_normal)


def test_warmup_without_arch_optimizer_leaves_alpha(digits):
    gen = seed_everything(0)
    net = small_space(digits)
    before = net.alpha_normal.detach().clone()
    w_opt = make_optimizer("sgd", net.weights(), lr=0.05, momentum=0.9, weight_decay=0)
    stats = search_steps(net, (digits.train_x, digits.train_y), (digits.val_x, digits.val_y),
                         weight_opt=w_opt, arch_opt=None, steps=3, batch_size=16,
                         grad_clip=5.0, generator=gen, device=torch.device("cpu"))
    assert torch.equal(net.alpha_normal, before) and "arch_loss" not in stats


def test_train_epoch_improves_a_hand_cnn(digits):
    gen = seed_everything(0)
    model = build_model("cnn", input_shape=digits.input_shape, num_classes=10, width=8)
    opt = make_optimizer("adam", model.parameters(), lr=3e-3, momentum=0, weight_decay=0)
    cpu = torch.device("cpu")
    before = evaluate(model, (digits.test_x, digits.test_y), batch_size=256, device=cpu)
    for _ in range(5):
        train_epoch(model, (digits.train_x, digits.train_y), optimizer=opt, batch_size=32,
                    grad_clip=5.0, generator=gen, device=cpu)
    after = evaluate(model, (digits.test_x, digits.test_y), batch_size=256, device=cpu)
    assert after["eval_acc"] > 0.85 > before["eval_acc"]


def test_hand_cnn_matches_calibration_size():
    model = HandCNN(input_shape=(1, 28, 28), num_classes=10, width=32)
    assert count_params(model) == 421_642  # the DESIGN calibration CNN (422k)
    assert count_flops(model, (1, 28, 28)) > 0
    with pytest.raises(ConfigError, match="baseline.model"):
        build_model("vit", input_shape=(1, 28, 28), num_classes=10)


def test_batches_cover_and_schedules():
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat(list(batches(10, 3, gen)))
    assert sorted(idx.tolist()) == list(range(10))
    assert [len(b) for b in batches(10, 3, gen, drop_last=True)] == [3, 3, 3]
    assert steps_per_epoch(1000, 64) == 15 and steps_per_epoch(1000, 64, cap=4) == 4
    opt = make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9,
                         weight_decay=0)
    sched = make_scheduler("cosine", opt, 10, 0.0)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert make_scheduler("constant", opt, 10) is None


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="runtime.device"):
            resolve_device("cuda")


def test_recalibrate_bn_estimates_the_data_statistics():
    from fednas.training.train import recalibrate_bn

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model[1].running_mean.fill_(-50.0)
    x = 3.0 + 2.0 * torch.randn(600, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model.eval()
    recalibrate_bn(model, x, batch_size=64, device=torch.device("cpu"))
    assert not model.training and model[1].momentum == 0.1
    torch.testing.assert_close(model[1].running_mean, torch.full((2,), 3.0), atol=0.05, rtol=0)
    torch.testing.assert_close(model[1].running_var, torch.full((2,), 4.0), atol=0.2, rtol=0)
