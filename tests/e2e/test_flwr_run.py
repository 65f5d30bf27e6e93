"""`flwr run .` (Flower's own CLI) on the fednas ServerApp/ClientApp: see docs/flwr_run.md.

The fast tests check the `[tool.flwr.app]` sections of pyproject.toml against the scenario
schema and Flower's own run-config handling; the slow test runs the CLI end to end on a
private local SuperLink (temp FLWR_HOME, free port) and stops only the processes it started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import typing
from pathlib import Path

import pytest
from conftest import REPO

from fednas.config.run_config import RunConfig
from fednas.config.tools import to_kebab
from fednas.errors import ConfigError

REPO = REPO
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FLWR_APP = PYPROJECT["tool"]["flwr"]["app"]

#: The tiny scenario of docs/flwr_run.md (digits, 4 clients, 1 round per phase).
TINY = ('scenario="simulations/federated_fashion.toml" data.dataset="digits" '
        "partition.num-clients=4 federation.rounds=1 federation.subnet-rounds=1 "
        "space.cell.channels=4 space.cell.layers=2 space.cell.nodes=2 space.cell.stem-stride=1 "
        "federation.local-steps=2 search.batch-size=16 baseline.width=4 "
        "federation.min-fit-clients=2")


def scenario_keys(cls: type = RunConfig, prefix: str = "") -> set[str]:
    """Every dotted leaf key of the scenario schema (kebab-case)."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        key = prefix + to_kebab(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= scenario_keys(hints[f.name], key + ".")
        else:
            keys.add(key)
    return keys


def fused_run_config(*overrides: str) -> dict:
    """What the SuperLink hands the apps: pyproject defaults fused with --run-config."""
    from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

    defaults = flatten_dict(FLWR_APP["config"])
    return fuse_dicts(defaults, parse_config_args(list(overrides)), check_keys=True)


# -- fast: configuration ------------------------------------------------------------------
def test_pyproject_declares_flower_app():
    from flwr.common.config import validate_config

    assert FLWR_APP["publisher"] == "fednas"
    assert FLWR_APP["components"] == {"serverapp": "simulations.server_app:app",
                                      "clientapp": "simulations.client_app:app"}
    ok, errors, _ = validate_config(PYPROJECT, check_module=False, project_dir=REPO)
    assert ok, errors
    # [tool.flwr.federations] would make `flwr run` rewrite pyproject.toml (migration).
    assert "federations" not in PYPROJECT["tool"]["flwr"]


def test_run_config_declares_every_scenario_key():
    """`flwr run` rejects --run-config keys missing from [tool.flwr.app.config]."""
    from flwr.common.config import flatten_dict

    declared = flatten_dict(FLWR_APP["config"])
    assert declared.pop("scenario") == "simulations/federated_fashion.toml"
    want = scenario_keys() - {"mode"}
    assert set(declared) == want, (
        f"add to [tool.flwr.app.config]: {sorted(want - set(declared))}; "
        f"remove: {sorted(set(declared) - want)}")
    assert all(v == "" for v in declared.values())


def test_defaults_keep_the_scenario_values():
    from simulations.runconfig import config_from_run_config

    cfg = config_from_run_config(fused_run_config())
    assert cfg.name == "federated_fashion" and cfg.mode == "federated"
    assert cfg.data.dataset == "fashion-mnist" and cfg.partition.num_clients == 10
    assert cfg.runtime.out_dir == "runs"


def test_documented_overrides_reach_the_scenario(tmp_path):
    from simulations.runconfig import config_from_run_config

    # one --run-config string: Flower 1.41 merges several -c options section by section
    # (a later `runtime.x=...` drops an earlier `runtime.y=...`), see docs/flwr_run.md
    cfg = config_from_run_config(fused_run_config(
        f"{TINY} phases=\"['search', 'retrain']\" runtime.out-dir=\"{tmp_path}\" "
        "runtime.progress=false search.lr=0.01 federation.client-cpus=1"))
    assert cfg.data.dataset == "digits" and cfg.partition.num_clients == 4
    assert (cfg.space.cell.channels, cfg.space.cell.stem_stride) == (4, 1)
    assert cfg.phases == ("search", "retrain") and cfg.runtime.out_dir == str(tmp_path)
    assert cfg.runtime.progress is False and cfg.search.lr == 0.01
    assert cfg.federation.client_cpus == 1.0 and cfg.partition.alpha == 0.5  # from the file


def test_unknown_run_config_key_is_rejected_by_flower():
    with pytest.raises(ValueError, match="not present"):
        fused_run_config("federation.no-such-key=1")


def test_scenario_path_resolution(tmp_path, monkeypatch):
    from simulations import runconfig

    # relative: the app dir (checkout or installed FAB) first, then the working directory
    assert runconfig.resolve_scenario("simulations/quickstart.toml") == (
        runconfig.APP_DIR / "simulations/quickstart.toml")
    (tmp_path / "mine.toml").write_text('name = "mine"\n')
    monkeypatch.chdir(tmp_path)
    assert runconfig.resolve_scenario("mine.toml") == tmp_path / "mine.toml"
    assert runconfig.config_from_run_config({"scenario": "mine.toml"}).name == "mine"
    assert runconfig.config_from_run_config(
        {"scenario": str(tmp_path / "mine.toml")}).name == "mine"
    with pytest.raises(ConfigError, match="scenario file not found"):
        runconfig.resolve_scenario("nowhere.toml")


# -- slow: the real CLI -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def our_processes(flwr_home: Path) -> list[int]:
    """The local SuperLink that `flwr run` started for ``flwr_home`` and its descendants.

    Only a SuperLink whose command line names this test's private log file is ours; its
    process tree holds flower-superexec, flwr-simulation and that run's Ray processes.
    """
    log_file = str(flwr_home / "local-superlink" / "superlink.log")
    roots = [int(p.name) for p in Path("/proc").iterdir()
             if p.name.isdigit() and log_file in _cmdline(int(p.name))]
    tree, found, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def stop_processes(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM (the SuperLink first: it stops its SuperExec), then SIGKILL what is left."""
    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_flwr_run_dot_runs_a_tiny_federated_scenario(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flwr").exists():
        pytest.skip(f"no flwr CLI next to {sys.executable}")
    flwr_home, out_dir = tmp_path / "flwr-home", tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),  # private config.toml, SuperLink state, installed FABs
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # no `uv sync` per run
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # never reuse (or collide with) a SuperLink someone else runs on the default port
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
    })
    command = [
        str(bin_dir / "flwr"), "run", ".", "--stream",
        "--federation-config", "num-supernodes=4 client-resources-num-cpus=1",
        "--run-config", (f'{TINY} data.max-train=400 data.root="{tmp_path / "cache"}" '
                         f'runtime.progress=false runtime.out-dir="{out_dir}"'),
    ]
    t0 = time.time()
    try:
        # --stream returns when the run ends, with exit status 0 even if the run failed
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        elapsed = time.time() - t0
        listing = subprocess.run([str(bin_dir / "flwr"), "ls", "--format", "json"], cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        log = flwr_home / "local-superlink" / "superlink.log"
        pytest.fail(f"{exc.cmd[:2]} did not finish within {exc.timeout} s; output:\n"
                    f"{exc.stdout}\n{log.read_text()[-4000:] if log.exists() else ''}")
    finally:
        stop_processes(our_processes(flwr_home))
    output = proc.stdout + proc.stderr
    print(f"flwr run took {elapsed:.1f} s")
    assert proc.returncode == 0, output[-4000:]
    runs = json.loads(listing.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], (runs, output[-4000:])
    assert "Successfully started run" in output, output[-4000:]
    assert "(4 simulated SuperNodes)" in output, output[-4000:]
    run_dirs = sorted(out_dir.glob("federated_fashion-*"))
    assert len(run_dirs) == 1, output[-4000:]
    assert "fednas run dir:" in output  # the ServerApp's stdout, streamed by --stream
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["dataset"]["name"] == "digits"
    assert set(summary["models"]) == {"searched", "baseline"}
    assert (flwr_home / "local-superlink" / "superlink.log").is_file()
    assert our_processes(flwr_home) == []
