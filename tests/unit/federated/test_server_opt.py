"""FedAvgM: the server step on the aggregated update, alone and inside the FedNAS strategy."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fednas.federated.server_opt import FedAvgM
from strategies.fednas import FedNAS


def test_defaults_return_the_average_bit_for_bit():
    old = {"w": torch.randn(5), "bn.running_mean": torch.zeros(5)}
    avg = {"w": torch.randn(5), "bn.running_mean": torch.ones(5)}
    out = FedAvgM().step(old, avg)
    assert all(out[k] is avg[k] for k in avg)


def test_momentum_matches_hand_computation_and_skips_bn_statistics():
    opt = FedAvgM(lr=0.5, momentum=0.9)
    old = {"w": torch.tensor([1.0, 2.0]), "bn.running_var": torch.tensor([1.0]),
           "bn.num_batches_tracked": torch.tensor(3)}
    avg = {"w": torch.tensor([3.0, 2.0]), "bn.running_var": torch.tensor([4.0]),
           "bn.num_batches_tracked": torch.tensor(3)}
    first = opt.step(old, avg)
    torch.testing.assert_close(first["w"], torch.tensor([2.0, 2.0]))  # 1 + 0.5 * 2
    torch.testing.assert_close(first["bn.running_var"], torch.tensor([4.0]))  # plain average
    assert first["bn.num_batches_tracked"].item() == 3
    second = opt.step(first, {"w": torch.tensor([2.0, 4.0]),
                              "bn.running_var": torch.tensor([4.0]),
                              "bn.num_batches_tracked": torch.tensor(3)})
    # v = 0.9 * [2, 0] + [0, 2] = [1.8, 2]; w = [2, 2] + 0.5 * v
    torch.testing.assert_close(second["w"], torch.tensor([2.9, 3.0]))


def test_state_round_trip_continues_identically():
    a = FedAvgM(lr=1.5, momentum=0.5)
    old, avg = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    a.step(old, avg)
    b = FedAvgM(lr=1.5, momentum=0.5)
    b.load_state_dict(a.state_dict())
    nxt = {"w": torch.full((3,), 2.0)}
    new_a, new_b = a.step(avg, nxt), b.step(avg, nxt)
    assert torch.equal(new_a["w"], new_b["w"])


@pytest.mark.parametrize("lr,momentum", [(0.0, 0.0), (1.0, 1.0), (1.0, -0.1)])
def test_invalid_values_are_rejected(lr, momentum):
    with pytest.raises(ValueError, match="server"):
        FedAvgM(lr, momentum)


def test_fednas_strategy_applies_the_server_step(task_identity):
    state = {"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}
    strategy = FedNAS(None, seed=0, server_lr=0.5, server_momentum=0.0, min_train_nodes=1)
    strategy.node_partitions = {7: 0, 8: 1}
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                             grid=None))
    replies = []
    for msg, value, n in zip(sorted(messages, key=lambda m: m.metadata.dst_node_id),
                             (1.0, 4.0), (30, 10), strict=True):
        pid = int(msg.content["config"]["partition-id"])
        out = {k: torch.full_like(v, value) for k, v in state.items()}
        replies.append(Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord(
            {"num-examples": n, "partition-id": pid, "diverged": 0})}), reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    # average = (30 * 1 + 10 * 4) / 40 = 1.75; server step 0.5 from 0
    torch.testing.assert_close(new["fc.weight"], torch.full((2, 2), 0.875))
    assert "server_opt" in strategy.get_state()
