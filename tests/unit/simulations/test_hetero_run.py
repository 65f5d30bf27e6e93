"""Static-width baselines and the straggler clock of device tiers (issue 31): HeteroFL never
sends a client channels beyond its tier's width and never moves α, every baseline stays
within its tier's budget at fednas's round count, and the deadline drops the same clients
every time."""

from __future__ import annotations

import pytest
import torch
from conftest import InProcessGrid, federated_sets
from flwr.app import ArrayRecord, ConfigRecord

from fednas.config.loading import load_config
from fednas.federated.stragglers import deadline_round, local_time
from simulations.round_loop import RoundLoop

TIERS = ['space.name="width"', "space.width.depth=8", "space.width.base-channels=8",
         "space.width.width-choices=[0.25, 0.5, 1.0]", "search.sandwich=true",
         'devices.names=["small", "large"]', "devices.fractions=[0.5, 0.5]",
         "devices.params=[0.45, 1.0]", "devices.speed=[0.5, 1.0]",
         'compression.teacher="none"', "compression.fine-tune-rounds=2"]
FULL_ROWS = 8  # first-stage blocks: base-channels inner channels at width 1.0


class PhaseGrid(InProcessGrid):
    """Records, per search-route message: phase, partition, conv1 rows down and up, α down
    and up."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.phase = ""
        self.log: list[dict] = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout)
        for msg, reply in zip(messages, replies, strict=True):
            if msg.metadata.message_type != "train.search":
                continue

            def part(m, suffix):
                if m.has_error() or "arrays" not in m.content:
                    return {}
                return {k: v.numpy() for k, v in m.content["arrays"].items()
                        if k.endswith(suffix) or k.startswith("alphas.")}

            self.log.append({"phase": self.phase, "pid": msg.metadata.dst_node_id - 1000,
                             "down": part(msg, "conv1.weight"),
                             "up": part(reply, "conv1.weight")})
        return replies


def run(sets, monkeypatch):
    from fednas.reporting.rundir import read_metrics
    from simulations.federated import FederatedPipeline

    original = RoundLoop.run

    def tagged(self, grid, phase, *args, **kwargs):
        grid.phase = phase
        return original(self, grid, phase, *args, **kwargs)

    monkeypatch.setattr(RoundLoop, "run", tagged)
    cfg = load_config(None, sets)
    pipeline = FederatedPipeline(cfg, None)
    pipeline.prepare()
    grid = PhaseGrid(cfg)
    run_dir, summary = pipeline.run_on_grid(grid)
    return read_metrics(run_dir), summary, grid, pipeline


def test_static_width_baselines(tiny_overrides, tmp_path, no_plots, task_identity,
                                monkeypatch):
    sets = federated_sets(tiny_overrides) + TIERS + [
        'phases=["search", "tiers", "heterofl", "smallest", "tier-alone"]',
        f'runtime.out-dir="{tmp_path}"']
    metrics, summary, grid, pipeline = run(sets, monkeypatch)
    plan = {t["name"]: t for t in pipeline.tiers.plan()}
    tier_of = {pid: pipeline.cfg.devices.names[t] for pid, t in enumerate(pipeline.tiers.of)}
    rows = {name: round(t["width"] * FULL_ROWS) for name, t in plan.items()}
    assert rows["small"] < rows["large"] == FULL_ROWS
    key = "layer1.0.conv1.weight"
    expected = {"heterofl": lambda pid: rows[tier_of[pid]],
                "smallest": lambda pid: rows["small"],
                "alone:small": lambda pid: rows["small"],
                "alone:large": lambda pid: rows["large"]}
    static = [e for e in grid.log if e["phase"] != "search"]
    assert {e["phase"] for e in static} == {p for base in expected for p in (base, base + ":tune")}
    for e in static:  # exactly the width's channels travel, both ways
        want = expected[e["phase"].removesuffix(":tune")](e["pid"])
        assert e["down"][key].shape[0] == want and e["up"][key].shape[0] == want, e["phase"]
        if e["phase"].startswith("alone:"):
            assert tier_of[e["pid"]] == e["phase"].split(":")[1].removesuffix(":tune")
    alpha0 = [a.detach() for a in pipeline.make_space().arch_parameters()]
    for e in static:  # α never moves: what the clients get and return is the initial α
        for i, a in enumerate(alpha0):
            assert torch.equal(torch.from_numpy(e["down"][f"alphas.{i}"]), a)
            assert torch.equal(torch.from_numpy(e["up"][f"alphas.{i}"]), a)
    models = summary["models"]
    total = 1 + 2  # search rounds + fine-tune rounds
    entries = {f"heterofl_{n}": n for n in plan} | {f"alone_{n}": n for n in plan} | {
        "smallest_for_all": "small", **{f"tier_{n}": n for n in plan}}
    for name, tier in entries.items():
        entry = models[name]
        assert entry["within_budget"] and entry["params"] <= plan[tier]["limit_params"], name
        assert entry["rounds_total"] == total and entry["sim_time_s"] > 0, name
        assert 0.0 <= entry["test_acc"] <= 1.0
    for name in ("heterofl_small", "smallest_for_all", "alone_small", "alone_large"):
        assert models[name]["rounds"] == total  # the equal-round rule
    assert models["heterofl_small"]["params"] == models["alone_small"]["params"] \
        == models["smallest_for_all"]["params"] < models["heterofl_large"]["params"]
    assert models["alone_small"]["clients"] == sorted(p for p, t in tier_of.items()
                                                      if t == "small")
    rounds = [m for m in metrics if "clients_ok" in m]
    assert all(m["clients_late"] == 0 and "sim_time_s" in m for m in rounds)
    hetero = [m for m in metrics if m["phase"] == "heterofl"]
    assert {"test_acc_small", "test_acc_large"} <= set(hetero[0])


def test_deadline_drops_the_same_slow_clients(tiny_overrides, tmp_path, no_plots,
                                               task_identity, monkeypatch):
    base = federated_sets(tiny_overrides) + TIERS + [
        'phases=["search"]', "federation.rounds=2", "federation.min-fit-clients=1",
        "devices.speed=[0.05, 1.0]"]
    cfg = load_config(None, base + [f'runtime.out-dir="{tmp_path / "a"}"'])
    from simulations.federated import FederatedPipeline

    probe = FederatedPipeline(cfg, None)
    probe.prepare()
    times = probe.tiers.search_times()
    slow = {p for p, t in enumerate(probe.tiers.of) if t == 0}
    deadline = round((max(times[p] for p in set(times) - slow)
                      + min(times[p] for p in slow)) / 2, 4)
    assert max(times[p] for p in set(times) - slow) < deadline < min(times[p] for p in slow)
    logs = []
    for out in ("b", "c"):
        sets = base + [f"devices.deadline-s={deadline}", f'runtime.out-dir="{tmp_path / out}"']
        metrics, _, grid, _ = run(sets, monkeypatch)
        assert {e["pid"] for e in grid.log} == set(times) - slow  # never sent: dropped
        logs.append([(m["clients_late"], m["clients_ok"], m["sim_round_s"], m["sim_time_s"],
                      m["test_acc"]) for m in metrics])
    assert logs[0] == logs[1]
    assert [row[:2] for row in logs[0]] == [(len(slow), 3 - len(slow))] * 2
    assert logs[0][0][2] == pytest.approx(deadline, rel=1e-5)
    assert logs[0][1][3] == pytest.approx(2 * deadline, rel=1e-5)


def test_deadline_round_and_local_time():
    assert deadline_round({0: 5.0, 1: 20.0, 2: 8.0}, 10.0) == ([0, 2], [1], 10.0)
    assert deadline_round({0: 5.0, 1: 20.0, 2: 8.0}, 0.0) == ([0, 1, 2], [], 20.0)
    assert deadline_round({}, 3.0) == ([], [], 0.0)
    # a quarter of the FLOPs on a quarter-speed device takes the reference's time
    assert local_time(100, 1, 25, 100, 1e-3, 0.25) == pytest.approx(local_time(100, 1, 100,
                                                                             100, 1e-3, 1.0))


def test_strategy_drops_late_clients_and_keeps_the_clock(task_identity):
    from strategies.fednas import FedNAS

    def strategy():
        s = FedNAS(None, seed=0, min_train_nodes=1)
        s.node_partitions = {1000 + p: p for p in range(3)}
        s.sim_times, s.deadline = {0: 5.0, 1: 20.0, 2: 8.0}, 10.0
        return s

    state = ArrayRecord({"w": torch.ones(2)})
    a, b = strategy(), strategy()
    for rnd in (1, 2):
        sent = [m.metadata.dst_node_id for m in a.configure_train(rnd, state,
                                                                  ConfigRecord({"lr": 0.1}),
                                                                  None)]
        b.configure_train(rnd, state, ConfigRecord({"lr": 0.1}), None)
        assert sent == [1000, 1002] and set(a._plan) == {0, 2}
        assert a.round_stats["clients_late"] == 1 and a.round_stats["sim_round_s"] == 10.0
        assert a.round_stats["sim_time_s"] == b.round_stats["sim_time_s"] == 10.0 * rnd
    restored = strategy()
    restored.set_state(a.get_state())
    assert restored.sim_clock == 20.0
    plain = FedNAS(None, seed=0)
    assert "sim_clock" not in plain.get_state()  # no tiers: checkpoints as before


def test_report_draws_the_tiers(tmp_path, monkeypatch):
    import json

    from fednas.reporting import sweep_report

    budget = {"small": {"limit_params": None, "limit_flops": 3000},
              "large": {"limit_params": None, "limit_flops": 10000}}
    for seed in (0, 1):
        run_dir = tmp_path / f"r{seed}"
        run_dir.mkdir()
        models = {f"{m}_{t}": {"test_acc": 0.8, "params": 100, "flops": f, "tier": t,
                               "budget": budget[t], "rounds": 2, "rounds_total": 5}
                  for m in ("tier", "heterofl", "alone") for t, f in (("small", 2900),
                                                                     ("large", 9000))}
        (run_dir / "summary.json").write_text(json.dumps(
            {"scenario": "hetero", "seed": seed, "timings": {}, "models": models}))
        (run_dir / "metrics.jsonl").write_text("")
    labels: dict[str, list[str]] = {}
    original = sweep_report._save_log_x

    def capture(fig, ax, xlabel, path):
        labels[path.name] = ax.get_legend_handles_labels()[1]
        return original(fig, ax, xlabel, path)

    monkeypatch.setattr(sweep_report, "_save_log_x", capture)
    result = sweep_report.write_report([tmp_path / "r0", tmp_path / "r1"], tmp_path / "out")
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["heterofl_small"]["tier"] == "small" and rows["tier_large"]["budget"] == 5
    assert "tier small budget" in labels["pareto_flops.png"]
    assert "tier small budget" not in labels["pareto.png"]  # no params limit to draw
    assert "heterofl_small (hetero)" in labels["pareto.png"]
