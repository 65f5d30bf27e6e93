"""The worked example of extending fednas from user code (examples/custom_space.py): a new
search space and a new aggregation strategy, registered by a plugin file, run a federated
scenario without any edit to fednas."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fednas.config.loading import load_config
from fednas.federated.aggregation import Contribution, masked_weighted_mean
from fednas.plugins import import_plugins
from fednas.spaces.registry import SPACES, build_space
from strategies.registry import STRATEGIES

EXAMPLE = REPO / "examples" / "custom_space.py"
SCENARIO = EXAMPLE.with_suffix(".toml")


@pytest.fixture(scope="module")
def plugin():
    import_plugins([str(EXAMPLE)])
    return STRATEGIES.get("fednas-uniform")


def test_the_scenario_loads_its_plugin_and_accepts_the_new_names():
    cfg = load_config(SCENARIO)
    assert cfg.runtime.plugins == (str(EXAMPLE),)
    assert cfg.space.name == "kernel" and "kernel" in SPACES
    assert cfg.federation.strategy == "fednas-uniform" and "fednas-uniform" in STRATEGIES


def test_the_kernel_space_is_a_search_space(plugin):
    space = build_space("kernel", input_shape=(1, 8, 8), num_classes=10)
    assert space.candidate_names() == ["1x1", "3x3", "5x5"]
    genotype = space.random_genotype(torch.Generator().manual_seed(0))
    assert genotype["space"] == "kernel" and len(genotype["kernels"]) == 2
    x = torch.randn(3, 1, 8, 8)
    assert space(x).shape == space.subnet(genotype)(x).shape == (3, 10)
    space.set_shard([torch.tensor([True, False, False])] * 2)  # 1×1 only
    space.eval()
    subnet = space.subnet({"space": "kernel", "kernels": [1, 1]}).eval()
    assert torch.allclose(space(x), subnet(x), atol=1e-6)  # the shard is exactly that subnet


def test_the_uniform_strategy_gives_every_client_one_vote(plugin):
    state = {"w": torch.zeros(2)}
    clients = [Contribution({"w": torch.tensor([1.0, 1.0])}, {"w": None}, 300.0, {}),
               Contribution({"w": torch.tensor([4.0, 7.0])}, {"w": None}, 100.0, {})]
    strategy = plugin(None)
    strategy.round_stats = {}
    uniform = strategy.average(state, clients)
    assert torch.allclose(uniform["w"], torch.tensor([2.5, 4.0]))
    assert not torch.allclose(masked_weighted_mean(state, clients)["w"], uniform["w"])
    assert strategy.round_stats["uniform_clients"] == 2


def test_an_unknown_strategy_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simulations", "run", str(SCENARIO), "--set",
                           'federation.strategy="fedbogus"', "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "federation.strategy: unknown strategy 'fedbogus'" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_example_runs_a_federated_scenario_with_them(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Manually terminating" not in proc.stdout + proc.stderr  # quiet actor shutdown
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["genotype"]["space"] == "kernel"
    assert set(summary["models"]) == {"searched", "baseline"}
    assert summary["models"]["searched"]["test_acc"] > 0.8  # digits, 10 classes
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"search", "retrain", "baseline"}
    assert all(r["uniform_clients"] == 4 for r in rows)  # the plugin's strategy aggregated
