"""FedNAS aggregation and shards as pure functions of replies (no simulation needed)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fednas.federated.aggregation import Contribution, masked_weighted_mean
from fednas.federated.shards import (
    decode_masks,
    encode_masks,
    full_masks,
    gumbel_top_s,
    slice_state,
)
from fednas.spaces.registry import build_space
from strategies.fednas import FedNAS


def test_masked_mean_matches_hand_computation():
    state = {"w": torch.zeros(4), "a": torch.zeros(2, 3), "n": torch.tensor(5)}
    a_mask = torch.tensor([[True, True, False], [False, True, True]])
    contributions = [
        Contribution({"w": torch.ones(2), "a": torch.full((2, 3), 9.0)},
                     {"w": (slice(0, 2),), "a": None}, 1.0, {"a": a_mask}),
        Contribution({"w": torch.full((4,), 2.0), "a": torch.full((2, 3), 1.0)},
                     {"w": None, "a": None}, 3.0, {"a": torch.ones(2, 3, dtype=torch.bool)}),
    ]
    out = masked_weighted_mean(state, contributions)
    torch.testing.assert_close(out["w"], torch.tensor([7 / 4, 7 / 4, 2.0, 2.0]))
    expected_a = torch.tensor([[12 / 4, 12 / 4, 1.0], [1.0, 12 / 4, 12 / 4]])
    torch.testing.assert_close(out["a"], expected_a)
    assert out["n"].item() == 5  # integer buffers keep the global value


def test_untrained_entries_keep_their_global_value():
    state = {"w": torch.arange(6.0), "v": torch.full((2,), 7.0)}
    out = masked_weighted_mean(state, [Contribution({"w": torch.zeros(2)},
                                                    {"w": (slice(2, 4),)}, 5.0)])
    torch.testing.assert_close(out["w"], torch.tensor([0.0, 1, 0, 0, 4, 5]))
    torch.testing.assert_close(out["v"], state["v"])


def test_full_shards_equal_the_fednas_formula():
    torch.manual_seed(0)
    space = build_space("cell", input_shape=(1, 8, 8), num_classes=3, channels=4, layers=2,
                        nodes=2, ops=("skip_connect", "conv_3x3"))
    state = space.state_dict()
    masks = full_masks(space.arch_parameters())
    slices = space.shard_slices(masks)
    slices.update(alpha_normal=None, alpha_reduce=None)
    assert set(slices) == set(state)
    clients = [({k: v + torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
                 for k, v in state.items()}, n) for n in (10.0, 30.0, 60.0)]
    out = masked_weighted_mean(state, [Contribution(s, slices, n) for s, n in clients])
    for key, value in state.items():
        if value.is_floating_point():
            expected = sum(n * s[key].double() for s, n in clients) / 100.0
            torch.testing.assert_close(out[key], expected.to(value.dtype), rtol=1e-6, atol=1e-6)


def test_gumbel_top_s_sizes_argmax_and_distribution():
    gen = torch.Generator().manual_seed(0)
    alpha = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    for _ in range(20):
        mask = gumbel_top_s(alpha, 2, gen, include_argmax=True)
        assert mask.sum(-1).tolist() == [2, 2]
        assert mask[0, 0] and mask[1, 3]
    counts = torch.zeros(4)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    for _ in range(4000):
        counts += gumbel_top_s(probs.log(), 1, gen).float()
    torch.testing.assert_close(counts / 4000, probs, atol=0.03, rtol=0)
    assert gumbel_top_s(alpha, 10, gen).all()  # size >= candidates: the full row


def test_mask_encoding_round_trips():
    masks = [torch.rand(3, 4) > 0.5, torch.rand(5) > 0.5]
    back = decode_masks(encode_masks(masks), [m.shape for m in masks])
    assert all(torch.equal(a, b) for a, b in zip(masks, back, strict=True))
    with pytest.raises(ValueError, match="expects 17"):
        decode_masks([1, 0], [m.shape for m in masks])


def test_cell_shard_trains_and_ships_only_its_ops():
    torch.manual_seed(0)
    ops = ("skip_connect", "max_pool_3x3", "conv_3x3", "sep_conv_3x3")
    space = build_space("cell", input_shape=(1, 8, 8), num_classes=3, channels=4, layers=2,
                        nodes=2, ops=ops)
    masks = [gumbel_top_s(a, 2, torch.Generator().manual_seed(1)) for a in
             space.arch_parameters()]
    slices = space.shard_slices(masks)
    full = space.shard_slices(full_masks(space.arch_parameters()))
    assert set(slices) < set(full)
    space.set_shard(masks)
    torch.nn.functional.cross_entropy(space(torch.randn(4, 1, 8, 8)),
                                      torch.tensor([0, 1, 2, 0])).backward()
    for name, p in space.named_parameters():
        if ".ops." in name:
            assert (p.grad is not None) == (name in slices), name
    sent = sum(v.numel() for v in slice_state(space.state_dict(), slices).values())
    assert sent < sum(v.numel() for v in space.state_dict().values())


def test_width_shard_slices_the_inner_channels():
    torch.manual_seed(0)
    space = build_space("width", input_shape=(1, 8, 8), num_classes=3, depth=8,
                        base_channels=8, width_choices=(0.25, 0.5, 1.0))
    masks = [torch.tensor([True, True, False])] * space.num_prunable
    state = space.state_dict()
    regions = slice_state(state, space.shard_slices(masks))
    assert regions["layer1.0.conv1.weight"].shape[0] == 4  # 0.5 of 8 channels
    assert regions["layer1.0.conv2.weight"].shape[1] == 4
    assert regions["fc.weight"].shape == state["fc.weight"].shape


# ---------------------------------------------------------------- strategy on mock replies
@pytest.fixture(autouse=True)
def _identity(task_identity):
    """Build Flower messages outside a ServerApp."""


def make_strategy(min_train_nodes: int = 1):
    torch.manual_seed(0)
    space = build_space("cell", input_shape=(1, 8, 8), num_classes=3, channels=4, layers=2,
                        nodes=2, ops=("skip_connect", "max_pool_3x3", "conv_3x3"))
    strategy = FedNAS(space, shard_size=2, seed=0, min_train_nodes=min_train_nodes)
    strategy.node_partitions = {1001: 0, 1002: 1, 1003: 2}
    return strategy, space.state_dict()


def reply(msg: Message, delta: float, n: int, nan: bool = False) -> Message:
    regions = msg.content["arrays"].to_torch_state_dict()
    out = {k: (v + delta if v.is_floating_point() else v) for k, v in regions.items()}
    if nan:
        out[next(iter(out))] = out[next(iter(out))] * float("nan")
    pid = int(msg.content["config"]["partition-id"])
    metrics = MetricRecord({"num-examples": n, "partition-id": pid, "diverged": 0,
                            "train_loss": 1.0 + pid})
    return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}), reply_to=msg)


def test_strategy_sends_each_client_its_own_shard():
    strategy, state = make_strategy()
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                             grid=None))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1001, 1002, 1003]
    shards = [list(m.content["config"]["shard"]) for m in messages]
    assert len({tuple(s) for s in shards}) > 1  # clients get different shards
    for m in messages:
        keys = set(m.content["arrays"].to_torch_state_dict())
        assert {"alpha_normal", "alpha_reduce", "stem.0.weight"} <= keys < set(state)
    assert 0 < strategy.round_stats["bytes_down"]


def test_strategy_aggregates_and_drops_failed_clients():
    strategy, state = make_strategy()
    messages = sorted(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                               grid=None),
                      key=lambda m: int(m.content["config"]["partition-id"]))
    replies = [reply(messages[0], 1.0, 10),
               Message(Error(code=0, reason="client raised"), reply_to=messages[1]),
               reply(messages[2], 5.0, 30, nan=True)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    good = messages[0].content["arrays"].to_torch_state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if key in good and not key.startswith("alpha"):
            torch.testing.assert_close(new[key], value + 1.0)  # the only good client's update
        elif not key.startswith("alpha"):
            torch.testing.assert_close(new[key], value)  # nobody trained it
    stats = strategy.round_stats
    assert (stats["clients_ok"], stats["client_errors"], stats["clients_diverged"]) == (1, 1, 1)
    assert metrics["train_loss"] == pytest.approx(1.0)


def test_round_fails_below_min_clients_and_keeps_state():
    strategy, state = make_strategy(min_train_nodes=2)
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                             grid=None))
    arrays, metrics = strategy.aggregate_train(1, [reply(messages[0], 1.0, 10)])
    assert arrays is None and metrics is None
    assert strategy.round_stats["round_failed"] == 1
    assert strategy.round_stats["client_timeouts"] == 2


def test_sampling_and_shards_are_seeded():
    a, state = make_strategy()
    b, _ = make_strategy()
    for s in (a, b):
        s.fraction_train = 0.5
    ma = list(a.configure_train(1, ArrayRecord(state), ConfigRecord({}), grid=None))
    mb = list(b.configure_train(1, ArrayRecord(state), ConfigRecord({}), grid=None))
    assert [m.metadata.dst_node_id for m in ma] == [m.metadata.dst_node_id for m in mb]
    assert [list(m.content["config"]["shard"]) for m in ma] == \
        [list(m.content["config"]["shard"]) for m in mb]
    saved = a.get_state()
    first = list(a.configure_train(2, ArrayRecord(state), ConfigRecord({}), grid=None))
    a.set_state(saved)
    again = list(a.configure_train(2, ArrayRecord(state), ConfigRecord({}), grid=None))
    assert [list(m.content["config"]["shard"]) for m in first] == \
        [list(m.content["config"]["shard"]) for m in again]
