"""PC-DARTS pieces of the cell space (Xu et al., "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020).

* **Partial channel connections** (``space.cell.partial-channels = K``): a MixedOp runs its
  candidates on the first ``C/K`` channels of its input only; the other channels bypass the
  ops (max-pooled 2×2 on a stride-2 edge), the two parts are concatenated and
  :func:`channel_shuffle`\\ d with ``K`` groups, so the next edges see other channels.
* **Edge normalisation** (``space.cell.edge-normalisation``): β holds one weight per input
  edge of each intermediate node; a node is Σ_edges softmax(β over its incoming edges) ·
  MixedOp(edge), and derivation ranks edges by softmax(α)·softmax(β).

Everything here is deterministic (no sampling) and made of reshapes, slices and pooling, so
it runs unchanged under ``torch.func.vmap`` (``tests/unit/spaces/test_partial_channels.py``
runs such a supernet through :class:`fednas.training.vectorised.VectorisedTrainer`). In
cohort mode the search members run one after another (:mod:`fednas.federated.cohort`), as
any supernet does, so both options need nothing from the cohort path.
"""

from __future__ import annotations

import torch
from torch import nn

from fednas.errors import ConfigError


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' ``channel_shuffle``: ``[N, g·m, H, W]`` → channel ``i·g + j`` takes channel
    ``j·m + i`` (ShuffleNet's shuffle; a permutation, :func:`channel_unshuffle` inverts it)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def channel_unshuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`channel_shuffle` with the same ``groups``."""
    n, c, h, w = x.shape
    return x.reshape(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PartialBypass(nn.Module):
    """How the channels a partial MixedOp leaves out reach its output: unchanged (stride 1)
    or max-pooled 2×2 (stride 2; ``ceil_mode`` so that odd sizes halve as the ops do)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pool is None else self.pool(x)


def check_partial_channels(k: int, cell_channels: list[int]) -> None:
    """Raise :class:`ConfigError` unless ``k`` ≥ 1 divides every cell's channel count."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"space.cell.partial-channels: must be an integer >= 1 (got {k!r})")
    for i, c in enumerate(cell_channels):
        if c % k:
            raise ConfigError(f"space.cell.partial-channels = {k} must divide the channel "
                              f"count of every cell, but cell {i} has {c} channels")


def node_offsets(nodes: int) -> list[tuple[int, int]]:
    """``(first edge, number of incoming edges)`` of each intermediate node."""
    return [(sum(2 + m for m in range(i)), 2 + i) for i in range(nodes)]


def node_softmax(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """Softmax of β over each node's incoming edges: ``(edges, 1)`` → ``(edges,)``."""
    flat = beta.reshape(-1)
    return torch.cat([flat[o: o + n].softmax(0) for o, n in node_offsets(nodes)])


def node_log_softmax(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """Log of :func:`node_softmax` (computed as a log-softmax)."""
    flat = beta.reshape(-1)
    return torch.cat([flat[o: o + n].log_softmax(0) for o, n in node_offsets(nodes)])
