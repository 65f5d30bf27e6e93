"""Conv-4, the few-shot baseline of MAML (Finn et al. 2017), without learn2learn.

:mod:`fednas.meta.learners` re-exports it; building it here keeps the meta phase's model builders
(:mod:`fednas.meta.models`, :mod:`simulations.meta_rounds`) free of the learn2learn import.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Conv4(nn.Module):
    """The few-shot baseline: 4 × (conv3×3-``hidden``, BN, ReLU, max-pool 2), linear head.

    BN always normalises with batch statistics (no running stats), as in MAML; with
    ``batch_stats = False`` it tracks running statistics for evaluation, as a network trained
    by plain supervised learning does (the ``conv4`` baseline model: its test accuracy then
    does not depend on how the test set is batched).
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 64,
                 batch_stats: bool = True) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Conv2d(c, hidden, 3, padding=1),
                       nn.BatchNorm2d(hidden, track_running_stats=not batch_stats), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c, h, w = hidden, math.ceil(h / 2), math.ceil(w / 2)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(hidden * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
