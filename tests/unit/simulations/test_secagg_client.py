"""Secure aggregation inside the Flower message flow: the server's four-stage round against
in-process clients (every record crosses the protobuf wire format), what the server holds,
dropouts, failure below the threshold, config validation, and one federated run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import federated_sets, in_process_run
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.privacy import secagg_wire as wire
from fednas.privacy.secagg import SecAggClient
from simulations import secagg_client as flow
from strategies.fednas import FedNAS
from strategies.secagg import SecAggFedNAS

NORM = 1000.0  # the public example normaliser N
SIZES = (30, 50, 70, 90, 110)
HANDLERS = {wire.ADVERTISE: flow.advertise, wire.SHARE: flow.share_keys,
            wire.UNMASK: flow.unmask}


@pytest.fixture(autouse=True)
def _identity(task_identity):
    """Build Flower messages outside a ServerApp."""


def global_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(6, 10, generator=gen),
            "fc.bias": torch.randn(6, generator=gen), "bn.running_var": torch.ones(6),
            "bn.num_batches_tracked": torch.tensor(3)}


def delta(pid: int, key: str, shape: torch.Size) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + pid)
    return 0.1 * (pid + 1) * torch.randn(*shape, generator=gen)


def train(regions: dict[str, torch.Tensor], conf: dict) -> tuple[dict, dict]:
    """A client's local training: a seeded update per partition; NaN loss for 'diverge'."""
    pid = int(conf["partition-id"])
    out = {k: v + delta(pid, k, v.shape) if v.is_floating_point() else v + 1
           for k, v in regions.items()}
    loss = float("nan") if pid in conf.get("diverge", []) else 1.0 + pid
    return out, {"num-examples": SIZES[pid], "partition-id": pid, "diverged": 0,
                 "train_loss": loss, "steps": 3, "num-val": 5, "pid": 4321, "cuda": 0}


class LoopbackGrid:
    """Delivers each message to its node's stage handler (one ``Context.state`` per node);
    partitions in ``silent[route]`` never answer that stage. Keeps all the server received."""

    def __init__(self, silent: dict[str, set[int]] | None = None) -> None:
        self.silent = silent or {}
        self.states: dict[int, RecordDict] = {}
        self.received: list[Message] = []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            route, node = msg.metadata.message_type, msg.metadata.dst_node_id
            if node - 100 in self.silent.get(route, set()):
                continue
            content = recorddict_from_proto(recorddict_to_proto(msg.content))
            state = self.states.setdefault(node, RecordDict())
            if route == wire.MASKED:
                out = flow.masked_input(content, state, train, NORM)
            else:
                out = HANDLERS[route](content, state)
            reply = Message(recorddict_from_proto(recorddict_to_proto(out)), reply_to=msg)
            self.received.append(reply)
            replies.append(reply)
        return replies


def strategies(n: int, threshold: float = 0.66, **kw) -> tuple[SecAggFedNAS, FedNAS]:
    secure = SecAggFedNAS(None, seed=0, secagg_threshold=threshold, secagg_clip=64.0, **kw)
    plain = FedNAS(None, seed=0, **kw)
    for s in (secure, plain):
        s.node_partitions = {100 + i: i for i in range(n)}
    return secure, plain


def plain_round(strategy: FedNAS, state, config, pids) -> dict[str, torch.Tensor]:
    messages = strategy.configure_train(1, ArrayRecord(state), config, grid=None)
    replies = []
    for msg in messages:
        conf = dict(msg.content["config"])
        if int(conf["partition-id"]) in pids:
            out, metrics = train(msg.content["arrays"].to_torch_state_dict(), conf)
            replies.append(Message(RecordDict({"arrays": ArrayRecord(out),
                                               "metrics": MetricRecord(metrics)}), reply_to=msg))
    arrays, metrics = strategy.aggregate_train(1, replies)
    return arrays.to_torch_state_dict(), metrics


def assert_close_within(secure, plain, bound: float) -> None:
    for key, value in plain.items():
        if value.is_floating_point():  # float32 rounding of the two paths + fixed point
            tol = bound + 2 * torch.finfo(value.dtype).eps * value.abs().max().item()
            assert (secure[key] - value).abs().max().item() <= tol, key
        else:
            assert torch.equal(secure[key], value), key  # integer buffers: the server's


def test_server_holds_only_masked_vectors_and_decodes_fedavg_exactly():
    state, config = global_state(), ConfigRecord({"lr": 0.1})
    secure, plain = strategies(4, min_train_nodes=2)
    grid = LoopbackGrid()
    arrays, metrics = secure.train_round(1, ArrayRecord(state), config, grid, timeout=5.0)
    expected, plain_metrics = plain_round(plain, state, config, set(range(4)))
    stats = secure.round_stats
    bound = stats["secagg_error_bound"]
    assert 0 < bound < 1e-9
    assert_close_within(arrays.to_torch_state_dict(), expected, bound)
    assert metrics["train_loss"] == pytest.approx(plain_metrics["train_loss"], abs=1e-9)
    assert set(metrics) == {"train_loss"}  # the count and steps never reach the server
    assert (stats["clients_ok"], stats["secagg_survivors"], stats["secagg_dropped"],
            stats["secagg_threshold"], stats["round_failed"]) == (4, 4, 0, 3, 0)
    assert stats["secagg_wall_s"] > 0 and stats["bytes_up"] > 0 and stats["bytes_down"] > 0
    assert [p["partition"] for p in secure.placements] == [0, 1, 2, 3]

    # What the server received: no arrays, only clear bookkeeping metrics, masked vectors.
    quantizer = wire.quantizer_for(4, 64.0)
    regions = {k: v for k, v in state.items()}
    masked = [r for r in grid.received if r.metadata.message_type == wire.MASKED]
    assert len(masked) == 4 and len(grid.received) == 16
    for reply in grid.received:
        assert not reply.content.array_records
        for record in reply.content.metric_records.values():
            assert set(record) <= set(wire.CLEAR_KEYS)
    for reply in masked:
        pid = reply.metadata.src_node_id - 100
        y = np.frombuffer(bytes(reply.content["secagg"]["masked"]), dtype="<u8")
        trained, m = train(regions, {"partition-id": pid})
        truth = wire.encode_update(regions, trained, m, SIZES[pid] / NORM, 64.0)
        assert y.size == truth.size == 6 * 10 + 6 + 6 + 1 + 1
        off = np.abs(quantizer.decode(y) - truth)
        assert (off <= quantizer.error_bound(1)).sum() == 0  # no entry readable
        unmasked_delta = quantizer.decode(y)[:72] / (SIZES[pid] / NORM)
        assert np.abs(unmasked_delta - truth[:72] / (SIZES[pid] / NORM)).min() > 1e-3
        assert abs(y.astype(np.float64).mean() / 2.0**64 - 0.5) < 0.2  # uniform: 6 sigma
    assert not grid.states[100].config_records  # clients forget the round's secrets


def test_dropouts_after_sharing_and_after_masking_still_give_the_survivors_mean():
    state, config = global_state(), ConfigRecord({"lr": 0.1})
    secure, plain = strategies(5, threshold=0.55, min_train_nodes=2)
    grid = LoopbackGrid({wire.SHARE: {4}, wire.MASKED: {1}})  # U2 without 4, U3 without 1
    arrays, _ = secure.train_round(1, ArrayRecord(state), config, grid, timeout=5.0)
    expected, _ = plain_round(plain, state, config, {0, 2, 3})
    assert_close_within(arrays.to_torch_state_dict(), expected,
                        secure.round_stats["secagg_error_bound"])
    stats = secure.round_stats
    assert (stats["secagg_survivors"], stats["secagg_dropped"], stats["client_timeouts"],
            stats["secagg_threshold"]) == (3, 1, 2, 3)


def test_fewer_survivors_than_the_threshold_fail_the_round():
    state = global_state()
    secure, _ = strategies(3, min_train_nodes=1)
    config = ConfigRecord({"lr": 0.1, "diverge": [0]})  # partition 0 reports a NaN loss
    grid = LoopbackGrid({wire.MASKED: {1}})
    arrays, metrics = secure.train_round(1, ArrayRecord(state), config, grid)
    assert arrays is None and metrics is None
    stats = secure.round_stats
    assert (stats["round_failed"], stats["clients_diverged"], stats["secagg_survivors"],
            stats["clients_ok"]) == (1, 1, 1, 1)
    assert not any(r.metadata.message_type == wire.UNMASK for r in grid.received)
    with pytest.raises(TypeError, match="train_round"):
        secure.aggregate_train(1, [])


def test_client_state_round_trips_through_bytes():
    rng = np.random.default_rng(0)
    clients = [SecAggClient(i, rng=rng) for i in range(3)]
    roster = {c.cid: c.public_keys for c in clients}
    out = {c.cid: c.share_keys(roster, 2) for c in clients}
    clients = [SecAggClient.from_bytes(c.to_bytes()) for c in clients]
    for c in clients:
        c.receive_shares({s: cts[c.cid] for s, cts in out.items() if s != c.cid})
    again = SecAggClient.from_bytes(clients[0].to_bytes())
    x = np.linspace(-1, 1, 7)
    assert np.array_equal(again.mask(x), clients[0].mask(x))
    assert again.reveal([0, 1, 2], []) == clients[0].reveal([0, 1, 2], [])


def test_quantizer_for_keeps_sums_exact():
    for n, clip in ((2, 1.0), (100, 1024.0), (10_000, 0.5)):
        q = wire.quantizer_for(n, clip)
        assert q.max_clients() >= n and clip * q.scale <= 2**52
        assert q.scale == 2.0 ** round(math.log2(q.scale))


@pytest.mark.parametrize("sets, match", [
    (["mode=centralised"], 'mode = "federated"'),
    (["federation.shard-size=2"], "full shards"),
    (["fedex.enabled=true"], "fedex.enabled"),
    (["privacy.mode=central"], "privacy.mode = 'central'"),
    (["privacy.mode=local"], "local DP"),
    (["partition.num-clients=1", "federation.min-fit-clients=1"], ">= 2 clients"),
    (["privacy.secagg-threshold=0.5"], "privacy.secagg-threshold"),
    (["compression.feddf=true"], "compression.feddf"),
])
def test_config_validation(sets, match):
    base = ["mode=federated", "privacy.secure-aggregation=true"]
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, base + sets)
    assert "privacy.secure-aggregation" in str(err.value) or "secagg" in str(err.value)
    cfg = load_config(None, base)
    assert cfg.privacy.secagg_threshold == 0.66 and cfg.privacy.secagg_clip == 1024.0


def test_pipeline_with_secure_aggregation_matches_plain(tiny_overrides, tmp_path, no_plots):
    """The real round loop and ClientApp routes (search and fixed-model training), in process."""
    sets = federated_sets(tiny_overrides) + ["runtime.threads=1"]
    plain, plain_summary, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "p"}"'])
    masked, summary, grid = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "s"}"',
                                                   "privacy.secure-aggregation=true"])
    # retrain.protocol equal-total: the fresh baseline trains the search's round + 2
    assert [m["phase"] for m in masked] == ["search", "baseline", "baseline", "baseline"]
    for p, m in zip(plain, masked, strict=True):
        assert (m["secagg_survivors"], m["clients_ok"], m["round_failed"]) == (3, 3, 0)
        assert 0 < m["secagg_error_bound"] < 1e-9 and m["secagg_wall_s"] > 0
        assert m["train_loss"] == pytest.approx(p["train_loss"], rel=1e-6)
        assert m["test_loss"] == pytest.approx(p["test_loss"], rel=1e-4)
    assert all(not c.state.config_records for c in grid.contexts.values())
    torch_plain = torch.load(plain_summary["run_dir"] + "/baseline.pt")["state_dict"]
    torch_masked = torch.load(summary["run_dir"] + "/baseline.pt")["state_dict"]
    for key, value in torch_plain.items():
        torch.testing.assert_close(torch_masked[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ray_simulation_with_secure_aggregation(tiny_overrides, tmp_path, no_plots):
    """Flower's simulation engine keeps each node's Context.state between the stages."""
    from fednas.reporting.rundir import read_metrics
    from simulations.simulation import run_federated

    sets = federated_sets(tiny_overrides) + ['phases=["baseline"]', "federation.node-wait=300"]
    run_dir, summary = run_federated(load_config(None, sets + [
        "privacy.secure-aggregation=true", f'runtime.out-dir="{tmp_path / "ray"}"']))
    plain, _, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "plain"}"'])
    masked = read_metrics(run_dir)
    assert [m["phase"] for m in masked] == ["baseline", "baseline"]
    for p, m in zip(plain, masked, strict=True):
        assert (m["secagg_survivors"], m["client_errors"], m["round_failed"]) == (3, 0, 0)
        assert m["test_loss"] == pytest.approx(p["test_loss"], rel=1e-3)
    assert summary["models"]["baseline"]["test_acc"] > 0
