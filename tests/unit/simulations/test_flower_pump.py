"""The linear-time message pump swapped into Flower's simulation engine."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from simulations import flower_pump


class FakeState:
    """The parts of Flower's InMemoryLinkState the pump touches; message 'x' has expired."""

    def __init__(self, messages: list[tuple[str, int]]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {
            mid: SimpleNamespace(id=mid, metadata=SimpleNamespace(dst_node_id=node,
                                                                  delivered_at=""))
            for mid, node in messages}
        self.checked: list[set[str]] = []

    def _check_stored_messages(self, ids: set[str]) -> None:
        self.checked.append(set(ids))
        self.message_ins_store.pop("x", None)


def test_one_message_per_node_per_sweep_in_store_order():
    state = FakeState([("a", 1), ("b", 2), ("c", 1), ("x", 3), ("d", 9), ("e", 2)])
    first = flower_pump.undelivered(state, {1, 2, 3})
    assert [m.id for m in first] == ["a", "b"]  # node 1 and 2 once each; 9 is not ours
    assert state.checked == [{"a", "b", "c", "x", "d", "e"}] and "x" not in state.message_ins_store
    assert all(m.metadata.delivered_at for m in first)
    assert [m.id for m in flower_pump.undelivered(state, {1, 2, 3})] == ["c", "e"]
    assert flower_pump.undelivered(state, {1, 2, 3}) == []
    assert not state.message_ins_store["d"].metadata.delivered_at


def test_install_is_idempotent_and_swaps_flowers_pump():
    from flwr.server.superlink.fleet.vce import vce_api

    saved = vce_api.add_messages_to_queue
    try:
        assert flower_pump.install() and flower_pump.install()
        assert vce_api.add_messages_to_queue is flower_pump._pump
        original = flower_pump._ORIGINAL["add_messages_to_queue"]
        assert original is not flower_pump._pump
        flower_pump.uninstall()
        assert vce_api.add_messages_to_queue is original
    finally:
        vce_api.add_messages_to_queue = saved
