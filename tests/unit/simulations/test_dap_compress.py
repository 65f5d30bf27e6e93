"""``compression.selection = "dap"`` in a federated run (issue 32): the student DAP prunes
from the full-width subnet is distilled, fine-tuned by FedAvg, exported, and resumed exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import federated_sets, in_process_run

from fednas.errors import ConfigError

WIDTH = ['space.name="width"', "space.width.depth=8", "space.width.base-channels=8",
         "space.width.width-choices=[0.5, 1.0]", 'phases=["search", "compress", "same-size"]',
         "compression.params=0.7", 'compression.reference="searched"',
         'compression.teacher="supernet"', "compression.epochs=1",
         "compression.fine-tune-rounds=2", 'compression.selection="dap"',
         "compression.dap-steps=30", "federation.checkpoint-every=1"]


def test_dap_student_is_trained_exported_and_resumed(tiny_overrides, tmp_path, no_plots,
                                                      task_identity):
    from fednas.compression.dap_student import block_widths
    from fednas.models.export import export, load_model

    sets = federated_sets(tiny_overrides) + WIDTH
    whole, summary, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "w"}"'])
    run_dir = Path(summary["run_dir"])
    models = summary["models"]
    record = json.loads((run_dir / "student_dap.json").read_text())
    derivation = json.loads((run_dir / "compression.json").read_text())["derivation"]
    assert derivation["selection"] == "dap" and derivation["mids"] == record["mids"]
    for name in ("distilled", "same_size"):
        assert models[name]["mids"] == record["mids"] and models[name]["selection"] == "dap"
        assert models[name]["within_budget"]
        assert models[name]["params"] == record["params"] <= record["limit_params"]
    assert [m["phase"] for m in whole] == ["search"] + ["compress"] * 2 + ["same-size"] * 2
    path, info = export(run_dir, "distilled")
    assert block_widths(load_model(path)) == record["mids"]
    assert abs(info["metrics"]["reproduced_test_acc"] - models["distilled"]["test_acc"]) < 1e-6

    # paused in the middle of the fine-tuning: the resumed run rebuilds the same student
    paused_sets = sets + [f'runtime.out-dir="{tmp_path / "p"}"']
    _, info, _ = in_process_run(paused_sets, stop_after=("compress", 1))
    resumed, final, _ = in_process_run(paused_sets, resume_dir=Path(info["run_dir"]))
    strip = [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in resumed]
    assert strip == [{k: v for k, v in m.items() if not k.endswith("wall_s")} for m in whole]
    assert final["models"]["same_size"]["test_acc"] == models["same_size"]["test_acc"]


def test_budget_below_dap_reach_fails_before_the_run(tiny_overrides, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + WIDTH + ['compression.reference="baseline"']
    with pytest.raises(ConfigError, match="smallest network DAP can reach"):
        in_process_run(sets)


def test_gates_trained_by_the_clients_send_only_gate_logits_up(tiny_overrides, tmp_path,
                                                               no_plots, task_identity):
    from conftest import InProcessGrid

    from fednas.config.loading import load_config
    from fednas.reporting.rundir import read_metrics
    from simulations.federated import FederatedPipeline

    class Recording(InProcessGrid):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.up: list[set[str]] = []

        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            replies = super().send_and_receive(messages, timeout)
            self.up += [set(r.content["arrays"].keys()) for m, r in zip(messages, replies,
                                                                        strict=True)
                        if m.metadata.message_type == "train.dap"]
            return replies

    cfg = load_config(None, federated_sets(tiny_overrides) + WIDTH + [
        "compression.dap-rounds=2", "compression.dap-steps=10",
        f'runtime.out-dir="{tmp_path}"'])
    pipeline = FederatedPipeline(cfg)
    pipeline.prepare()
    grid = Recording(cfg)
    run_dir, summary = pipeline.run_on_grid(grid)
    metrics = read_metrics(run_dir)
    assert [m["phase"] for m in metrics][:3] == ["search", "dap-gates", "dap-gates"]
    gates = [m for m in metrics if m["phase"] == "dap-gates"]
    assert all(m["clients_ok"] == 3 and m["bytes_up"] < m["bytes_down"] / 50 for m in gates)
    assert grid.up and all(keys and all(k.startswith("gates.theta.") for k in keys)
                           for keys in grid.up)
    record = json.loads((Path(run_dir) / "student_dap.json").read_text())
    assert record["where"] == "clients" and record["params"] <= record["limit_params"]
    assert summary["models"]["distilled"]["mids"] == record["mids"]
    assert summary["models"]["distilled"]["within_budget"]
