"""Secure aggregation over Flower messages: the wire format and the clients' four stages.

The server side is :class:`strategies.secagg.SecAggFedNAS`; the cryptography is
:mod:`fednas.secagg`. One round, with the message type of each stage:

1. ``query.secagg_advertise``: a client makes fresh key pairs and returns its public keys.
2. ``query.secagg_share``: it gets the roster (every advertised client's public keys, the
   threshold t, the fixed-point scale) and returns its Shamir shares, each encrypted for
   one peer; the server only routes ciphertexts.
3. ``train.secagg``: it gets the shares addressed to it plus the usual training message
   (global arrays and config), trains, and returns only ``y = mask(v)``, where
   ``v = [w·clip(Δ), w, w·clip(m)]``: Δ the update (trained − received, every float tensor
   in key order), w = n / N its example count n over the public normaliser N (the dataset's
   training-set size), m its training metrics. Both the sample weight and the metrics are
   therefore masked: the server learns Σw, ΣwΔ and Σwm, hence the weighted mean, only.
   In the clear: the partition id, a diverged flag and where it ran (worker pid, GPU).
   A client whose training diverged sends no y and is unmasked as a dropout.
4. ``query.secagg_unmask``: it gets the survivors and the dropped clients and returns its
   shares of the survivors' self-mask seeds and of the dropped clients' mask keys.

Between stages a client's secrets live in ``Context.state`` (``ConfigRecord "secagg"``: the
session id and :meth:`SecAggClient.to_bytes`), which Flower keeps per node during a run;
the last stage deletes them. Stage handlers are pure functions of (message content, state),
so tests can drive them without a simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fednas.arrays import to_state_dict
from fednas.secagg import Quantizer, SecAggClient, SecAggError, Share

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


# -- wire format shared by server and clients ------------------------------------------------
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


# -- the client's stages ---------------------------------------------------------------------
def _load(state: RecordDict, conf: ConfigRecord) -> SecAggClient:
    saved = state.config_records.get(RECORD)
    if saved is None or saved["session"] != conf["session"]:
        raise SecAggError(f"no secure-aggregation state for session {conf['session']} on this "
                          "node (a stage was skipped or the node restarted)")
    return SecAggClient.from_bytes(bytes(saved["client"]))


def _save(state: RecordDict, conf: ConfigRecord, client: SecAggClient) -> None:
    state[RECORD] = ConfigRecord({"session": conf["session"], "client": client.to_bytes()})


def advertise(content: RecordDict, state: RecordDict) -> RecordDict:
    """Stage 1: fresh keys (OS randomness); reply the two public keys."""
    conf = content.config_records[RECORD]
    client = SecAggClient(int(conf["partition-id"]))
    _save(state, conf, client)
    c_pk, s_pk = client.public_keys
    return RecordDict({RECORD: ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})})


def share_keys(content: RecordDict, state: RecordDict) -> RecordDict:
    """Stage 2: encrypted shares of my secrets for every client of the roster."""
    conf = content.config_records[RECORD]
    client = _load(state, conf)
    roster = {int(i): (bytes(c), bytes(s))
              for i, c, s in zip(conf["ids"], conf["c-pks"], conf["s-pks"], strict=True)}
    client.quantizer = Quantizer(2.0 ** int(conf["scale-log2"]), float(conf["clip"]), 64)
    outgoing = client.share_keys(roster, int(conf["threshold"]))
    _save(state, conf, client)
    return RecordDict({RECORD: ConfigRecord({"to": list(outgoing),
                                             "cts": list(outgoing.values())})})


def masked_input(content: RecordDict, state: RecordDict, train: Trainer,
                 example_norm: float) -> RecordDict:
    """Stage 3: take my shares, train, reply the masked update (or abstain if diverged)."""
    conf = content.config_records[RECORD]
    client = _load(state, conf)
    client.receive_shares({int(i): bytes(ct)
                           for i, ct in zip(conf["from"], conf["cts"], strict=True)})
    _save(state, conf, client)
    regions = to_state_dict(content.array_records["arrays"])
    trained, metrics = train(regions, dict(content.config_records["config"]))
    clear = {k: metrics[k] for k in CLEAR_KEYS if k in metrics}
    finite = all(math.isfinite(float(metrics[k])) for k in metric_names(metrics))
    finite = finite and all(torch.isfinite(t).all() for t in trained.values()
                            if t.is_floating_point())
    if metrics.get("diverged", 0) or not trained or not finite:
        return RecordDict({"metrics": MetricRecord({**clear, "diverged": 1})})
    n = float(metrics["num-examples"])
    if not 0 < n <= example_norm:
        raise SecAggError(f"num-examples {n} outside (0, {example_norm}]: the sample weight "
                          "n / N would leave the masked range")
    vector = encode_update(regions, trained, metrics, n / example_norm,
                           client.quantizer.clip_range)
    masked = client.mask(vector).astype("<u8").tobytes()
    return RecordDict({RECORD: ConfigRecord({"masked": masked,
                                             "metric-names": metric_names(metrics)}),
                       "metrics": MetricRecord({**clear, "diverged": 0})})


def unmask(content: RecordDict, state: RecordDict) -> RecordDict:
    """Stage 4: my shares of the survivors' b and the dropped clients' s; forget the round."""
    conf = content.config_records[RECORD]
    client = _load(state, conf)
    del state[RECORD]
    shares = client.reveal([int(i) for i in conf["survivors"]],
                           [int(i) for i in conf["dropped"]])
    out: dict[str, Any] = {}
    for kind in ("b", "s"):
        out[f"{kind}-ids"] = list(shares[kind])
        out[f"{kind}-shares"] = [pack_share(s) for s in shares[kind].values()]
    return RecordDict({RECORD: ConfigRecord(out)})
