"""Successive halving over federated runs: grid parsing, validation, and the rung sequence
(run_federated faked: it writes the metrics a real run would)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import simulations.simulation
from fednas.config.loading import load_config
from fednas.errors import ConfigError
from simulations.halving_runs import candidates, parse_grid, run_halving, score, tuned_phase

FED = ["mode=federated", 'phases=["baseline"]', "federation.fraction-evaluate=1.0"]


def test_grid_parsing_and_product():
    grid = parse_grid(["federation.server-lr=0.5, 1,2", 'space.cell.ops=["a","b"],["c"]'])
    assert grid == {"federation.server-lr": ["0.5", "1", "2"],
                    "space.cell.ops": ['["a","b"]', '["c"]']}
    cands = candidates(grid)
    assert len(cands) == 6 and cands[1] == {"federation.server-lr": "0.5",
                                            "space.cell.ops": '["c"]'}


@pytest.mark.parametrize("specs,match", [
    (["federation.server-lr"], "expected KEY=V1"),
    (["federation.rounds=2,3"], "set by the halving run itself"),
    (["a=1", "a=2"], "given twice"),
    (["a=1,,2"], "empty value"),
    ([], "at least one --grid"),
])
def test_grid_errors_name_the_culprit(specs, match):
    with pytest.raises(ConfigError, match=match):
        parse_grid(specs)


def test_phase_and_score_source_are_validated():
    assert tuned_phase(load_config(None, FED)) == "baseline"
    with pytest.raises(ConfigError, match="mode must be"):
        tuned_phase(load_config(None, ['phases=["baseline"]']))
    with pytest.raises(ConfigError, match="advances one phase"):
        tuned_phase(load_config(None, ["mode=federated"]))
    with pytest.raises(ConfigError, match="enable \\[fedex\\]"):
        tuned_phase(load_config(None, ["mode=federated", 'phases=["search"]']))
    assert tuned_phase(load_config(None, ["mode=federated", 'phases=["search"]',
                                          "fedex.enabled=true"])) == "search"


def test_score_prefers_global_val_loss_and_ranks_nan_last(tmp_path):
    rows = [{"phase": "baseline", "step": 1, "val_loss": 2.0, "client_val_loss": 1.5},
            {"phase": "baseline", "step": 2, "val_loss": 1.0, "client_val_loss": 1.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score(tmp_path, "baseline") == 1.2
    rows.append({"phase": "baseline", "step": 3, "client_val_loss": "nan"})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert math.isinf(score(tmp_path, "baseline"))  # diverged at the end: ranked last
    assert math.isinf(score(tmp_path, "search"))


def fake_runs(calls: list, crash_on: int | None = None):
    """run_federated replaced: it appends the metrics a run would log (the loss falls with the
    server lr and the round) and records each call; call number ``crash_on`` (0-based) fails
    like a simulation that could not start, after writing one round of metrics."""

    def fake_run(cfg, console=None, resume_dir=None, stop_after=None, backend=None):
        lr = cfg.federation.server_lr
        run_dir = resume_dir or Path(cfg.runtime.out_dir) / f"{cfg.name}-x{len(calls)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        start = len((run_dir / "metrics.jsonl").read_text().splitlines()) if resume_dir else 0
        end = stop_after[1] if stop_after else cfg.federation.subnet_rounds
        if len(calls) == crash_on:
            calls.append(("crash", cfg.name))
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"phase": "baseline", "step": start + 1,
                                     "client_val_loss": 99.0}) + "\n")
            raise RuntimeError("Simulation Runtime crashed.")
        calls.append((cfg.name, resume_dir is not None, stop_after, end))
        with open(run_dir / "metrics.jsonl", "a") as fh:
            for rnd in range(start + 1, end + 1):
                fh.write(json.dumps({"phase": "baseline", "step": rnd,
                                     "client_val_loss": 1.0 / (lr * rnd)}) + "\n")
        if stop_after is None:
            (run_dir / "summary.json").write_text(json.dumps(
                {"models": {"baseline": {"test_acc": 0.5, "rounds": end}}}))
        return run_dir, {}

    return fake_run


def test_rungs_pause_resume_and_keep_the_budget(tmp_path, monkeypatch):
    """4 candidates, eta 2, budget 16: 3 rungs of 16 // 3 rounds each, shared by 4, 2, 1
    survivors: all reach round 1, the best two round 3, the best one round 8 (4 + 4 + 5 = 13
    rounds); the fake losses fall with the server lr, so lr 4 wins and lr 2 is runner-up."""
    calls = []
    fake_run = fake_runs(calls)
    monkeypatch.setattr(simulations.simulation, "run_federated", fake_run)
    record = run_halving(None, FED + [f'runtime.out-dir="{tmp_path}"'],
                         ["federation.server-lr=0.5,2,1,4"], budget=16, eta=2)
    assert record["best"]["config"] == {"federation.server-lr": "4"}
    assert record["rounds_used"] == 13 and record["horizon"] == 8
    assert [c["rounds"] for c in record["candidates"]] == [1, 3, 1, 8]
    assert calls == [("c00", False, ("baseline", 1), 1), ("c01", False, ("baseline", 1), 1),
                     ("c02", False, ("baseline", 1), 1), ("c03", False, ("baseline", 1), 1),
                     ("c03", True, ("baseline", 3), 3), ("c01", True, ("baseline", 3), 3),
                     ("c03", True, None, 8)]  # later rungs resume, the winner runs to the end
    assert (Path(record["dir"]) / "halving.json").is_file()
    with pytest.raises(ConfigError, match="halving candidate"):
        run_halving(None, FED, ["federation.server-lr=-1"], budget=4, eta=2)


def test_an_interrupted_halving_resumes_without_rerunning_finished_steps(tmp_path, monkeypatch):
    """The same halving crashes in its second rung (c01 continuing to round 3); resumed, it
    runs only what was left (c01 again from its round-1 pause, then c03 to the end) and
    returns the record of an uninterrupted halving."""
    grid, out = ["federation.server-lr=0.5,2,1,4"], [*FED, f'runtime.out-dir="{tmp_path}"']
    calls = []
    monkeypatch.setattr(simulations.simulation, "run_federated", fake_runs(calls, crash_on=5))
    with pytest.raises(RuntimeError, match="crashed"):
        run_halving(None, out, grid, budget=16, eta=2)
    assert calls[-1] == ("crash", "c01")
    root = next(tmp_path.glob("*-halving-*"))
    assert not (root / "halving.json").exists()
    progress = json.loads((root / "progress.json").read_text())
    assert {i: sorted(d["scores"]) for i, d in progress["done"].items()} == {
        "0": ["1"], "1": ["1"], "2": ["1"], "3": ["1", "3"]}
    with pytest.raises(ConfigError, match="another budget"):
        run_halving(None, out, grid, budget=12, eta=2, resume=root)
    with pytest.raises(ConfigError, match="another candidates"):
        run_halving(None, out, ["federation.server-lr=0.5,2,1,8"], budget=16, eta=2,
                    resume=root)
    calls.clear()
    monkeypatch.setattr(simulations.simulation, "run_federated", fake_runs(calls))
    record = run_halving(None, out, grid, budget=16, eta=2, resume=root)
    assert calls == [("c01", True, ("baseline", 3), 3), ("c03", True, None, 8)]
    assert record["dir"] == str(root) and record["rounds_used"] == 13
    assert record["best"]["config"] == {"federation.server-lr": "4"}
    assert [c["rounds"] for c in record["candidates"]] == [1, 3, 1, 8]
    assert record["candidates"][1]["run_dir"] == progress["done"]["1"]["run_dir"]
    with pytest.raises(ConfigError, match="has finished"):
        run_halving(None, out, grid, budget=16, eta=2, resume=root)
