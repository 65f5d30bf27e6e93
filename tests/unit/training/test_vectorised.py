"""VectorisedTrainer: many clients of one model as one vmap computation equal their own
training with torch.optim.SGD (fednas/training/vectorised.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fednas.training.train import make_optimizer
from fednas.training.vectorised import ClientJob, VectorisedTrainer

TOL = 1e-5


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def job(seed: int, n: int, batch: int, epochs: int, lr: float, momentum: float,
        wd: float) -> ClientJob:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    steps = [torch.randperm(n, generator=g)[:batch] for _ in range(epochs * (n // batch))]
    return ClientJob((x, y), steps, stats_from=(epochs - 1) * (n // batch), lr=lr,
                     momentum=momentum, weight_decay=wd, val=(x[:3], y[:3]))


def sequential(model: nn.Module, state: dict, j: ClientJob, clip: float) -> dict:
    model.load_state_dict(state)
    model.train()
    opt = make_optimizer("sgd", model.parameters(), lr=j.lr, momentum=j.momentum,
                         weight_decay=j.weight_decay)
    for idx in j.steps:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(j.train[0][idx]), j.train[1][idx])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_equals_each_clients_own_sgd_training():
    model = small_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = [job(1, 12, 4, 2, 0.1, 0.9, 1e-3),   # 6 steps, Nesterov, weight decay
            job(2, 8, 4, 1, 0.05, 0.0, 0.0),    # 2 steps, plain SGD: leaves the prefix early
            job(3, 9, 3, 2, 0.2, 0.5, 0.0),     # another batch size: its own group
            job(4, 16, 4, 1, 0.3, 0.9, 0.0)]    # 4 steps
    trainer = VectorisedTrainer(small_net(), grad_clip=0.5, device=torch.device("cpu"))
    results = trainer.run(state, jobs, report_val=2)
    for j, res in zip(jobs, results, strict=True):
        want = sequential(model, state, j, 0.5)
        assert not res.diverged and set(res.state) == set(want)
        for key, value in want.items():
            assert torch.allclose(res.state[key].float(), value.float(), atol=TOL), key
        assert res.metrics["val_loss"] != res.metrics["val_loss_pre"]
    assert int(results[1].state["1.num_batches_tracked"]) == 2  # its BN saw its own 2 steps
    assert int(results[0].state["1.num_batches_tracked"]) == 6


def test_a_diverging_client_is_flagged_and_the_others_are_untouched():
    model = small_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = [job(1, 12, 4, 1, 0.1, 0.0, 0.0), job(2, 12, 4, 1, 1e30, 0.0, 0.0)]
    jobs[1].train = (jobs[1].train[0] * 1e30, jobs[1].train[1])
    a, b = VectorisedTrainer(small_net(), grad_clip=1e30, device=torch.device("cpu")).run(
        state, jobs)
    assert b.diverged and b.state == {}
    want = sequential(model, state, jobs[0], 1e30)
    assert all(torch.allclose(a.state[k].float(), want[k].float(), atol=TOL) for k in want)


def test_randomness_inside_the_model_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(25, 3))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="randomness"):
        VectorisedTrainer(net, grad_clip=1.0, device=torch.device("cpu")).run(
            state, [job(1, 8, 4, 1, 0.1, 0.0, 0.0)])
