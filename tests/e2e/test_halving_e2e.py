"""Successive halving end to end on digits: paused and resumed candidates (with FedAvgM
momentum and model-EMA state) end exactly where an uninterrupted run of the winner ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fednas.config.loading import load_config
from fednas.reporting.rundir import read_metrics

pytestmark = pytest.mark.slow

SETS = ["mode=federated", 'phases=["baseline"]', "federation.fraction-evaluate=1.0",
        "federation.min-fit-clients=2", "federation.node-wait=300",
        "federation.checkpoint-every=0",  # pauses checkpoint regardless
        "federation.server-momentum=0.5",  # FedAvgM state must survive the pauses
        "federation.ema-decay=0.5"]  # and so must the model average


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("wall_s")} for r in records]


def test_halving_cli_and_resumed_winner_equals_uninterrupted_run(tiny_overrides, tmp_path):
    from simulations.simulation import run_federated

    sets = [a for o in tiny_overrides + SETS for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "simulations", "halving", "/dev/null", *sets,
                           "--grid", "federation.server-lr=1.0,0.8", "--budget", "4",
                           "--eta", "2", "--out-dir", str(tmp_path / "hv")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "successive halving" in proc.stdout
    (root,) = (tmp_path / "hv").iterdir()
    record = json.loads((root / "halving.json").read_text())
    assert record["rounds_used"] == 4 and record["horizon"] == 3
    assert sorted(c["rounds"] for c in record["candidates"]) == [1, 3]
    winner = Path(record["best"]["run_dir"])
    assert [m["step"] for m in read_metrics(winner)] == [1, 2, 3]

    lr = record["best"]["config"]["federation.server-lr"]
    cfg = load_config(None, tiny_overrides + SETS + [
        f"federation.server-lr={lr}", "federation.subnet-rounds=3",
        f'runtime.out-dir="{tmp_path / "direct"}"'])
    direct, summary = run_federated(cfg)
    assert strip_time(read_metrics(winner)) == strip_time(read_metrics(direct))
    rounds = read_metrics(direct)
    assert all("iterate_test_acc" in m for m in rounds)  # the last iterate, beside the EMA
    assert rounds[-1]["test_acc"] == pytest.approx(  # the exported model is the average
        summary["models"]["baseline"]["test_acc"], abs=1e-6)
    assert record["best"]["models"]["baseline"]["test_acc"] == pytest.approx(
        summary["models"]["baseline"]["test_acc"], abs=1e-6)
    a = torch.load(winner / "baseline.pt")["state_dict"]
    b = torch.load(direct / "baseline.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
