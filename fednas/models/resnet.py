"""CIFAR ResNet parts (He et al. 2016; depth 6n+2, basic blocks, option-B shortcuts).

:class:`BasicBlock` can run at a reduced inner width (the first ``k`` filters of its first
convolution: slimmable weight sharing); :class:`CifarResNet` is the plain network with fixed
per-block inner widths, the discrete subnet of the width space
(:class:`fednas.spaces.width.SlimmableResNet`), which builds its body with :func:`build_body`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "build_body", "resnet_blocks"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block ``conv1 -> BN -> ReLU -> conv2 -> BN (+ shortcut) -> ReLU``.

    ``mid`` is the number of output channels of ``conv1`` (the prunable width). The shortcut
    is the identity, or a 1×1 conv + BN (option B) when the stride or channel count changes.
    """

    def __init__(self, c_in: int, mid: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, mid, stride)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv3x3(mid, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(
        self, x: torch.Tensor, width: int | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the block, optionally with the first ``width`` inner channels or a mask.

        Parameters
        ----------
        x
            Input ``(N, c_in, H, W)``.
        width
            Use only the first ``width`` filters of ``conv1`` (weights sliced, so the cost
            shrinks). Equivalent to a hard 0/1 channel mask.
        mask
            A ``(mid,)`` vector multiplying the inner activation (the α mixture).
        """
        if width is None or width == self.conv1.out_channels:
            out = F.relu(self.bn1(self.conv1(x)))
            if mask is not None:
                out = out * mask.view(1, -1, 1, 1)
            out = self.conv2(out)
        else:
            out = F.conv2d(x, self.conv1.weight[:width], stride=self.conv1.stride, padding=1)
            out = F.relu(_sliced_bn(self.bn1, out, width))
            out = F.conv2d(out, self.conv2.weight[:, :width], padding=1)
        return F.relu(self.bn2(out) + self.shortcut(x))


def _sliced_bn(bn: nn.BatchNorm2d, x: torch.Tensor, k: int) -> torch.Tensor:
    """Batch norm over the first ``k`` channels of ``bn`` (running stats updated in place)."""
    if bn.training:
        bn.num_batches_tracked.add_(1)
    mean, var = bn.running_mean[:k], bn.running_var[:k]
    return F.batch_norm(x, mean, var, bn.weight[:k], bn.bias[:k], bn.training, bn.momentum, bn.eps)


def build_body(
    module: nn.Module,
    in_channels: int,
    num_classes: int,
    base: int,
    mids: Sequence[int],
    stem_stride: int,
) -> None:
    """Attach ``stem``, ``layer1..3`` and ``fc`` to ``module`` (shared by supernet and subnet)."""
    n = len(mids) // 3
    module.stem = nn.Sequential(
        nn.Conv2d(in_channels, base, 3, stride=stem_stride, padding=1, bias=False),
        nn.BatchNorm2d(base),
        nn.ReLU(inplace=True),
    )
    c_in = base
    for s, (c_out, stride) in enumerate(zip((base, 2 * base, 4 * base), (1, 2, 2), strict=True)):
        blocks = [
            BasicBlock(c_in if i == 0 else c_out, mids[s * n + i], c_out, stride if i == 0 else 1)
            for i in range(n)
        ]
        setattr(module, f"layer{s + 1}", nn.Sequential(*blocks))
        c_in = c_out
    module.fc = nn.Linear(4 * base, num_classes)


def resnet_blocks(module: nn.Module) -> list[BasicBlock]:
    """The basic blocks of ``module``'s three stages, in order."""
    return [b for s in (module.layer1, module.layer2, module.layer3) for b in s]


class CifarResNet(nn.Module):
    """A plain CIFAR ResNet with per-block inner widths ``mids`` (the discrete width subnet).

    Parameters
    ----------
    in_channels, num_classes
        Input channels and number of logits.
    base_channels
        Channels of the first stage; stages use ``base, 2·base, 4·base`` with strides 1, 2, 2.
    mids
        Inner (``conv1`` output) channels of each of the ``3n`` basic blocks, in order.
    stem_stride
        Stride of the 3×3 stem convolution.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int,
        mids: Sequence[int],
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(mids) == 0 or len(mids) % 3:
            raise ValueError(f"mids: need 3n block widths, got {len(mids)}")
        build_body(self, in_channels, num_classes, base_channels, mids, stem_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        x = self.stem(x)
        for block in resnet_blocks(self):
            x = block(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
