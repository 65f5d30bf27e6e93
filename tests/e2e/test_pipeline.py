"""End-to-end runs on tiny real data (sklearn digits): run dir, CLI errors (determinism:
test_determinism.py)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from fednas.reporting.rundir import SUMMARY_SCHEMA, read_metrics
from simulations.cli import main
from simulations.pipeline import Pipeline

pytestmark = pytest.mark.slow


def test_tiny_run_writes_a_complete_run_dir(tiny_config):
    run_dir, summary = Pipeline(tiny_config).run()
    for name in ("config.toml", "metrics.jsonl", "genotype.json", "partitions.json",
                 "searched.pt", "baseline.pt", "summary.json", "plots/alpha_heatmap.png",
                 "plots/search_curves.png", "plots/retrain_curves.png",
                 "plots/alpha_evolution.png"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(SUMMARY_SCHEMA) <= set(on_disk)
    assert on_disk["scenario"] == "fednas" and on_disk["seed"] == 0
    for name in ("searched", "baseline"):
        model = on_disk["models"][name]
        assert 0.0 <= model["test_acc"] <= 1.0
        assert isinstance(model["params"], int) and model["params"] > 0
        assert isinstance(model["flops"], int) and model["flops"] > 0
    assert on_disk["genotype"] == json.loads((run_dir / "genotype.json").read_text())
    phases = [m["phase"] for m in read_metrics(run_dir)]
    # retrain.protocol equal-total: the fresh CNN trains the search's 2 epochs + 2
    assert phases == ["search"] * 2 + ["retrain"] * 2 + ["baseline"] * 4
    assert (on_disk["protocol"], on_disk["models"]["baseline"]["epochs"]) == ("equal-total", 4)
    parts = json.loads((run_dir / "partitions.json").read_text())
    assert sum(c["samples"] for c in parts["clients"]) == len(summary_train(on_disk))


def summary_train(summary):
    return range(summary["dataset"]["sizes"]["train"])


def test_digits_search_learns(tiny_overrides, tmp_path):
    """More steps on digits: the retrained searched subnet is far above chance (10 %)."""
    from fednas.config.loading import load_config

    cfg = load_config(None, tiny_overrides + ["data.max-train=0", "retrain.epochs=6",
                                              "retrain.lr=0.1", "phases=[\"search\", \"retrain\"]"])
    _, summary = Pipeline(cfg).run()
    assert summary["models"]["searched"]["test_acc"] > 0.8


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations", *args], capture_output=True,
                          text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fednas: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("override, needles", [
    ("search.lrr=1", ["unknown config key 'search.lrr'", "arch-lr"]),
    ("search.epochs=two", ["search.epochs: expected int, got str"]),
    ("search.lr=-1", ["search.lr: must be > 0.0"]),
    ("partition.alpha=0", ["partition.alpha"]),
    ("partition.num-clients=100000", ["partition.num-clients", "allowed: 1.."]),
    ("data.dataset=npz:/nonexistent/data.npz", ["/nonexistent/data.npz"]),
])
def test_cli_user_errors_are_one_line(tiny_overrides, override, needles, tmp_path, capsys):
    """In-process (the same ``main`` as the console script; a subprocess below checks that
    the real entry point prints no traceback)."""
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    code = main(["run", "/dev/null", *sets, "--set", override])
    assert_user_error(subprocess.CompletedProcess([], code, "", capsys.readouterr().err),
                      *needles)
    assert not (tmp_path / "runs").exists()  # nothing written before validation


def test_cli_missing_dataset_says_how_to_get_it(tmp_path):
    proc = run_cli("run", "/dev/null", "--set", "data.dataset=cifar10", "--set",
                   f'data.root="{tmp_path}"', "--set", "data.download=false")
    assert_user_error(proc, "cifar")
    assert "download" in proc.stderr


def test_cli_corrupt_idx_file_is_named(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    header = np.array([0x00000803, 100, 28, 28], dtype=">u4").tobytes()
    (root / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + rng.integers(0, 255, 50 * 28 * 28, dtype=np.uint8).tobytes()))
    labels = np.array([0x00000801, 100], dtype=">u4").tobytes() + bytes(100)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    for kind in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / kind).write_bytes((root / kind.replace("t10k", "train")).read_bytes())
    proc = run_cli("run", "/dev/null", "--set", "data.dataset=mnist", "--set",
                   f'data.root="{tmp_path}"', "--set", "data.download=false")
    assert_user_error(proc, "train-images-idx3-ubyte.gz")


def test_cli_missing_scenario_file():
    assert_user_error(run_cli("run", "/nonexistent.toml"), "scenario file not found")


def test_cli_help_and_config(capsys):
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "search.arch-lr = 0.003" in out and "partition.scheme" in out
    assert main(["config", str(REPO / "simulations/quickstart.toml")]) == 0
    assert 'name = "quickstart"' in capsys.readouterr().out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    data, meta = out.split("meta.dataset")
    assert "fashion-mnist" in data and "meta-train" in data and "omniglot" not in data
    assert "omniglot" in meta and "glyphs" in meta and "meta-train" not in meta
    proc = run_cli("--help")
    assert proc.returncode == 0 and "run" in proc.stdout and "examples" in proc.stdout
    proc = run_cli("run", "--help")
    assert proc.returncode == 0 and "--set" in proc.stdout


def test_random_architecture_phase_is_seeded_and_trained_like_the_searched(tiny_overrides):
    from fednas.config.loading import load_config

    cfg = load_config(None, tiny_overrides + ['phases=["search","retrain","random","baseline"]'])
    run_dir, summary = Pipeline(cfg).run()
    phases = [m["phase"] for m in read_metrics(run_dir)]
    assert phases == ["search"] * 2 + ["retrain"] * 2 + ["random"] * 2 + ["baseline"] * 4
    random_model = summary["models"]["random"]
    assert random_model["epochs"] == summary["models"]["searched"]["epochs"]
    assert random_model["genotype"]["space"] == "cell"
    assert (run_dir / "random.pt").is_file() and (run_dir / "plots/random_curves.png").is_file()
    again, _ = Pipeline(cfg).run()
    assert json.loads((again / "summary.json").read_text())["models"]["random"]["genotype"] == \
        json.loads((run_dir / "summary.json").read_text())["models"]["random"]["genotype"]
