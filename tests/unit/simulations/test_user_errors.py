"""Every user error of every subcommand is one ``fednas: error:`` line and exit 2, found before
any run dir, data load or Ray start; anything else is a bug: exit 1, one line naming a saved
traceback file (``--debug``: the traceback inline)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_sets

import simulations.cli as cli
from simulations.sweep import failure_reason


def error_line(capsys, code: int, *needles: str) -> str:
    """The one stderr line of a user error (exit 2), which names every needle."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fednas: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    """--set arguments of a seconds-long digits run (run dirs would go to tmp/out)."""
    return sets(*tiny_sets(tmp_path))


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """A check that let a bad config through would start Ray: fail instead."""
    import flwr.simulation

    def started(*_, **__):
        raise AssertionError("the Flower simulation started")

    monkeypatch.setattr(flwr.simulation, "run_simulation", started)


@pytest.fixture
def non_utf8(tmp_path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    return path


GRID = ["--grid", "federation.server-lr=1,2"]


@pytest.mark.parametrize("command", [["run"], ["config"], ["sweep"], ["meta"],
                                     ["halving", *GRID, "--budget", "4"]],
                         ids=lambda c: c[0])
def test_scenario_paths_that_are_not_toml_text(command, non_utf8, tmp_path, capsys):
    code = cli.main([command[0], str(non_utf8), *command[1:]])
    error_line(capsys, code, str(non_utf8), "not UTF-8")
    if command[0] != "meta":  # fednas meta DIR is a run dir
        code = cli.main([command[0], str(tmp_path), *command[1:]])
        error_line(capsys, code, f"scenario {tmp_path} is a directory")


@pytest.mark.parametrize("override, needles", [
    ("retrain.lr=inf", ["retrain.lr: must be a finite number", "inf"]),
    ("search.lr=nan", ["search.lr: must be a finite number", "nan"]),
    ("federation.server-lr=1e999", ["federation.server-lr", "inf"]),
    ("search.grad-clip=-inf", ["search.grad-clip", "inf: no clipping"]),
])
def test_non_finite_floats(override, needles, capsys):
    error_line(capsys, cli.main(["config", "--set", override]), *needles)


def test_inf_where_it_means_none_is_documented(capsys):
    assert cli.main(["config", *sets("search.grad-clip=inf", "federation.round-timeout=inf")]) == 0
    out = capsys.readouterr().out
    assert "grad-clip = inf" in out and "round-timeout = inf" in out
    assert cli.main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out
    for key, meaning in [("search.grad-clip", "no clipping"), ("retrain.grad-clip", "no clipping"),
                         ("federation.round-timeout", "wait"), ("federation.node-wait", "wait")]:
        line = next(x for x in keys.splitlines() if x.startswith(key + " "))
        assert f"inf = {meaning}" in line, line
    shard = next(x for x in keys.splitlines() if x.startswith("federation.shard-size "))
    assert "at most the space's candidates" in shard and "error" in shard


def test_shard_size_above_the_candidate_ops(capsys):
    code = cli.main(["config", *sets('mode="federated"', "federation.shard-size=9")])
    error_line(capsys, code, "federation.shard-size", "9", "8 candidates", "space.cell.ops")


def test_negative_counts(capsys):
    error_line(capsys, cli.main(["sweep", "/dev/null", "--parallel", "-1"]), "--parallel", "-1")
    error_line(capsys, cli.main(["sweep", "/dev/null", "--seeds", "-2"]), "--seeds", "-2")
    error_line(capsys, cli.main(["halving", "/dev/null", *GRID, "--budget", "-4"]),
               "halving --budget", "-4")
    error_line(capsys, cli.main(["halving", "/dev/null", *GRID, "--budget", "4", "--eta", "0"]),
               "halving --eta", "0")


def test_output_paths_below_a_regular_file(tmp_path, tiny, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    below = file / "runs"
    error_line(capsys, cli.main(["run", "/dev/null", *tiny, "--out-dir", str(below)]),
               "runtime.out-dir", str(below), "regular file")
    error_line(capsys, cli.main(["sweep", "/dev/null", *tiny, "--seeds", "0", "--out-dir",
                                 str(below)]), "sweep --out-dir", str(below))
    run = finished_run(tmp_path / "run")
    error_line(capsys, cli.main(["report", str(run), "--out", str(below)]),
               "report --out", str(below))
    error_line(capsys, cli.main(["export", str(run), "--model", "searched", "--out",
                                 str(below / "m.pt")]), "export --out", str(below / "m.pt"))
    error_line(capsys, cli.main(["meta", "/dev/null", *tiny, "--out-dir", str(file)]),
               "runtime.out-dir", str(file))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "searched.pt",
                                                     "summary.json"]


def finished_run(path: Path) -> Path:
    """A run dir as far as report and export look before writing: summary, metrics, weights."""
    path.mkdir()
    summary = {"scenario": "x", "seed": 0, "models": {"searched": {"test_acc": 0.5}}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text(json.dumps({"phase": "retrain", "step": 1}) + "\n")
    (path / "searched.pt").write_bytes(b"")
    return path


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root may write anywhere")
def test_read_only_out_dir(tmp_path, tiny, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        error_line(capsys, cli.main(["run", "/dev/null", *tiny, "--out-dir", str(locked)]),
                   "runtime.out-dir", str(locked), "permission denied")
    finally:
        locked.chmod(0o700)


def npz(tmp_path: Path, name: str, side: int, classes: int) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=rng.integers(0, 255, (80, side, side), dtype=np.uint8),
             y=np.arange(80) % classes)
    return f'data.dataset="npz:{path}"'


def config_errors(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Config and data errors: (--set overrides, what the message must name)."""
    one, small = npz(tmp_path, "one", 8, 1), npz(tmp_path, "small", 4, 3)
    space = ["space.cell.stem-stride=2", "space.cell.layers=3"]
    return {
        "empty ops": (["space.cell.ops=[]"], ["space.cell.ops"]),
        "only none": (['space.cell.ops=["none"]'], ["space.cell.ops", "'none'"]),
        "shard size": (['mode="federated"', "federation.shard-size=4"],
                       ["federation.shard-size", "4", "3 candidates"]),
        "inf lr": (["retrain.lr=inf"], ["retrain.lr", "inf"]),
        "bad dataset": (["data.dataset=bogus"], ["data.dataset", "bogus"]),
        "npz dir": ([f'data.dataset="npz:{tmp_path}"'], [str(tmp_path), "directory"]),
        "one class": ([one], ["one.npz", "1 class"]),
        "one class, federated": ([one, 'mode="federated"'], ["one.npz", "1 class"]),
        "small images": ([small, *space], ["small.npz", "4×4", "at least 5×5"]),
        "data.root a file": ([f'data.root="{tmp_path / "one.npz"}"'], ["data.root"]),
        "too many clients": (["partition.num-clients=100000"], ["partition.num-clients"]),
    }


CASES = ["empty ops", "only none", "shard size", "inf lr", "bad dataset", "npz dir", "one class",
         "one class, federated", "small images", "data.root a file", "too many clients"]


@pytest.mark.parametrize("case", CASES)
def test_no_run_dir_is_left_behind_by_a_config_error(case, tmp_path, tiny, capsys):
    overrides, needles = config_errors(tmp_path)[case]
    out = tmp_path / "out"
    code = cli.main(["run", "/dev/null", *tiny, *sets(*overrides), "--out-dir", str(out)])
    error_line(capsys, code, *needles)
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def boom(monkeypatch, tmp_path):
    """``fednas datasets`` raises a RuntimeError; traceback files go to tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("FEDNAS_DEBUG", raising=False)
    monkeypatch.setattr("simulations.crash._RUN_DIRS", [])  # no run dir opened yet

    def crash(_):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_datasets", crash)


def test_unexpected_errors_are_one_line_and_a_saved_traceback(boom, tmp_path, capsys):
    code = cli.main(["datasets"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fednas: internal error") and "RuntimeError: boom" in lines[0]
    path = Path(re.search(r"traceback saved to (\S+)", lines[0]).group(1))
    assert path.parent == tmp_path and path.name.startswith("fednas-traceback-")
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "second line" in text
    assert "def crash" not in text and "in crash" in text
    assert failure_reason(err, 1) == lines[0]  # what a sweep records for such a run


def test_a_bug_during_a_run_saves_its_traceback_in_the_run_dir(boom, tmp_path, capsys):
    from simulations.crash import note_run_dir

    run_dir = tmp_path / "runs" / "x-20261207-000000"
    run_dir.mkdir(parents=True)
    note_run_dir(run_dir)
    assert cli.main(["datasets"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"traceback saved to {run_dir / 'traceback.txt'} (rerun with --debug "
                         "to print it)"), line
    assert "RuntimeError: boom" in (run_dir / "traceback.txt").read_text()
    assert not list(tmp_path.glob("fednas-traceback-*"))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback(how, boom, tmp_path, capsys, monkeypatch):
    if how == "env":
        monkeypatch.setenv("FEDNAS_DEBUG", "1")
    code = cli.main(["--debug", "datasets"] if how == "flag" else ["datasets"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert not list(tmp_path.glob("fednas-traceback-*"))


def test_user_errors_stay_exit_2_with_debug(capsys):
    error_line(capsys, cli.main(["--debug", "config", "--set", "search.lr=-1"]), "search.lr")


def test_sweep_plan_checks_every_point(tmp_path, capsys):
    code = cli.main(["sweep", "/dev/null", "--seeds", "0", "--grid", "retrain.lr=0.1,inf",
                     "--out-dir", str(tmp_path / "out")])
    error_line(capsys, code, "retrain.lr", "inf")
    assert not (tmp_path / "out").exists()


def test_halving_leaves_nothing_behind_on_a_data_error(tmp_path, tiny, capsys):
    one = npz(tmp_path, "one", 8, 1)
    out = tmp_path / "out"
    code = cli.main(["halving", "/dev/null", *tiny, *sets(one, 'mode="federated"',
                                                          'phases=["baseline"]'),
                     *GRID, "--budget", "4", "--out-dir", str(out)])
    err = capsys.readouterr().err.splitlines()  # progress ("halving candidate 0 ..."), error
    assert code == 2 and err[-1].startswith("fednas: error: ") and "1 class" in err[-1]
    assert "Traceback" not in "".join(err)
    assert not out.exists() or not any(out.iterdir())
