"""Secure aggregation over Flower messages: the clients' four stages.

The server side is :class:`strategies.secagg.SecAggFedNAS`; the cryptography is
:mod:`fednas.privacy.secagg`. One round, with the message type of each stage:

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
from typing import Any

import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fednas.federated.codec import to_state_dict
from fednas.privacy.secagg import Quantizer, SecAggClient, SecAggError
from fednas.privacy.secagg_wire import (
    CLEAR_KEYS,
    RECORD,
    Trainer,
    encode_update,
    metric_names,
    pack_share,
)


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
