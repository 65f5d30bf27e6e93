"""Determinism audit: every scenario in simulations/, shrunk to a tiny config on digits, run
twice with the same seed on this machine, gives bit-identical results.

Compared: every JSON/JSONL record the run writes (metrics per round, summary, genotype,
partitions, compression, meta) with wall-clock fields and the run dir's own path taken out
(``clients.jsonl``, the log of which Ray worker ran each client, is scheduling, not a
result), and every tensor of every saved model (``*.pt``) bit for bit. A scenario added to
simulations/ is audited without touching this file: the shrinking overrides are chosen from
the features the scenario uses. The two runs of a scenario run at the same time as separate
processes (each its own Flower simulation and Ray cluster), so neither scheduling order nor
timing may change a number.

Across commits: the first run of every scenario is also compared with the records of the
same run made before the library was reorganised into subpackages (issue 28), kept in
``tests/fixtures/determinism/<scenario>.json`` (every record above, and a SHA-256 of every
saved tensor). So a refactor that changes any number, genotype or weight fails here. After a
change that is *meant* to change results, re-record them with
``FEDNAS_RECORD_DETERMINISM=1 pytest tests/e2e/test_determinism.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, REPO, tiny_sets

pytestmark = pytest.mark.slow

SIMULATIONS = REPO / "simulations"
SCENARIOS = sorted(p.stem for p in SIMULATIONS.glob("*.toml"))
FEDERATED = ["federation.rounds=2", "federation.subnet-rounds=1", "federation.local-steps=2",
             "federation.min-fit-clients=2", "federation.server-eval-samples=200",
             "federation.node-wait=300"]
COMPRESSION = ["compression.params=0.9", "compression.epochs=1", "compression.fine-tune-rounds=1",
               "compression.feddf-steps=2"]
META = ['meta.glyph-scripts=["latin", "greek", "cyrillic", "armenian", "georgian", "hebrew"]',
        "meta.glyph-letters=6", "meta.glyph-samples=6", "meta.ways=3", "meta.shots=[1, 2]",
        "meta.queries=2", "meta.meta-batch=2", "meta.iterations=2", "meta.eval-tasks=3",
        "meta.eval-inner-steps=1", "meta.atnas.population=2", "meta.atnas.generations=1",
        "meta.atnas.tournament=2", "meta.atnas.eval-tasks=1", "meta.atnas.iterations=1",
        "meta.atnas.augment-copies=2"]
CLOCK = ("timings", "run_dir", "seconds", "started", "finished")
SCHEDULING_LOG = "clients.jsonl"  # which Ray worker (pid) ran each client: not a result
DETERMINISM = FIXTURES / "determinism"
RECORD = os.environ.get("FEDNAS_RECORD_DETERMINISM") == "1"


def shrink(scenario: Path, root: Path) -> list[str]:
    """Tiny overrides for ``scenario``: digits, a tiny space, and its own features kept on."""
    raw = tomllib.loads(scenario.read_text())
    phases = set(raw.get("phases", []))
    sets = tiny_sets(root)
    if raw.get("mode") == "federated":
        sets += FEDERATED
        if raw.get("partition", {}).get("num-clients", 4) > 4:
            sets.append("federation.fraction-train=0.5")
        if raw.get("federation", {}).get("cohort-size", 1) != 1:  # not the machine's cores
            sets.append("federation.cohort-size=2")
    if phases & {"compress", "same-size", "pruned"}:
        sets += COMPRESSION
    if "meta" in phases:
        sets += [*META, f'meta.root="{root / "glyphs"}"']
    return sets


# the caller's thread caps would change float reduction orders, hence the recorded numbers
ENV = {**{k: v for k, v in os.environ.items()
          if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}, "PYTHONUNBUFFERED": "1"}


def run_twice(name: str, root: Path) -> list[tuple[int, str, Path]]:
    """Both runs of scenario ``name`` at once: (exit code, output, run dir) each."""
    scenario = SIMULATIONS / f"{name}.toml"
    procs = []
    for copy in ("a", "b"):
        out = root / name / copy
        sets = [a for s in shrink(scenario, out) for a in ("--set", s)]
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "simulations", "run", str(scenario), *sets, "--out-dir",
             str(out / "runs"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=ENV), out / "runs"))
    results = []
    for proc, runs in procs:
        output, _ = proc.communicate(timeout=1200)
        dirs = sorted(runs.iterdir()) if runs.is_dir() else []
        results.append((proc.returncode, output, dirs[0] if dirs else runs))
    return results


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> dict[str, list[tuple[int, str, Path]]]:
    """Every scenario run twice; two scenarios (four processes) at a time."""
    root = tmp_path_factory.mktemp("determinism")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_twice, name, root) for name in SCENARIOS}
        return {name: f.result() for name, f in futures.items()}


def without_clock(value: Any) -> Any:
    """``value`` without wall-clock fields (``*_s``, ``*_s_mean``, timings, the run's path)."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items()
                if not (k.endswith("_s") or "_s_" in k or k in CLOCK)}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def records(run_dir: Path) -> dict[str, Any]:
    """Every JSON/JSONL file of the run dir, parsed, the run dir's and the audit's paths
    replaced (``<run>``, ``<root>``: the audit's tmp dir holds data caches and glyphs)."""
    out = {}
    root = run_dir.parents[3]  # <root>/<scenario>/<copy>/runs/<run dir>
    for path in sorted([*run_dir.glob("*.json"), *run_dir.glob("*.jsonl")]):
        if path.name == SCHEDULING_LOG:
            continue
        text = path.read_text().replace(str(run_dir), "<run>").replace(str(root), "<root>")
        text = text.replace(f"/{run_dir.parents[1].name}/", "/<copy>/")  # a or b
        if path.suffix == ".jsonl":
            out[path.name] = [without_clock(json.loads(line)) for line in text.splitlines()]
        else:
            out[path.name] = without_clock(json.loads(text))
    return out


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a loaded checkpoint, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list | tuple) else ()
    return {k: t for key, v in items for k, t in tensors(v, f"{prefix}/{key}").items()}


def digests(run_dir: Path) -> dict[str, dict[str, str]]:
    """SHA-256 of every tensor of every saved model (``*.pt``), by model and tensor path."""
    out = {}
    for model in sorted(run_dir.glob("*.pt")):
        found = tensors(torch.load(model, weights_only=False))
        out[model.name] = {k: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()
                                             + str((t.dtype, tuple(t.shape))).encode()
                                             ).hexdigest() for k, t in sorted(found.items())}
    return out


def test_every_scenario_is_audited():
    assert {"quickstart", "federated_fashion", "fedex_fashion", "dp_fashion",
            "compress_fashion", "fewshot_glyphs"} <= set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_seed_gives_bit_identical_results(audit, name):
    (code_a, out_a, dir_a), (code_b, out_b, dir_b) = audit[name]
    assert code_a == 0, out_a[-3000:]
    assert code_b == 0, out_b[-3000:]
    a, b = records(dir_a), records(dir_b)
    assert {"metrics.jsonl", "summary.json"} <= set(a)
    assert a.keys() == b.keys()
    for file in a:
        assert a[file] == b[file], f"{name}: {file} differs between two runs of seed 0"
    models = sorted(p.name for p in dir_a.glob("*.pt"))
    assert models and models == sorted(p.name for p in dir_b.glob("*.pt"))
    for model in models:
        ta = tensors(torch.load(dir_a / model, weights_only=False))
        tb = tensors(torch.load(dir_b / model, weights_only=False))
        assert ta.keys() == tb.keys() and ta, model
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {model}{key} differs"


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_results_as_before_the_reorganisation(audit, name):
    """The records and weights of run a equal those recorded before issue 28's move."""
    code, out, run_dir = audit[name][0]
    assert code == 0, out[-3000:]
    now = {"records": json.loads(json.dumps(records(run_dir))), "tensors": digests(run_dir)}
    fixture = DETERMINISM / f"{name}.json"
    if RECORD:
        DETERMINISM.mkdir(parents=True, exist_ok=True)
        fixture.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        return
    assert fixture.is_file(), f"no recorded results for {name}: record them (module docstring)"
    before = json.loads(fixture.read_text())
    assert now["records"].keys() == before["records"].keys()
    for file in before["records"]:
        assert now["records"][file] == before["records"][file], f"{name}: {file} changed"
    assert now["tensors"] == before["tensors"], f"{name}: saved weights changed"
