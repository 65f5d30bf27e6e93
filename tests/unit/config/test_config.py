"""Strict scenario loading: unknown keys, wrong types and bad values name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO

from fednas.config.loading import load_config
from fednas.config.run_config import RunConfig
from fednas.config.tools import dumps_toml, parse_override, to_dict
from fednas.errors import ConfigError

SCENARIOS = sorted(REPO.joinpath("simulations").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.search.batch_size == 64 and cfg.space.name == "cell"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path):
    cfg = load_config(path)
    assert cfg.name


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("text, match", [
    ("bogus = 1", r"unknown config key 'bogus'.*allowed keys at the top level: name, seed"),
    ("[search]\nlrr = 0.1", r"unknown config key 'search.lrr'.*\[search\].*arch-lr"),
    ("[space.cell]\nchanels = 8", r"'space.cell.chanels'"),
    ("[search]\narch_lr = 0.1", r"unknown config key 'search.arch_lr'"),  # kebab-case only
    ("[nope]\nx = 1", r"unknown config key 'nope'"),
])
def test_unknown_keys_are_named(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text, match", [
    ('seed = "zero"', r"seed: expected int, got str 'zero'"),
    ("[search]\nepochs = 1.5", r"search.epochs: expected int, got float"),
    ("[runtime]\nprogress = 1", r"runtime.progress: expected bool"),
    ("[search]\nlr = true", r"search.lr: expected float, got bool"),
    ('[space.cell]\nops = "skip_connect"', r"space.cell.ops: expected list of str"),
    ("search = 3", r"search: expected a table"),
])
def test_wrong_types_are_named(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("override, match", [
    ("search.lr=-0.1", r"search.lr: must be > 0.0 \(got -0.1\)"),
    ("partition.alpha=0", r"partition.alpha: must be > 0.0 \(got 0.0\)"),
    ("partition.scheme=random", r"partition.scheme: 'random' is not allowed; allowed values: "
                                r"\['iid', 'dirichlet', 'pathological', 'natural'\]"),
    ("data.val-fraction=1.0", r"data.val-fraction: must be < 1.0"),
    ("search.momentum=1.0", r"search.momentum: must be < 1.0"),
    ('space.cell.ops=["skip_connect", "conv_9x9"]', r"space.cell.ops: \['conv_9x9'\] not allowed"),
    ("space.cell.channels=7", r"space.cell.channels: must be even"),
    ("space.width.depth=21", r"space.width.depth: must be 6n\+2"),
    ('phases=["retrain"]', r"phases: 'retrain' needs 'search'"),
    ('phases=["random","baseline"]', r"phases: 'random' needs 'search'"),
    ('phases=["search", "deploy"]', r"phases: \['deploy'\] not allowed"),
    ("runtime.device=tpu", r"runtime.device: 'tpu' is not allowed"),
    ("partition.num-clients=0", r"partition.num-clients: must be >= 1"),
    ("search.epochs", r"expected key=value"),
    ("federation.ema-decay=1.0", r"federation.ema-decay: must be < 1.0"),
    ("federation.bn-stats=proxy", r"federation.bn-stats: 'proxy' is not allowed"),
])
def test_bad_values_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("extra, match", [
    ("federation.bn-stats=server", r'federation.bn-stats = "server" recalibrates'),
    ("privacy.mode=central", r'privacy.mode = "central" .*recalibrates'),
])
def test_server_side_bn_needs_calibration_images(extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["mode=federated", "federation.bn-calibration-samples=0", extra])
    load_config(None, ["mode=federated", extra])  # the default 500 images


def test_overrides_parse_toml_values():
    assert parse_override("search.lr=0.1") == (["search", "lr"], 0.1)
    assert parse_override("data.dataset=digits") == (["data", "dataset"], "digits")
    assert parse_override("data.dataset=npz:/tmp/x.npz") == (["data", "dataset"], "npz:/tmp/x.npz")
    assert parse_override('phases=["search"]') == (["phases"], ["search"])
    assert parse_override("federation.fault-kind=nan") == (["federation", "fault-kind"], "nan")
    cfg = load_config(None, ["search.epochs=3", "space.width.width-choices=[0.5, 1]"])
    assert cfg.search.epochs == 3
    assert cfg.space.width.width_choices == (0.5, 1.0)


def test_override_beats_file(tmp_path):
    path = write(tmp_path, "seed = 4\n[search]\nepochs = 2\n")
    cfg = load_config(path, ["search.epochs=5"])
    assert (cfg.seed, cfg.search.epochs) == (4, 5)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="scenario file not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "seed = = 1"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(SCENARIOS[0], ["search.lr=0.02"])
    path = write(tmp_path, dumps_toml(to_dict(cfg)))
    assert load_config(path) == cfg
