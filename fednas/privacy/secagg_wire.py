"""The wire format of secure aggregation over Flower messages, shared by server and clients.

Message types and record names of the four stages, the fixed-point quantizer for a round, the
vector a client masks (``[w·clip(Δ), w, w·clip(m)]``) and how the server splits the decoded
sum, and the byte packing of Shamir shares. The stages themselves are described in
:mod:`simulations.secagg_client` (clients) and :class:`strategies.secagg.SecAggFedNAS`
(server); the cryptography is :mod:`fednas.privacy.secagg`. No Flower types here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fednas.privacy.secagg import Quantizer, Share

ADVERTISE = "query.secagg_advertise"
SHARE = "query.secagg_share"
MASKED = "train.secagg"
UNMASK = "query.secagg_unmask"
RECORD = "secagg"
#: Reply metrics sent in the clear; every other numeric metric is masked (or not sent).
CLEAR_KEYS = ("partition-id", "diverged", "pid", "gpu-id", "cuda")
#: Metrics never sent: the example count travels masked as w; these would reveal it.
HIDDEN_KEYS = ("num-examples", "num-val", "steps")

Layout = list[tuple[str, tuple[int, ...]]]
Trainer = Callable[[dict[str, torch.Tensor], dict[str, Any]],
                   tuple[dict[str, torch.Tensor], dict[str, float]]]

def quantizer_for(num_clients: int, clip: float) -> Quantizer:
    """64-bit fixed point for ``num_clients`` vectors with entries in ±``clip``.

    The scale is the largest power of two that keeps the sum in 63 bits and every encoded
    entry below 2^52 (so that ``v · scale`` is exact in float64): the decoded sum is then off
    by at most ``num_clients / (2 · scale)`` per entry.
    """
    k = math.floor(min(math.log2((2**63 - 1) / (num_clients * clip)), math.log2(2**52 / clip)))
    while Quantizer(2.0**k, clip, 64).max_clients() < num_clients:
        k -= 1
    return Quantizer(2.0**k, clip, 64)


def layout(regions: Mapping[str, torch.Tensor]) -> Layout:
    """(key, shape) of every float tensor, in key order: the update part of the vector."""
    return [(k, tuple(v.shape)) for k, v in sorted(regions.items()) if v.is_floating_point()]


def metric_names(metrics: Mapping[str, Any]) -> list[str]:
    """The numeric metrics that travel masked, in key order."""
    skip = (*CLEAR_KEYS, *HIDDEN_KEYS)
    return sorted(k for k, v in metrics.items()
                  if k not in skip and isinstance(v, int | float) and not isinstance(v, bool))


def encode_update(regions: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor],
                  metrics: Mapping[str, float], weight: float, clip: float) -> np.ndarray:
    """``[w·clip(Δ), w, w·clip(m)]`` in float64 (see the module docstring)."""
    parts = [np.clip((trained[k].double() - regions[k].double()).numpy().ravel(), -clip, clip)
             for k, _ in layout(regions)]
    values = np.clip([float(metrics[k]) for k in metric_names(metrics)], -clip, clip)
    return np.concatenate([*parts, [1.0], values]) * weight


def decode_sum(total: np.ndarray, lay: Layout, names: list[str]
               ) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
    """Split a decoded sum into (ΣwΔ per key, Σw, Σwm per metric name)."""
    sums, at = {}, 0
    for key, shape in lay:
        size = math.prod(shape)
        sums[key] = total[at:at + size].reshape(shape)
        at += size
    return sums, float(total[at]), dict(zip(names, total[at + 1:].tolist(), strict=True))


def pack_share(share: Share) -> bytes:
    return share[0].to_bytes(4, "big") + share[1].to_bytes(66, "big")


def unpack_share(blob: bytes) -> Share:
    return int.from_bytes(blob[:4], "big"), int.from_bytes(blob[4:], "big")
