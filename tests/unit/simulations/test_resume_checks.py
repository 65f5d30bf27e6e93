"""``fednas resume`` verifies the run dir before it runs: config and data fingerprints,
torn JSON lines, side logs cut back to the checkpoint, nothing started on a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import federated_sets, in_process_run

from fednas.errors import CheckpointError
from fednas.reporting.rundir import read_jsonl
from simulations import cli

STRIP = ("wall_s",)


def _plain(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith(STRIP)} for r in records]


@pytest.fixture
def paused(tiny_overrides, tmp_path, no_plots, task_identity):
    """A federated run paused after baseline round 1 (checkpoint written): (sets, run dir)."""
    sets = federated_sets(tiny_overrides) + [
        "runtime.threads=1", "federation.checkpoint-every=1", "federation.subnet-rounds=3",
        "federation.shard-size=2", f'runtime.out-dir="{tmp_path / "p"}"']
    _, info, _ = in_process_run(sets, stop_after=("baseline", 1))
    return sets, Path(info["run_dir"])


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the Flower simulation (and so Ray) would start."""
    def refuse(*args, **kwargs):
        raise AssertionError("the simulation was started")

    monkeypatch.setattr("flwr.simulation.run_simulation", refuse)


def test_resume_refuses_an_edited_config_before_ray(paused, no_ray, capsys):
    _, run_dir = paused
    config = run_dir / "config.toml"
    text = config.read_text()
    assert "subnet-rounds = 3" in text
    config.write_text(text.replace("subnet-rounds = 3", "subnet-rounds = 4"))
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert cli.main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "federation.subnet-rounds (3 → 4)" in err and "config.toml" in err
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # nothing rewritten


def test_resume_of_a_corrupt_checkpoint_fails_before_ray(paused, no_ray, capsys):
    _, run_dir = paused
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"\x80\x02garbage")
    assert cli.main(["resume", str(run_dir), "--quiet"]) == 2
    assert "latest.pt" in capsys.readouterr().err


def test_resume_allows_runtime_keys_and_refuses_others(paused, tmp_path):
    sets, run_dir = paused
    with pytest.raises(CheckpointError, match=r"retrain\.lr"):
        in_process_run(sets + ["retrain.lr=0.5"], resume_dir=run_dir)
    resumed, summary, _ = in_process_run(
        sets + ["federation.node-wait=9", "runtime.progress=false",
                f'runtime.out-dir="{tmp_path / "elsewhere"}"'], resume_dir=run_dir)
    assert "models" in summary and summary["models"]["baseline"]["test_acc"] >= 0


def test_resume_tolerates_a_torn_line_and_cuts_side_logs_back(paused, tiny_overrides,
                                                              tmp_path):
    sets, run_dir = paused
    whole_sets = [s for s in sets if not s.startswith("runtime.out-dir")]
    whole, _, _ = in_process_run(whole_sets + [f'runtime.out-dir="{tmp_path / "w"}"'])
    (whole_dir,) = (tmp_path / "w").iterdir()
    # a crash after the checkpoint: a later round half-logged, clients of it recorded
    with (run_dir / "clients.jsonl").open("a") as fh:
        fh.write('{"phase": "baseline", "round": 2, "partition": 0}\n{"phase": "base')
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"phase": "baseline", "step": 2, "train_lo')
    with pytest.warns(UserWarning, match="torn last line"):
        resumed, _, _ = in_process_run(sets, resume_dir=run_dir)
    assert _plain(resumed) == _plain(whole)
    clients = read_jsonl(run_dir / "clients.jsonl")
    expected = read_jsonl(whole_dir / "clients.jsonl")
    assert len(clients) == len(expected) > 0
    assert [(c["phase"], c["round"], c["partition"]) for c in clients] == \
        [(c["phase"], c["round"], c["partition"]) for c in expected]
