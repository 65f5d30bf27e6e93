"""Distillation: KD loss by hand, FedDF ensembles, DNA block loss, a digits student."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fednas.data.datasets import load_dataset
from fednas.models.baselines import build_model
from fednas.training.distill import (
    agreement,
    block_regression_loss,
    distill,
    ensemble_logits,
    kd_loss,
)
from fednas.training.train import train_epoch


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 0.0]])
    # T = 2: row 1 has p_t = softmax([1.5, 1, 0.5]) and log p_t - log p_s = [1, 0, -1]
    # (the two logit vectors are mirror images), so KL = p_t[0] - p_t[2]; row 2 has KL = 0.
    e = [math.exp(1.5), math.exp(1.0), math.exp(0.5)]
    kl = (e[0] - e[2]) / sum(e)
    assert kl == pytest.approx(0.3201567, abs=1e-7)
    expected = 2.0**2 * (kl + 0.0) / 2  # T² · batch mean
    loss = kd_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # + β · CE: row 1, label 2: log(e + e² + e³) - 3; row 2, label 1: log(2 + e) - 1.
    labels = torch.tensor([2, 1])
    ce = (math.log(math.e + math.e**2 + math.e**3) - 3 + math.log(2 + math.e) - 1) / 2
    loss = kd_loss(student, teacher, labels, temperature=2.0, beta=0.5)
    assert loss.item() == pytest.approx(expected + 0.5 * ce, rel=1e-6)
    assert kd_loss(student, teacher, labels, temperature=2.0).item() == pytest.approx(expected)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_loss_is_zero_when_student_equals_teacher_and_checks_arguments():
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert float(kd_loss(z, z.clone())) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature > 0"):
        kd_loss(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(z, z[:, :3])


def test_ensemble_logits_is_the_mean_of_the_teachers():
    torch.manual_seed(0)
    models = [nn.Linear(3, 2) for _ in range(3)]
    x = torch.randn(5, 3)
    expected = sum(m(x) for m in models) / 3
    assert torch.allclose(ensemble_logits(models, x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_logits([], x)


def test_block_regression_loss_averages_block_mses():
    s = [torch.zeros(2, 3), torch.ones(2, 1, 2)]
    t = [torch.full((2, 3), 2.0), torch.zeros(2, 1, 2)]
    assert float(block_regression_loss(s, t)) == pytest.approx((4.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="block 1: student output shape"):
        block_regression_loss(s, [t[0], torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="same non-zero number"):
        block_regression_loss(s, t[:1])


def test_distilled_student_agrees_with_a_trained_teacher(tmp_path):
    data = load_dataset("digits", root=tmp_path)
    shape, cpu = data.input_shape, torch.device("cpu")
    torch.manual_seed(0)
    teacher = build_model("cnn", input_shape=shape, num_classes=10, width=8)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        train_epoch(teacher, (data.train_x, data.train_y), optimizer=opt, batch_size=64,
                    grad_clip=5.0, generator=gen, device=cpu)
    student = build_model("cnn", input_shape=shape, num_classes=10, width=4)
    before = agreement(student, teacher, data.test_x, batch_size=256, device=cpu)
    # Unlabelled proxy set (the train inputs); agreement is measured on held-out test inputs.
    out = distill(student, [teacher], data.train_x, epochs=5, lr=0.1, batch_size=64,
                  temperature=2.0, device=cpu, generator=torch.Generator().manual_seed(1))
    after = agreement(student, teacher, data.test_x, batch_size=256, device=cpu)
    assert len(out["loss"]) == 5 and out["loss"][-1] < out["loss"][0]
    assert before < 0.3 and after > 0.8, (before, after)
