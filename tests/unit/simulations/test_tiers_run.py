"""Device tiers in a federated run (issue 31): the search never sends or receives a region
outside a client's tier, each tier gets a model within its budget, and the draw resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import InProcessGrid, federated_sets

from fednas.config.loading import load_config
from fednas.errors import ConfigError

TIERS = ['space.name="width"', "space.width.depth=8", "space.width.base-channels=8",
         "space.width.width-choices=[0.25, 0.5, 1.0]", 'phases=["search", "tiers"]',
         'devices.names=["small", "large"]', "devices.fractions=[0.5, 0.5]",
         "devices.params=[0.45, 1.0]", 'compression.teacher="supernet"',
         "compression.epochs=1", "compression.fine-tune-rounds=2",
         "federation.checkpoint-every=1"]


class RecordingGrid(InProcessGrid):
    """Records, per message, the route, the partition and the conv1 rows that travelled."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.log: list[tuple[str, int, dict[str, tuple], dict[str, tuple]]] = []
        self.shards: list[tuple[int, list[int]]] = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout)
        for msg, reply in zip(messages, replies, strict=True):
            def shapes(m):
                if m.has_error() or "arrays" not in m.content:
                    return {}
                return {k: tuple(v.shape) for k, v in m.content["arrays"].items()
                        if k.endswith("conv1.weight")}

            pid = msg.metadata.dst_node_id - 1000
            self.log.append((msg.metadata.message_type, pid, shapes(msg), shapes(reply)))
            if "shard" in msg.content["config"]:
                self.shards.append((pid, list(msg.content["config"]["shard"])))
        return replies


def run(sets, resume_dir=None, stop_after=None):
    from fednas.reporting.rundir import read_metrics
    from simulations.federated import FederatedPipeline

    cfg = load_config(None, sets)
    pipeline = FederatedPipeline(cfg, None, resume_dir, stop_after)
    pipeline.prepare()
    grid = RecordingGrid(cfg)
    run_dir, summary = pipeline.run_on_grid(grid)
    return read_metrics(run_dir), summary, grid, Path(run_dir)


def test_tiers_train_within_their_channels_and_budgets(tiny_overrides, tmp_path, no_plots,
                                                       task_identity):
    sets = federated_sets(tiny_overrides) + TIERS + [f'runtime.out-dir="{tmp_path / "w"}"']
    metrics, summary, grid, run_dir = run(sets)
    parts = json.loads((run_dir / "partitions.json").read_text())
    tiers = {c["client"]: c["tier"] for c in parts["clients"]}
    plan = {t["name"]: t for t in parts["tiers"]}
    assert sorted(tiers.values()) == ["large", "small", "small"]  # 3 clients: 2 + 1
    assert plan["small"]["width"] < plan["large"]["width"] == 1.0
    full_rows = 8  # first-stage blocks: base-channels inner channels at width 1.0
    small_rows = round(plan["small"]["width"] * full_rows)
    search = [entry for entry in grid.log if entry[0] == "train.search"]
    assert search and {pid for _, pid, _, _ in search} == set(tiers)
    for _, pid, down, up in search:  # acceptance: no region outside the tier, either way
        rows = small_rows if tiers[pid] == "small" else full_rows
        key = "layer1.0.conv1.weight"
        assert down[key][0] == rows and up[key][0] == rows, (pid, down[key], up[key])
    models = summary["models"]
    for name in ("small", "large"):
        entry = models[f"tier_{name}"]
        assert entry["within_budget"] and entry["params"] <= plan[name]["limit_params"]
        assert 0.0 <= entry["test_acc"] <= 1.0 and (run_dir / f"tier_{name}.pt").is_file()
    assert models["tier_small"]["params"] < models["tier_large"]["params"]
    # "able": the small tier's model is fine-tuned by every client, the large one's by its own
    assert models["tier_small"]["fine_tune_clients"] == [0, 1, 2]
    assert models["tier_large"]["fine_tune_clients"] == sorted(
        p for p, t in tiers.items() if t == "large")
    phases = [m["phase"] for m in metrics]
    assert phases == ["search"] + ["tiers:small"] * 2 + ["tiers:large"] * 2

    # paused in the large tier's fine-tuning: the same draw, the same models
    paused_sets = sets[:-1] + [f'runtime.out-dir="{tmp_path / "p"}"']
    _, info, _, _ = run(paused_sets, stop_after=("tiers:large", 1))
    resumed, final, _, rdir = run(paused_sets, resume_dir=Path(info["run_dir"]))
    again = json.loads((rdir / "partitions.json").read_text())
    assert {c["client"]: c["tier"] for c in again["clients"]} == tiers
    strip = [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in resumed]
    assert strip == [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in metrics]
    assert final["models"]["tier_large"]["test_acc"] == models["tier_large"]["test_acc"]


@pytest.mark.parametrize("extra, match", [
    (["devices.params=[0.01, 1.0]"], "tier 'small' allows"),
    (['space.name="cell"', 'phases=["search", "heterofl"]'], "static widths of the width"),
    (['compression.selection="dap"', "compression.dap-rounds=2"], "trains each tier's DAP"),
    (['devices.names=[]', "devices.fractions=[]", "devices.params=[]"], "'tiers' trains one"),
])
def test_tier_config_errors(tiny_overrides, tmp_path, extra, match, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + TIERS + extra
    with pytest.raises(ConfigError, match=match):
        run(sets + [f'runtime.out-dir="{tmp_path}"'])


def test_cell_space_tiers_train_only_reachable_ops(tiny_overrides, tmp_path, no_plots,
                                                   task_identity):
    """Cell space: a tier's shards (and so its messages) hold only the (edge, op) candidates
    that keep its budget reachable, and its derived model meets the budget."""
    from fednas.federated.shards import decode_masks

    sets = federated_sets(tiny_overrides) + [
        'phases=["search", "tiers"]', 'devices.names=["small", "large"]',
        "devices.fractions=[0.5, 0.5]", "devices.params=[0.32, 1.0]",
        'compression.teacher="none"', "compression.fine-tune-rounds=1",
        f'runtime.out-dir="{tmp_path}"']
    metrics, summary, grid, run_dir = run(sets)
    parts = json.loads((run_dir / "partitions.json").read_text())
    plan = {t["name"]: t for t in parts["tiers"]}
    assert plan["small"]["candidates"] < plan["large"]["candidates"] == 1.0
    tiers = {c["client"]: c["tier"] for c in parts["clients"]}
    models = summary["models"]
    for name in ("small", "large"):
        assert models[f"tier_{name}"]["within_budget"]
        assert models[f"tier_{name}"]["params"] <= plan[name]["limit_params"]
    # what a small-tier client was sent: never an op the tier cannot reach
    from fednas.federated.tiers import tier_candidates
    from simulations.federated import FederatedPipeline

    cfg = load_config(None, sets)
    pipeline = FederatedPipeline(cfg)
    pipeline.prepare()
    space = pipeline.make_space()
    allowed, _ = tier_candidates(space, (plan["small"]["limit_params"], None), "small")
    shapes = [a.shape for a in space.arch_parameters()]
    sent = [e for e in grid.shards if tiers[e[0]] == "small"]
    assert sent
    for _, flat in sent:
        masks = decode_masks(flat, shapes)
        assert all(not (m & ~ok).any() for m, ok in zip(masks, allowed, strict=True))
