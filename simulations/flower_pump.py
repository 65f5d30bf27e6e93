"""A linear-time message pump for Flower's simulation engine (flwr 1.41, in-memory LinkState).

Flower's ``vce_api.add_messages_to_queue`` hands the server's messages to the simulated
nodes: every 0.1 s it asks the LinkState, node by node, for that node's next undelivered
message, and ``InMemoryLinkState.get_message_ins`` answers by scanning (and validating) every
stored message. One sweep costs nodes × messages checks under the state's lock and the GIL:
with 1000 nodes the handshake's 1000 queries take ~10^6 checks per sweep, the server process
burns a core, and the simulated clients, starved of CPU, wait minutes for their messages.

:func:`install` swaps in a pump that makes one pass over the stored messages per sweep (one
validity check for all of them, the same as Flower's per message) and hands each node at most
one message per sweep, as Flower's does; the messages, their ``delivered_at`` stamp and the
queue they go to are unchanged. Other LinkState implementations keep Flower's own pump.
:func:`install` is idempotent and does nothing when Flower's code is not the expected one;
:func:`uninstall` puts Flower's pump back (``runtime.message-pump = "flower"``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from queue import Queue
from typing import Any

log = logging.getLogger(__name__)

_ORIGINAL: dict[str, Any] = {}


def undelivered(state: Any, nodes: Collection[int]) -> list[Any]:
    """The next undelivered message of each node in ``nodes`` (at most one per node),
    marked delivered, in store order; expired or invalid messages are dropped first."""
    from flwr.supercore.date import now

    wanted = set(nodes)
    out: list[Any] = []
    seen: set[int] = set()
    with state.lock:
        state._check_stored_messages(set(state.message_ins_store))
        for msg in list(state.message_ins_store.values()):
            node = msg.metadata.dst_node_id
            if node in wanted and node not in seen and msg.metadata.delivered_at == "":
                out.append(msg)
                seen.add(node)
        stamp = now().isoformat()
        for msg in out:
            msg.metadata.delivered_at = stamp
    return out


def _pump(state: Any, queue: Queue, nodes_mapping: dict[int, Any],
          f_stop: threading.Event) -> None:
    """``add_messages_to_queue`` with one store pass per sweep (in-memory LinkState)."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if not (isinstance(state, InMemoryLinkState) and hasattr(state, "message_ins_store")
            and hasattr(state, "lock")):
        _ORIGINAL["add_messages_to_queue"](state, queue, nodes_mapping, f_stop)
        return
    nodes = set(nodes_mapping)
    while not f_stop.is_set():
        for msg in undelivered(state, nodes):
            queue.put(msg)
        f_stop.wait(0.1)


def install() -> bool:
    """Use :func:`_pump` in Flower's simulation engine; True when it is in place."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if vce_api.add_messages_to_queue is _pump:
        return True
    if not (callable(getattr(vce_api, "add_messages_to_queue", None))
            and callable(getattr(InMemoryLinkState, "_check_stored_messages", None))):
        log.warning("flower_pump: Flower's simulation engine is not the expected one; "
                    "keeping its own message pump")
        return False
    _ORIGINAL["add_messages_to_queue"] = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = _pump
    return True


def uninstall() -> None:
    """Put Flower's own pump back (``runtime.message-pump = "flower"``)."""
    from flwr.server.superlink.fleet.vce import vce_api

    if "add_messages_to_queue" in _ORIGINAL:
        vce_api.add_messages_to_queue = _ORIGINAL["add_messages_to_queue"]
