"""Rounds under the seeded fault model (in process): the plan recorded per round is what the
server observed, and a paused-and-resumed run replays the same faults."""

from __future__ import annotations

from pathlib import Path

from conftest import federated_sets, in_process_run

FAULTS = ["federation.faults.p-raise=0.25", "federation.faults.p-nan=0.25",
          "federation.min-fit-clients=1", "partition.num-clients=4", "federation.rounds=3",
          "federation.subnet-rounds=3", "federation.checkpoint-every=1", "runtime.threads=1"]


def _plain(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("wall_s")} for r in records]


def test_planned_faults_are_the_observed_failures_and_resume_replays_them(
        tiny_overrides, tmp_path, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + FAULTS
    whole, summary, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "w"}"'])
    for m in whole:
        assert m["client_errors"] == m["faults_raise"], m
        assert m["clients_diverged"] == m["faults_nan"], m
        assert m["clients_ok"] == 4 - m["faults_raise"] - m["faults_nan"], m
        assert m["faults_hang"] == m["faults_exit"] == m["actor_deaths"] == 0
    assert sum(m["faults_raise"] for m in whole) > 0 and sum(m["faults_nan"] for m in whole) > 0
    # search and fixed-model training draw on routes of their own
    by_round = {(m["phase"], m["step"]): (m["faults_raise"], m["faults_nan"]) for m in whole}
    assert any(by_round[("search", r)] != by_round[("baseline", r)] for r in (1, 2, 3))
    _, info, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "p"}"'],
                                stop_after=("search", 2))
    resumed, final, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "p"}"'],
                                       resume_dir=Path(info["run_dir"]))
    assert _plain(resumed) == _plain(whole)
    assert final["genotype"] == summary["genotype"]
