"""Hand-designed reference models (baselines), registered by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a model class to :data:`MODELS`."""

    def wrap(cls):
        MODELS[name] = cls
        return cls

    return wrap


@register_model("conv4")
def conv4_baseline(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64
                   ) -> nn.Module:
    """Conv-4 (:class:`fednas.models.conv4.Conv4`, MAML's few-shot baseline) with ``width`` channels
    and running BN statistics: trained as the ``baseline`` phase, its body starts the meta
    phase's ``conv4-pretrained`` (which, like every MAML Conv-4, uses batch statistics)."""
    from fednas.models.conv4 import Conv4

    return Conv4(input_shape=input_shape, num_classes=num_classes, hidden=width,
                 batch_stats=False)


@register_model("cnn")
class HandCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-fc(4w)-fc: the calibration CNN of DESIGN (w=32: 422k params).

    Parameters
    ----------
    input_shape, num_classes
        Input ``(C, H, W)`` and number of classes.
    width
        Channels of the first conv.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, width: int = 32
                 ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width), nn.ReLU(),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered model ``name``."""
    from fednas.errors import ConfigError

    if name not in MODELS:
        raise ConfigError(f"baseline.model: unknown model {name!r}; allowed: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
