"""Federated Reptile over Flower: the strategy's server step on mock replies, the round loop
with pause and resume over in-process clients, and a tiny Ray simulation; both end with the
in-process path's models, bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.meta.setup import meta_setup
from strategies.reptile import META_ROUTE, FedReptile

NODES = {1001: 0, 1002: 1, 1003: 2}


def meta_overrides(tmp_path) -> list[str]:
    """Conv-4 (width 4) on sklearn digits: 6 meta-train classes, 2 meta clients of 3 each."""
    return ["mode=federated", "partition.num-clients=2", 'phases=["meta"]',
            'meta.dataset="digits"', 'meta.split-by="class"', "meta.split=[0.6, 0.0, 0.4]",
            f'meta.root="{tmp_path / "cache"}"', 'meta.models=["conv4"]', "meta.conv4-hidden=4",
            "meta.ways=3", "meta.shots=[1, 2]", "meta.queries=2", "meta.meta-batch=2",
            "meta.iterations=2", "meta.local-steps=2", "meta.inner-lr=0.05",
            "meta.server-lr=0.5", "meta.eval-tasks=3", "meta.eval-inner-steps=1",
            "meta.clients=2", "federation.min-fit-clients=2", "federation.node-wait=300"]


def flower_overrides(tmp_path) -> list[str]:
    """:func:`meta_overrides` plus a tiny federation dataset (digits) and a tmp run dir."""
    return [*meta_overrides(tmp_path), "data.dataset=digits", "data.max-train=200",
            f'data.root="{tmp_path / "cache"}"', f'runtime.out-dir="{tmp_path / "runs"}"',
            "runtime.progress=false"]


def reply(msg: Message, delta: float, loss: float = 1.0, drop: str = "") -> Message:
    state = msg.content["arrays"].to_torch_state_dict()
    update = {k: torch.full_like(state[k], delta) for k in ("w", "b") if k != drop}
    pid = int(msg.content["config"]["partition-id"])
    metrics = MetricRecord({"meta-loss": loss, "num-examples": 2, "partition-id": pid})
    return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": metrics}),
                   reply_to=msg)


def configured(strategy: FedReptile, state: dict[str, torch.Tensor], rnd: int = 1
               ) -> list[Message]:
    return list(strategy.configure_train(rnd, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                         grid=None))


def test_strategy_steps_by_the_plain_mean_displacement(task_identity):
    from fednas.meta.fedmeta import reptile_step

    state = {"w": torch.zeros(2, 2), "b": torch.ones(2), "bn.running_mean": torch.ones(3)}
    strategy = FedReptile(["w", "b"], server_lr=0.5, min_train_nodes=2, node_partitions=NODES)
    messages = configured(strategy, state, rnd=3)
    assert [m.metadata.dst_node_id for m in messages] == [1001, 1002, 1003]
    assert {m.metadata.message_type for m in messages} == {META_ROUTE}
    conf = messages[2].content["config"]
    assert (conf["partition-id"], conf["server-round"], conf["lr"]) == (2, 3, 0.1)
    assert set(messages[0].content["arrays"].to_torch_state_dict()) == set(state)
    replies = [reply(messages[2], 3.0, loss=3.0), reply(messages[0], 1.0, loss=1.0),
               Message(Error(code=0, reason="client raised"), reply_to=messages[1])]
    arrays, metrics = strategy.aggregate_train(3, replies)
    out = arrays.to_torch_state_dict()
    torch.testing.assert_close(out["w"], torch.full((2, 2), 1.0))  # 0 + 0.5 · mean(1, 3)
    torch.testing.assert_close(out["b"], torch.full((2,), 2.0))
    torch.testing.assert_close(out["bn.running_mean"], state["bn.running_mean"])  # kept
    assert metrics["meta-loss"] == 2.0
    s = strategy.round_stats
    assert (s["clients_sampled"], s["clients_ok"], s["client_errors"], s["round_failed"]) == (
        3, 2, 1, 0)
    assert [p["partition"] for p in strategy.placements] == [0, 2]  # partition order
    updates = [{k: torch.full_like(state[k], d) for k in ("w", "b")} for d in (1.0, 3.0)]
    expected = reptile_step(state, updates, 0.5)  # the in-process server step, bit for bit
    assert all(torch.equal(out[k], expected[k]) for k in state)
    assert strategy.configure_evaluate(3, arrays, ConfigRecord(), None) == []


def test_strategy_drops_bad_replies_and_fails_short_rounds(task_identity):
    state = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    strategy = FedReptile(["w", "b"], min_train_nodes=2, node_partitions=NODES)
    messages = configured(strategy, state)
    replies = [reply(messages[0], 1.0), reply(messages[1], 1.0, loss=math.nan),
               reply(messages[2], 1.0, drop="b")]
    assert strategy.aggregate_train(1, replies) == (None, None)
    s = strategy.round_stats
    assert (s["clients_ok"], s["clients_diverged"], s["client_errors"], s["round_failed"]) == (
        1, 1, 1, 1)
    strategy.min_train_nodes = 1
    arrays, _ = strategy.aggregate_train(1, replies[:1])  # a time-out: one reply missing
    assert strategy.round_stats["client_timeouts"] == 2
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="node_partitions"):
        configured(FedReptile(["w"]), state)


def test_meta_clients_must_fit_the_federation_and_skip_privacy(tmp_path):
    with pytest.raises(ConfigError, match="meta.clients: 3 exceeds partition.num-clients = 2"):
        load_config(None, [*meta_overrides(tmp_path), "meta.clients=3"])
    with pytest.raises(ConfigError, match="meta.clients: federated Reptile rounds have no DP"):
        load_config(None, [*meta_overrides(tmp_path), 'privacy.mode="local"',
                           "privacy.local-epsilon=0.5"])
    load_config(None, [*meta_overrides(tmp_path), "mode=centralised", "meta.clients=3"])


def in_process(cfg, shots: int, run_dir) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The meta-model of ``shots`` by the in-process path, and its per-round losses."""
    from fednas.meta.fedmeta import federated_reptile
    from fednas.meta.models import initial_model, meta_seed
    from fednas.meta.tasks import fewshot_data

    m = cfg.meta
    data, split = fewshot_data(meta_setup(cfg))
    model, _ = initial_model("conv4", meta_setup(cfg), run_dir, shots, data.input_shape)
    losses: list[float] = []
    federated_reptile(model, data.subset(split.train), clients=m.clients, ways=m.ways,
                      shots=shots, queries=m.queries, rounds=m.iterations,
                      meta_batch=m.meta_batch, inner_steps=m.local_steps, inner_lr=m.inner_lr,
                      server_lr=m.server_lr, seed=meta_seed(meta_setup(cfg), 3, shots),
                      callback=lambda r: losses.append(r["loss"]))
    return model.state_dict(), losses


class LocalGrid:
    """A Grid stand-in that runs each message's client side in-process (no Ray)."""

    def __init__(self, cfg, clients: int) -> None:
        self.cfg, self.nodes = cfg, {1001 + k: k for k in range(clients)}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        from fednas.meta.fedmeta_client import local_update

        replies = []
        for msg in messages:
            pid = self.nodes[msg.metadata.dst_node_id]
            content = RecordDict({"metrics": MetricRecord({"partition-id": pid})})
            if msg.metadata.message_type == META_ROUTE:
                out, metrics = local_update(meta_setup(self.cfg), pid, msg.content["arrays"]
                                            .to_torch_state_dict(), dict(msg.content["config"]))
                content = RecordDict({"arrays": ArrayRecord(out),
                                      "metrics": MetricRecord(metrics)})
            replies.append(Message(content, reply_to=msg))
        return replies


def run_on(grid_cfg, resume_dir=None, stop_after=None):
    from simulations.federated import FederatedPipeline

    pipeline = FederatedPipeline(grid_cfg, resume_dir=resume_dir, stop_after=stop_after)
    pipeline.prepare()
    return pipeline.run_on_grid(LocalGrid(grid_cfg, grid_cfg.partition.num_clients))


def test_paused_and_resumed_rounds_make_the_in_process_models(tmp_path, task_identity):
    """The server's round loop, pause and resume over in-process clients: the models of
    federated_reptile, bit for bit, and one metrics record per round."""
    from fednas.reporting.checkpoint import load_checkpoint
    from fednas.reporting.rundir import read_metrics

    cfg = load_config(None, flower_overrides(tmp_path))
    run_dir, paused = run_on(cfg, stop_after=("meta-conv4-2shot", 1))
    assert paused["paused"] == {"phase": "meta-conv4-2shot", "round": 1}
    assert not (run_dir / "meta.json").exists()
    run_dir, summary = run_on(cfg, resume_dir=run_dir)
    metrics = read_metrics(run_dir)
    assert [r["phase"] for r in metrics] == ["meta-conv4-1shot"] * 2 + ["meta-conv4-2shot"] * 2
    assert all(r["clients_ok"] == 2 and r["round_failed"] == 0 for r in metrics)
    ck = load_checkpoint(run_dir)  # the last round: 2-shot weights; 1-shot's in meta_done
    for shots, got in ((1, ck["meta_done"]["meta-conv4-1shot"]), (2, ck["state"])):
        expected, losses = in_process(cfg, shots, run_dir)
        assert all(torch.equal(got[k], expected[k]) for k in expected), shots
        logged = [r["meta_loss"] for r in metrics if r["phase"] == f"meta-conv4-{shots}shot"]
        assert logged == pytest.approx(losses, rel=1e-5)
    assert summary["meta"]["training"] == "federated reptile, 2 clients (Flower)"
    assert summary["meta"]["models"]["conv4"]["1shot"]["meta_train_s"] > 0  # its rounds'


def test_meta_clients_in_cohorts_train_as_one_computation(tmp_path, task_identity,
                                                          monkeypatch):
    """Cohort mode: both meta clients in one message, their tasks vectorised (never the
    one-client path); the models equal the in-process path's to float rounding
    (fednas/training/vectorised.py), and a faulty member is dropped alone."""
    from pathlib import Path

    from conftest import in_process_run

    import fednas.meta.fedmeta_client as meta_client
    from fednas.reporting.checkpoint import load_checkpoint

    def one_by_one(*args, **kwargs):
        raise AssertionError("a cohort ran its members one by one")

    monkeypatch.setattr(meta_client, "local_update", one_by_one)
    sets = [*flower_overrides(tmp_path), "federation.cohort-size=0"]
    cfg = load_config(None, sets)
    metrics, summary, _ = in_process_run(sets, cohort_slots=1)
    assert all(r["cohorts"] == 1 and r["clients_ok"] == 2 for r in metrics)
    run_dir = Path(summary["run_dir"])
    ck = load_checkpoint(run_dir)
    for shots, got in ((1, ck["meta_done"]["meta-conv4-1shot"]), (2, ck["state"])):
        expected, losses = in_process(cfg, shots, run_dir)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5)
        logged = [r["meta_loss"] for r in metrics if r["phase"] == f"meta-conv4-{shots}shot"]
        assert logged == pytest.approx(losses, rel=1e-4)
    for kind, counter in (("raise", "client_errors"), ("nan", "clients_diverged")):
        faulty, _, _ = in_process_run([*sets, "federation.fault-partitions=[1]",
                                       f'federation.fault-kind="{kind}"',
                                       "federation.min-fit-clients=1"], cohort_slots=1)
        assert all(r["clients_ok"] == 1 and r[counter] == 1 for r in faulty), kind


@pytest.mark.slow
def test_flower_simulation_matches_in_process(tmp_path):
    """Ray + Flower (client app route train.meta): the same models and scores as the
    in-process path, which ``fednas meta RUN_DIR`` takes."""
    from fednas.meta.phase import run_meta
    from fednas.reporting.checkpoint import load_checkpoint
    from simulations.simulation import run_federated

    cfg = load_config(None, flower_overrides(tmp_path))
    run_dir, summary = run_federated(cfg)
    ck = load_checkpoint(run_dir)
    for shots, got in ((1, ck["meta_done"]["meta-conv4-1shot"]), (2, ck["state"])):
        expected, _ = in_process(cfg, shots, run_dir)
        assert all(torch.equal(got[k], expected[k]) for k in expected), shots
    flower = summary["meta"]["models"]["conv4"]
    again = run_meta(meta_setup(cfg), run_dir, torch.device("cpu"))["models"]["conv4"]
    assert [again[k]["acc"] for k in ("1shot", "2shot")] == [flower[k]["acc"]
                                                             for k in ("1shot", "2shot")]


@pytest.mark.parametrize("space", ["cell", "width"])
def test_clients_rebuild_the_searched_model_from_its_spec(tiny_overrides, tmp_path, space):
    from fednas.meta.fedmeta_client import build_from_spec, model_spec
    from fednas.meta.models import initial_model, meta_space
    from fednas.spaces.base import load_genotype, save_genotype

    cfg = load_config(None, [*tiny_overrides, *meta_overrides(tmp_path), f'space.name="{space}"',
                             'phases=["search", "meta"]', 'meta.models=["searched"]'])
    save_genotype(meta_space(meta_setup(cfg), (1, 8, 8), 3).genotype(), tmp_path / "genotype.json")
    model, _ = initial_model("searched", meta_setup(cfg), tmp_path, 1, (1, 8, 8))
    spec = model_spec("searched", model, load_genotype(tmp_path / "genotype.json"))
    rebuilt = build_from_spec(meta_setup(cfg), json.loads(json.dumps(spec)), (1, 8, 8))
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture, same names
    assert [k for k, _ in rebuilt.named_parameters()] == [k for k, _ in model.named_parameters()]
