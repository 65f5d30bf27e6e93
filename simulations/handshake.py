"""The server's handshake: wait for every client node, then learn each node's partition id.

Flower's FedAvg samples round 1 from the nodes registered so far; waiting for all of them
first (and mapping node ids to partition ids) makes client sampling and aggregation order a
function of the seed alone.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fednas.errors import FedNASError


def wait_for_nodes(grid: Grid, want: int, wait: float) -> dict[int, int]:
    """Wait up to ``wait`` seconds for ``want`` nodes; return node id -> partition id."""
    deadline = time.time() + wait
    while len(list(grid.get_node_ids())) < want:
        if time.time() > deadline:
            raise FedNASError(f"only {len(list(grid.get_node_ids()))} of {want} client "
                              f"nodes registered within federation.node-wait seconds")
        time.sleep(0.2)
    nodes = sorted(grid.get_node_ids())
    if len(nodes) > want:
        raise FedNASError(f"{len(nodes)} client nodes registered but partition.num-clients "
                          f"= {want}; start {want} nodes (flwr run: num-supernodes={want})")
    messages = [Message(RecordDict({"config": ConfigRecord({"handshake": 1})}), dst_node_id=n,
                        message_type="query") for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=wait):
        if reply.has_error():
            raise FedNASError(f"node {reply.metadata.src_node_id} failed the handshake: "
                              f"{reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["metrics"]["partition-id"])
    if len(mapping) < want:
        raise FedNASError(f"only {len(mapping)} of {want} client nodes answered the handshake "
                          f"within federation.node-wait = {wait:g} s; many nodes on few cores "
                          "need longer (raise federation.node-wait)")
    if sorted(mapping.values()) != list(range(want)):
        raise FedNASError(f"client nodes reported partitions {sorted(mapping.values())}, "
                          f"expected 0..{want - 1}")
    return mapping
