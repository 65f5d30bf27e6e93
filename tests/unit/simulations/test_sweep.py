"""Sweeps and reports: seeds × grid points, interruption and resume, failures, CI tables."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from fednas.errors import ConfigError, FedNASError
from fednas.reporting.sweep_report import (
    collect,
    mean_std_ci,
    plot_privacy,
    privacy_points,
    write_report,
)
from simulations.sweep import failure_reason, parse_seeds, plan


def test_mean_std_ci_matches_hand_computation():
    m, sd, ci = mean_std_ci([1.0, 2.0, 3.0])
    assert (m, sd) == (2.0, 1.0)
    assert ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) · sd / √n
    assert math.isnan(mean_std_ci([5.0])[2])


def test_seed_parsing():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5]
    for bad in ("a", "1,1", "", "-1"):
        with pytest.raises(ConfigError, match="sweep --seeds"):
            parse_seeds(bad)


def test_failure_reason_names_the_cause_not_the_last_progress_line():
    progress = "[search] round 3/3: train_loss 0.99, test_acc 0.56"
    crash = f"{progress}\nTraceback (most recent call last):\n  File \"x.py\"\n" \
            f"RuntimeError: federated run failed\n{progress}\n"
    assert failure_reason(crash, 1) == "RuntimeError: federated run failed"
    user = f"{progress}\nfednas: error: data.root: no such directory\n"
    assert failure_reason(user, 2) == "fednas: error: data.root: no such directory"
    killed = failure_reason(f"{progress}\n", -9)
    assert killed == f"exit code -9 (signal 9); last output: {progress}"
    assert failure_reason("", 1) == "exit code 1"


def test_plan_is_deterministic_and_validates_every_point(tiny_overrides, tmp_path):
    a, runs, _ = plan(None, tiny_overrides, ["search.epochs=1,2"], [0, 1], str(tmp_path))
    b, _, _ = plan(None, tiny_overrides, ["search.epochs=1,2"], [0, 1], str(tmp_path))
    c, _, _ = plan(None, tiny_overrides, ["search.epochs=1,2"], [0, 2], str(tmp_path))
    assert a == b != c
    # keyed by the resolved config: the same config via a file or --set is one sweep, and
    # editing the scenario file gives a fresh one (never the old file's results)
    scenario = tmp_path / "s.toml"
    scenario.write_text("[search]\nlr = 0.03\n")
    via_file, _, _ = plan(scenario, tiny_overrides, [], [0], str(tmp_path))
    via_set, _, _ = plan(None, [*tiny_overrides, "search.lr=0.03"], [], [0], str(tmp_path))
    scenario.write_text("[search]\nlr = 0.04\n")
    edited, _, _ = plan(scenario, tiny_overrides, [], [0], str(tmp_path))
    assert via_file == via_set != edited
    assert [r.key for r in runs] == ["p00-s0", "p00-s1", "p01-s0", "p01-s1"]
    with pytest.raises(ConfigError, match="sweep point .*search.epochs"):
        plan(None, tiny_overrides, ["search.epochs=1,-2"], [0], str(tmp_path))
    with pytest.raises(ConfigError, match="set by the sweep run"):
        plan(None, tiny_overrides, ["seed=1,2"], [0], str(tmp_path))


def test_report_rejects_non_run_dirs(tmp_path):
    with pytest.raises(FedNASError, match="neither a sweep dir"):
        write_report([tmp_path])


@pytest.mark.slow
def test_sweep_interrupted_resumed_with_a_failing_point_then_reported(tiny_overrides, tmp_path):
    sets = [a for o in tiny_overrides + ['phases=["search","retrain","random","baseline"]']
            for a in ("--set", o)]
    cmd = [sys.executable, "-m", "simulations", "sweep", "/dev/null", "--seeds", "0,1,2",
           "--grid", f'data.dataset=digits,"npz:{tmp_path}/missing.npz"', *sets,
           "--out-dir", str(tmp_path / "sw")]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list((tmp_path / "sw").glob("*/p00-s0/*/summary.json")):
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # interrupt after the first run finished
    first.wait(timeout=60)
    (root,) = (tmp_path / "sw").iterdir()
    (done,) = root.glob("p00-s0/*/summary.json")
    stamp = done.stat().st_mtime_ns

    again = subprocess.run(cmd + ["--report"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 1, again.stderr[-2000:]  # the npz point fails on every seed
    assert "3 done, 3 failed, 6 runs" in again.stdout
    assert done.stat().st_mtime_ns == stamp  # not re-run
    assert len(list(root.glob("p00-s0/*/summary.json"))) == 1
    manifest = json.loads((root / "sweep.json").read_text())
    failed = [r for r in manifest["runs"] if r["state"] == "failed"]
    assert len(failed) == 3 and all("missing.npz" in r["error"] for r in failed)

    report = root / "report"
    text = (report / "report.md").read_text()
    assert text.startswith(f"# fednas report: {manifest['name']}\n")  # not the run keys
    for model in ("searched", "random", "baseline"):
        assert f"| data.dataset=digits | {model} | 3 |" in text
    assert "Failed or unfinished runs" in text and "missing.npz" in text
    csv_lines = (report / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("group,model,n,test_acc_mean") and len(csv_lines) == 4
    assert (report / "accuracy_vs_round.png").is_file() and (report / "pareto.png").is_file()


def _fake_run(path, seed, acc, eps=None):
    path.mkdir(parents=True)
    summary = {"scenario": "dp", "seed": seed, "timings": {"search": 10.0},
               "models": {"searched": {"test_acc": acc, "params": 1000, "flops": 5000,
                                       "rounds": 3}}}
    if eps is not None:
        summary["privacy"] = {"epsilon": eps}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"phase": "retrain", "step": s, "test_acc": acc - 0.1 * (3 - s),
                    "bytes_down": 10, "bytes_up": 5}) + "\n" for s in (1, 2, 3)))
    return path


def test_report_of_run_dirs_with_epsilon(tmp_path):
    dirs = [_fake_run(tmp_path / f"r{s}", s, acc, eps)
            for s, acc, eps in ((0, 0.80, 5.0), (1, 0.82, 6.0), (2, 0.84, 7.0))]
    result = write_report(dirs, tmp_path / "out")
    (row,) = result["rows"]
    assert row["n"] == 3 and row["test_acc_mean"] == pytest.approx(82.0)
    assert row["test_acc_std"] == pytest.approx(2.0) and row["epsilon"] == pytest.approx(6.0)
    assert row["bytes_per_run"] == 45 and row["budget"] == 3
    assert "| dp | searched | 3 | 82.00 ± 2.00 |" in result["markdown"]
    assert " ε |" in result["markdown"]
    for name in ("report.md", "report.csv", "accuracy_vs_round.png", "pareto.png",
                 "pareto_flops.png", "privacy_vs_accuracy.png"):
        assert (tmp_path / "out" / name).is_file(), name


def test_privacy_plot_has_the_no_dp_reference(tmp_path):
    dp = [_fake_run(tmp_path / f"dp{s}", s, acc, 6.0) for s, acc in ((0, 0.80), (1, 0.82))]
    plain = [_fake_run(tmp_path / f"off{s}", s, acc) for s, acc in ((0, 0.83), (1, 0.85))]
    runs, _ = collect([*dp, *plain])
    points, reference = privacy_points(runs)
    assert points == {("dp", "searched"): [(6.0, 80.0), (6.0, 82.0)]}
    assert reference == {("dp", "searched"): [pytest.approx(83.0), pytest.approx(85.0)]}
    assert plot_privacy(runs, tmp_path / "p.png") == tmp_path / "p.png"
    assert plot_privacy(collect(plain)[0], tmp_path / "q.png") is None  # no DP run: no plot


def _fake_sweep(root, overrides, seed, acc, eps=None):
    run_dir = _fake_run(root / f"p00-s{seed}" / "run", seed, acc, eps)
    manifest = {"name": "dp", "overrides": overrides, "grid": {}, "seeds": [seed], "runs": [
        {"key": f"p00-s{seed}", "seed": seed, "values": {}, "run_dir": str(run_dir),
         "state": "done"}]}
    (root / "sweep.json").write_text(json.dumps(manifest))
    return root


def test_report_pools_seed_sweeps_of_one_setting_and_splits_settings(tmp_path):
    dp = [_fake_sweep(tmp_path / f"c{s}", ["progress=false", "privacy.mode=central"], s,
                      acc, 6.0) for s, acc in ((0, 0.80), (1, 0.82))]
    off = [_fake_sweep(tmp_path / f"o{s}", ["privacy.mode=off", "progress=false"], s, acc)
           for s, acc in ((0, 0.84), (1, 0.86))]
    result = write_report([*dp, *off], tmp_path / "out")
    by_group = {r["group"]: r for r in result["rows"]}
    assert set(by_group) == {"dp [privacy.mode=central]", "dp [privacy.mode=off]"}
    assert by_group["dp [privacy.mode=central]"]["n"] == 2
    assert by_group["dp [privacy.mode=off]"]["test_acc_mean"] == pytest.approx(85.0)
    assert result["markdown"].startswith("# fednas report: dp\n")
    # the same overrides everywhere: the plain scenario name, all seeds pooled
    (row,) = write_report(dp, tmp_path / "out2")["rows"]
    assert row["group"] == "dp" and row["n"] == 2
