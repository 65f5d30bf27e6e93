"""learn2learn tasks and MAML / ANIL / MetaSGD / Reptile on sklearn digits (8×8, 10 classes)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fednas.data.episodes import split_classes
from fednas.data.fewshot import load_fewshot
from fednas.errors import ConfigError
from fednas.meta.fedmeta import reptile_round
from fednas.meta.learners import (
    Conv4,
    MetaLearner,
    TaskSampler,
    evaluate_tasks,
    fixed_tasks,
    mean_ci95,
    meta_train,
    task_accuracies,
)
from fednas.models.baselines import HandCNN

TRAIN_TASKS = {"ways": 4, "shots": 1, "queries": 3}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits classes 6/0/4: meta-train and meta-test pools with disjoint classes."""
    data = load_fewshot("digits", tmp_path_factory.mktemp("digits"))
    split = split_classes(data, (0.6, 0.0, 0.4), seed=0)
    return data.subset(split.train), data.subset(split.test)


@pytest.fixture(scope="module")
def eval_tasks(digits):
    return fixed_tasks(digits[1], ways=4, shots=5, queries=5, num_tasks=8, seed=0)


def conv4(seed: int = 0, ways: int = 4) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(input_shape=(1, 8, 8), num_classes=ways, hidden=8)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_import_prints_no_gym_notice():
    out = subprocess.run([sys.executable, "-c", "import fednas.meta.learners"], capture_output=True,
                         text=True, check=True)
    assert out.stderr == "" and out.stdout == ""


@pytest.mark.slow
def test_meta_model_builders_leave_learn2learn_unimported():
    code = ("import sys; from fednas.meta import fedmeta, fedmeta_client, models, phase; "
            "from simulations import meta_rounds; "
            "from fednas.models.conv4 import Conv4; Conv4(input_shape=(1, 8, 8), num_classes=3); "
            "assert 'learn2learn' not in sys.modules, 'learn2learn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fixed_tasks_are_reproducible_and_leave_global_random_alone(digits):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    a = fixed_tasks(digits[1], ways=3, shots=2, queries=2, num_tasks=5, seed=7)
    assert random.random() == expected
    b = fixed_tasks(digits[1], ways=3, shots=2, queries=2, num_tasks=5, seed=7)
    c = fixed_tasks(digits[1], ways=3, shots=2, queries=2, num_tasks=5, seed=8)
    assert len(a) == 5
    for i in range(5):
        assert torch.equal(a[i].support_x, b[i].support_x) and a[i].classes == b[i].classes
        assert torch.equal(a[i].query_x, a[i].query_x)  # loading twice gives the same task
    assert any(not torch.equal(a[i].support_x, c[i].support_x) for i in range(5))
    s1 = TaskSampler(digits[0], seed=1, **TRAIN_TASKS)
    s2 = TaskSampler(digits[0], seed=1, **TRAIN_TASKS)
    assert all(torch.equal(s1.sample().query_x, s2.sample().query_x) for _ in range(3))
    with pytest.raises(ConfigError, match="needs >= 7 classes"):
        TaskSampler(digits[1], ways=7, shots=1, queries=1, seed=0)


def test_conv4_shapes():
    assert conv4()(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    big = Conv4(input_shape=(3, 28, 28), num_classes=5)
    assert big(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    assert big.head.in_features == 64 * 2 * 2


@pytest.mark.parametrize("first_order", [True, False])
def test_maml_clone_adapt_leaves_meta_parameters_untouched(digits, first_order):
    model = conv4()
    learner = MetaLearner(model, "maml", inner_lr=0.5, first_order=first_order)
    before = snapshot(model)
    ep = TaskSampler(digits[0], seed=0, **TRAIN_TASKS).sample()
    adapted = learner.adapt(ep.support_x, ep.support_y, steps=2)
    assert same(before, snapshot(model))
    assert all(p.grad is None for p in model.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(adapted.parameters(), model.parameters(),
                                                   strict=True)]
    assert all(moved)
    F.cross_entropy(adapted(ep.query_x), ep.query_y).backward()
    assert same(before, snapshot(model))  # backward fills .grad only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_second_order_meta_gradient_differs_from_first_order(digits):
    ep = TaskSampler(digits[0], seed=0, **TRAIN_TASKS).sample()
    grads = []
    for first_order in (True, False):
        model = conv4()
        adapted = MetaLearner(model, "maml", inner_lr=0.5).adapt(
            ep.support_x, ep.support_y, steps=1, first_order=first_order)
        F.cross_entropy(adapted(ep.query_x), ep.query_y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_anil_adapts_only_the_head_and_metasgd_learns_its_lrs(digits):
    ep = TaskSampler(digits[0], seed=0, **TRAIN_TASKS).sample()
    model = conv4()
    anil = MetaLearner(model, "anil", inner_lr=0.5)
    adapted = anil.adapt(ep.support_x, ep.support_y, steps=3)
    with torch.no_grad():
        ref = model(ep.query_x)
        out = adapted(ep.query_x)
        feats = model.features(ep.query_x)
    assert torch.allclose(anil.features(ep.query_x), feats)  # the body is not adapted
    assert not torch.allclose(out, ref)  # the head is
    hand = MetaLearner(HandCNN(input_shape=(1, 8, 8), num_classes=4, width=4), "anil")
    assert hand.adapt(ep.support_x, ep.support_y, 1)(ep.query_x).shape == (12, 4)

    msgd = MetaLearner(conv4(), "metasgd", inner_lr=0.3)
    lrs = [lr.detach().clone() for lr in msgd.learner.lrs]
    meta_train(msgd, digits[0], **TRAIN_TASKS, meta_batch=2, iterations=2, outer_lr=0.01,
               generator=torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(lrs, msgd.learner.lrs, strict=True))


def test_adaptation_improves_query_accuracy_after_short_meta_training(digits, eval_tasks):
    learner = meta_train(conv4(), digits[0], "maml", **TRAIN_TASKS, meta_batch=2,
                         inner_steps=1, inner_lr=0.5, outer_lr=3e-3, iterations=10,
                         first_order=True, generator=torch.Generator().manual_seed(0))
    assert len(learner.history) == 10 and {"loss", "accuracy"} <= learner.history[0].keys()
    before = snapshot(learner.model)
    unadapted = task_accuracies(learner, eval_tasks, steps=0)
    adapted = task_accuracies(learner, eval_tasks, steps=5)
    assert len(adapted) == len(eval_tasks)
    assert adapted.mean() > unadapted.mean() + 0.25, (unadapted.mean(), adapted.mean())
    assert same(before, snapshot(learner.model))
    mean, ci = evaluate_tasks(learner, eval_tasks, steps=5)
    assert mean == pytest.approx(adapted.mean()) and 0.0 < ci < 0.5


def test_meta_training_is_deterministic_under_a_seed(digits):
    runs = []
    for _ in range(2):
        model = conv4(seed=1)
        meta_train(model, digits[0], "anil", **TRAIN_TASKS, meta_batch=2, iterations=3,
                   generator=torch.Generator().manual_seed(5))
        runs.append(snapshot(model))
    assert same(*runs)
    other = conv4(seed=1)
    meta_train(other, digits[0], "anil", **TRAIN_TASKS, meta_batch=2, iterations=3,
               generator=torch.Generator().manual_seed(6))
    assert not same(runs[0], snapshot(other))


def test_reptile_round_and_bad_requests(digits):
    model = conv4()
    before = snapshot(model)
    sampler = TaskSampler(digits[0], seed=0, **TRAIN_TASKS)
    out = reptile_round(model, sampler, meta_batch=2, inner_steps=2, inner_lr=0.1)
    assert np.isfinite(out["loss"]) and not same(before, snapshot(model))
    with pytest.raises(ConfigError, match="meta.algorithm"):
        MetaLearner(model, "protonet")
    with pytest.raises(ConfigError, match="not 5/1/3"):
        meta_train(model, sampler, ways=5, shots=1, queries=3, iterations=1)
    assert mean_ci95([0.5]) == (0.5, 0.0)
