"""Parameter and FLOP counts, measured on the real module (torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> int:
    """FLOPs of one forward pass of ``model`` on a single sample of ``input_shape``.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as
    two FLOPs). The model is run in eval mode on its own device, then restored. ``batch``
    samples are run and the count divided by it: > 1 for models whose normalisation always
    uses batch statistics (MAML's Conv-4), which cannot run on one sample.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            dtype = param.dtype if param is not None else torch.get_default_dtype()
            model(torch.zeros(batch, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // batch
