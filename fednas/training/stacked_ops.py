"""Layers rewritten for many clients' models stacked under ``torch.func.vmap``.

:class:`fednas.training.vectorised.VectorisedTrainer` swaps these in for PyTorch's own layers
(same parameters, buffers and state-dict names; each client's results equal its own layer's
up to float rounding) where vmap's generic batching is slow on CPU:

* :class:`Pointwise`: a 1×1 convolution as a matrix product. Under vmap a convolution with
  per-client weights is a grouped convolution; on one CPU thread with a small batch PyTorch
  runs a grouped 1×1 convolution as one kernel call per group (per client).
* :class:`ClientBatchNorm`: BatchNorm in training mode. vmap's rule for batch norm's backward
  is a composite of many small operations; here the clients' channels are laid side by side
  (``[clients, batch, C, H, W]`` → ``[batch, clients·C, H, W]``) and one native batch norm
  forward and backward runs over all of them, which is exactly per-client BatchNorm: each
  channel of each client is normalised with its own batch statistics and updates its own
  running statistics. 1.9× faster than vmap's rule for 200 clients of 8 images with 4
  channels at 14×14, forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd import Function

__all__ = ["ClientBatchNorm", "Pointwise", "stack_friendly"]


class Pointwise(nn.Conv2d):
    """A 1×1 convolution computed as a (batched) matrix product."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) != (1, 1):
            input = input[..., ::sh, ::sw]
        n, c, h, w = input.shape
        out = torch.matmul(weight.flatten(1), input.reshape(n, c, h * w))
        if bias is not None:
            out = out + bias[:, None]
        return out.reshape(n, -1, h, w)


def _front(t: torch.Tensor, dim: int | None, k: int) -> torch.Tensor:
    """``t`` with its vmap dimension first (expanded when it has none)."""
    return t.movedim(dim, 0) if dim is not None else t.unsqueeze(0).expand(k, *t.shape)


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """``[K, B, C, ...]`` → ``[B, K·C, ...]``."""
    k, b, c = x.shape[:3]
    return x.transpose(0, 1).reshape(b, k * c, *x.shape[3:])


def _per_client(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, K·C, ...]`` → ``[K, B, C, ...]``."""
    b, kc = x.shape[:2]
    return x.reshape(b, k, kc // k, *x.shape[2:]).transpose(0, 1)


class _BatchNormTrain(Function):
    """Training-mode batch norm (updates the running statistics in place) with a vmap rule
    that lays the clients' channels side by side."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, momentum, eps):  # type: ignore[override]
        return torch.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                       momentum, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _, _, _, _, eps = inputs
        _, mean, invstd = output
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.affine = weight is not None
        ctx.mark_non_differentiable(mean, invstd)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, *_: Any) -> tuple:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        grads = _BatchNormBackward.apply(grad_out, x, weight, mean, invstd, ctx.eps)
        if not ctx.affine:
            return grads, None, None, None, None, None, None
        return (*grads, None, None, None, None)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x, weight, bias, running_mean, running_var,
             momentum, eps) -> tuple:
        k = info.batch_size
        if in_dims[3] is None or in_dims[4] is None:
            raise ValueError("ClientBatchNorm under vmap needs per-client running statistics")
        flat = [None if t is None else _front(t, d, k).reshape(-1)
                for t, d in ((weight, in_dims[1]), (bias, in_dims[2]))]
        # the running statistics are updated in place: views of the stacked buffers
        stats = [t.movedim(d, 0).view(-1)
                 for t, d in ((running_mean, in_dims[3]), (running_var, in_dims[4]))]
        out, mean, invstd = _BatchNormTrain.apply(_side_by_side(_front(x, in_dims[0], k)),
                                                  *flat, *stats, momentum, eps)
        return (_per_client(out, k), mean.view(k, -1), invstd.view(k, -1)), (0, 0, 0)


class _BatchNormBackward(Function):
    """Batch norm's backward (input, and weight and bias when affine), with the same vmap
    rule. Not differentiable again (local training needs first derivatives only)."""

    @staticmethod
    def forward(grad_out, x, weight, mean, invstd, eps):  # type: ignore[override]
        affine = weight is not None
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, None, None, mean, invstd, True, eps, [True, affine, affine])
        return (gx, gw, gb) if affine else gx

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple:  # type: ignore[override]
        raise RuntimeError("ClientBatchNorm has no second derivative")

    @staticmethod
    def vmap(info: Any, in_dims: tuple, grad_out, x, weight, mean, invstd, eps) -> tuple:
        k = info.batch_size
        g, xs = (_side_by_side(_front(t, d, k))
                 for t, d in zip((grad_out, x), in_dims[:2], strict=True))
        w, m, s = (None if t is None else _front(t, d, k).reshape(-1)
                   for t, d in zip((weight, mean, invstd), in_dims[2:5], strict=True))
        out = _BatchNormBackward.apply(g, xs, w, m, s, eps)
        if weight is None:
            return _per_client(out, k), 0
        gx, gw, gb = out
        return (_per_client(gx, k), gw.view(k, -1), gb.view(k, -1)), (0, 0, 0)


class ClientBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode forward batches per client under vmap (see the
    module docstring); evaluation mode is PyTorch's own."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.running_mean is None or self.momentum is None:
            return super().forward(input)
        self.num_batches_tracked.add_(1)
        return _BatchNormTrain.apply(input, self.weight, self.bias, self.running_mean,
                                     self.running_var, self.momentum, self.eps)[0]


def stack_friendly(model: nn.Module, device: torch.device) -> None:
    """Swap in :class:`ClientBatchNorm` for every plain BatchNorm2d with running statistics
    and, on CPU, :class:`Pointwise` for every plain 1×1 convolution (in place: parameter
    and buffer names stay, so the state dict is unchanged)."""
    for m in model.modules():
        if (type(m) is nn.BatchNorm2d and m.track_running_stats and m.momentum is not None):
            m.__class__ = ClientBatchNorm
        elif (device.type == "cpu" and type(m) is nn.Conv2d and m.kernel_size == (1, 1)
              and m.groups == 1 and m.dilation == (1, 1) and m.padding in ((0, 0), 0)
              and m.padding_mode == "zeros"):
            m.__class__ = Pointwise
