"""Pre-flight checks (fednas/config/preflight.py): scenario paths, finite floats, output
paths, shard sizes, datasets that cannot train a classifier (CLI behaviour:
tests/unit/simulations/test_user_errors.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fednas.config import preflight
from fednas.config.loading import load_config
from fednas.errors import ConfigError, DataError

INF_KEYS = ("search.grad-clip", "retrain.grad-clip", "federation.round-timeout",
            "federation.node-wait")


def test_scenario_that_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match=f"scenario {tmp_path} is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "s.toml"
    binary.write_bytes(b"name = 'x'\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"s\.toml is not UTF-8 text \(byte 11"):
        load_config(binary)
    with pytest.raises(ConfigError, match="scenario file not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("text, key", [
    ("[retrain]\nlr = inf", "retrain.lr"),
    ("[search]\nlr = nan", "search.lr"),
    ("[federation]\nserver-lr = 1e999", "federation.server-lr"),
    ("[partition]\nalpha = inf", "partition.alpha"),
    ("[meta]\nsplit = [inf, 0.0, 0.0]", "meta.split"),
    ("[fedex.ranges.lr]\nhigh = inf", "fedex.ranges.lr.high"),
    ("[search]\ngrad-clip = -inf", "search.grad-clip"),
    ("[federation]\nround-timeout = nan", "federation.round-timeout"),
])
def test_non_finite_floats_are_rejected(tmp_path, text, key):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{key}: must be a finite number"):
        load_config(path)


@pytest.mark.parametrize("spelling", ["inf", "+inf", "1e999"])
def test_inf_overrides_reach_the_check(spelling):
    with pytest.raises(ConfigError, match="retrain.lr: must be a finite number.*got inf"):
        load_config(None, [f"retrain.lr={spelling}"])
    with pytest.raises(ConfigError, match="search.lr: must be a finite number.*got nan"):
        load_config(None, ["search.lr=nan"])


@pytest.mark.parametrize("key", INF_KEYS)
def test_keys_where_inf_means_none_accept_it(key):
    cfg = load_config(None, [f"{key}=inf"])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name.replace("-", "_")) == float("inf")


def test_shard_size_above_the_candidates_names_key_value_and_count():
    fed = ['mode="federated"']
    with pytest.raises(ConfigError, match=r"federation.shard-size: 9 exceeds the 8 candidates"
                                          r".*space.cell.ops.*1\.\.8"):
        load_config(None, [*fed, "federation.shard-size=9"])
    with pytest.raises(ConfigError, match=r"shard-size: 3 exceeds the 2 .*width-choices"):
        load_config(None, [*fed, 'space.name="width"', "space.width.width-choices=[0.5, 1.0]",
                           "federation.shard-size=3"])
    assert load_config(None, [*fed, "federation.shard-size=8"]).federation.shard_size == 8


@pytest.mark.parametrize("ops, match", [("[]", "non-empty list"),
                                        ('["none"]', "other than 'none'"),
                                        ('["skip_connect", "skip_connect"]', "distinct")])
def test_candidate_ops_are_checked_when_loading(ops, match):
    with pytest.raises(ConfigError, match=f"space.cell.ops: .*{match}"):
        load_config(None, [f"space.cell.ops={ops}"])


def test_output_dir_below_a_file_or_a_broken_link(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match=f"out: {file} is a regular file"):
        preflight.check_output_dir(file, "out")
    with pytest.raises(ConfigError, match=f"out: {file}/a/b lies below {file}, which is a "
                                          "regular file"):
        preflight.check_output_dir(file / "a" / "b", "out")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        preflight.check_output_dir(link, "out")
    assert preflight.check_output_dir(tmp_path / "new" / "dir", "out") == tmp_path / "new/dir"
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        preflight.check_output_file(tmp_path, "export --out")


def test_output_dir_that_cannot_be_written(tmp_path, monkeypatch):
    """Simulated with os.access (tests often run as root, who may write anywhere)."""
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match=f"out: {tmp_path}/runs cannot be created in "
                                          f"{tmp_path} \\(permission denied\\)"):
        preflight.check_output_dir(tmp_path / "runs", "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a 0o500 directory")
def test_read_only_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="permission denied"):
        preflight.check_output_dir(locked / "runs", "runtime.out-dir")


def test_check_count():
    assert preflight.check_count(0, "sweep --parallel", 0) == 0
    with pytest.raises(ConfigError, match=r"halving --eta: must be >= 2 \(got 1\)"):
        preflight.check_count(1, "halving --eta", 2)


def data(x: np.ndarray, y: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(train_y=torch.as_tensor(y), input_shape=tuple(x.shape[1:]),
                           num_classes=int(y.max()) + 1,
                           class_names=tuple(str(c) for c in range(int(y.max()) + 1)))


def test_one_class_dataset():
    cfg = load_config(None, ['data.dataset="npz:one.npz"'])
    with pytest.raises(DataError, match=r"'npz:one.npz': the training split holds 1 class "
                                        r"\['0'\]; a classifier needs at least 2"):
        preflight.check_dataset(cfg, data(np.zeros((4, 1, 8, 8)), np.zeros(4, dtype=int)))


@pytest.mark.parametrize("layers, stem, side, need", [(3, 2, 4, 5), (3, 1, 2, 3), (2, 1, 1, 2)])
def test_too_small_images_for_the_space_name_the_minimum(layers, stem, side, need):
    """The minimum follows the space's stem stride and reductions (not a constant)."""
    cfg = load_config(None, ["space.cell.channels=4", f"space.cell.layers={layers}",
                             "space.cell.nodes=2", f"space.cell.stem-stride={stem}",
                             'phases=["search"]'])
    y = np.arange(6) % 3
    with pytest.raises(DataError, match=f"{side}×{side} images are too small for "
                                        f"space.name = 'cell'.*at least {need}×{need}"):
        preflight.check_models(cfg, data(np.zeros((6, 1, side, side)), y))
    preflight.check_models(cfg, data(np.zeros((6, 1, need, need)), y))


def test_too_small_images_for_the_baseline():
    cfg = load_config(None, ['phases=["baseline"]', "baseline.width=4"])
    with pytest.raises(DataError, match="too small for baseline.model = 'cnn'.*at least 4×4"):
        preflight.check_models(cfg, data(np.zeros((6, 1, 3, 3)), np.arange(6) % 3))


def test_model_checks_leave_the_random_state_alone():
    cfg = load_config(None, ["space.cell.channels=4", "space.cell.layers=2"])
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    threads = torch.get_num_threads()
    preflight.check_models(cfg, data(np.zeros((6, 1, 8, 8)), np.arange(6) % 3))
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()
    assert torch.get_num_threads() == threads
