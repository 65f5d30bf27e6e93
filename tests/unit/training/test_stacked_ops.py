"""The batched layers of vectorised training equal PyTorch's own, client by client."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fednas.training.stacked_ops import ClientBatchNorm, Pointwise, stack_friendly


def _model(affine: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False),
                         nn.BatchNorm2d(4, affine=affine), nn.ReLU(), nn.Conv2d(4, 3, 1),
                         nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 6 * 6, 5))


@pytest.mark.parametrize("affine", [True, False])
def test_stacked_layers_equal_each_clients_own(affine):
    plain = _model(affine)
    fast = copy.deepcopy(plain)
    stack_friendly(fast, torch.device("cpu"))
    kinds = [type(m) for m in fast.modules()]
    assert ClientBatchNorm in kinds and Pointwise in kinds
    assert fast.state_dict().keys() == plain.state_dict().keys()
    k = 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, 4, 1, 6, 6, generator=g) * torch.arange(1, k + 1).view(k, 1, 1, 1, 1)
    y = torch.randint(0, 5, (k, 4), generator=g)
    params = {n: p.detach() + 0.1 * torch.randn(k, *p.shape, generator=g)
              for n, p in plain.named_parameters()}

    def loss_of(model):
        def loss(p, b, xi, yi):
            return F.cross_entropy(functional_call(model, (p, b), (xi,)), yi)
        return loss

    results = []
    for model in (plain, fast):
        buffers = {n: b.detach().unsqueeze(0).repeat(k, *[1] * b.dim())
                   for n, b in model.named_buffers()}
        grads = vmap(grad(loss_of(model)))(params, buffers, x, y)
        results.append((grads, buffers))
    for i in range(k):  # and client i's own training step, outside vmap
        own = copy.deepcopy(plain)
        own.load_state_dict({**own.state_dict(), **{n: p[i] for n, p in params.items()}})
        F.cross_entropy(own(x[i]), y[i]).backward()
        for n, p in own.named_parameters():
            torch.testing.assert_close(results[1][0][n][i], p.grad, rtol=1e-5, atol=1e-6)
        for n, b in own.named_buffers():
            torch.testing.assert_close(results[1][1][n][i], b, rtol=1e-5, atol=1e-6)
    for n in params:
        torch.testing.assert_close(results[1][0][n], results[0][0][n], rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[1][1]["1.running_mean"][0], results[1][1]["1.running_mean"][1])
