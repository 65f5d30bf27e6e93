"""Local differential privacy on the client: Flower's ``LocalDpMod`` around training replies.

``LocalDpMod`` clips the client's update (reply − received arrays) to ``privacy.clip-norm``
and adds Gaussian noise of std ``C · sqrt(2 ln(1.25/δ)) / ε`` to every array before it
leaves the client. It scales every array in place, which integer buffers (BatchNorm's
``num_batches_tracked``) cannot take, and they carry no information worth releasing: the
integer arrays are dropped from the reply (and from the received record it compares against)
before the mod sees them; the server keeps its own values for them.

The mod reads the scenario at call time (``resolve(context)``), so the same ClientApp serves
``fednas run`` and ``flwr run``; with ``privacy.mode != "local"`` it passes messages through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.mod import LocalDpMod

from fednas.config.run_config import RunConfig


def _drop_integer_arrays(record: ArrayRecord) -> None:
    """Remove integer arrays from ``record`` in place."""
    for key in [k for k, a in record.items()
                if not np.issubdtype(np.dtype(a.dtype), np.floating)]:
        del record[key]


def make_local_dp_mod(resolve: Callable[[Context], RunConfig]):
    """A Flower mod applying ``LocalDpMod`` when the scenario asks for local DP."""

    def local_dp(msg: Message, context: Context, call_next) -> Message:
        cfg = resolve(context)
        p = cfg.privacy
        if p.mode != "local":
            return call_next(msg, context)
        inner = LocalDpMod(clipping_norm=p.clip_norm, sensitivity=p.clip_norm,
                           epsilon=p.local_epsilon, delta=p.delta)
        logging.getLogger("flwr").setLevel(logging.WARNING)  # its per-message INFO lines

        def app_then_floats_only(m: Message, c: Context) -> Message:
            reply = call_next(m, c)
            if reply.has_error():
                return reply
            for record in (*m.content.array_records.values(),
                           *reply.content.array_records.values()):
                _drop_integer_arrays(record)
            return reply

        return inner(msg, context, app_then_floats_only)

    return local_dp
