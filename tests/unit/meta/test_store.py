"""Meta-trained weights in the run dir: which settings name them, and what a bad file does."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from torch import nn

from fednas.config.loading import load_config
from fednas.errors import CheckpointError
from fednas.meta import store as meta_store
from fednas.meta.setup import meta_setup
from fednas.reporting.rundir import RunDir

SCENARIO = REPO / "simulations" / "fewshot_glyphs.toml"


def key(what: str = "searched", shots: int = 1, *overrides: str) -> dict:
    return meta_store.training_key(meta_setup(load_config(SCENARIO, list(overrides))), what, shots)


@pytest.mark.parametrize("override", [
    "seed=3", "meta.iterations=7", "meta.inner-lr=0.3", "meta.outer-lr=1e-2", "meta.ways=3",
    'meta.algorithm="maml"', "meta.inner-steps=2", "meta.meta-batch=2", "meta.queries=7",
    'meta.init="scratch"', "meta.clients=2", "meta.glyph-letters=10", "space.cell.channels=4",
    "meta.seed-offset=1", "meta.stem-stride=2"])
def test_every_training_setting_changes_the_key(override):
    assert meta_store.digest(key()) != meta_store.digest(key("searched", 1, override))


@pytest.mark.parametrize("override", [
    "meta.eval-tasks=50", "meta.eval-inner-steps=10", 'meta.eval-split="val"',
    "meta.log-every=5", 'meta.models=["searched"]', "meta.shots=[1]", "meta.atnas.population=4",
    "meta.atnas.holdout=2", 'meta.root="/elsewhere"', "meta.metanas.arch-lr=0.1"])
def test_scoring_settings_keep_the_key(override):
    assert key() == key("searched", 1, override)


def test_model_specific_keys_reach_only_their_models():
    assert key("searched", 1) != key("searched", 5) != key("conv4", 1)
    arch_lr = "meta.metanas.arch-lr=0.1"
    assert key("metanas-supernet") != key("metanas-supernet", 1, arch_lr)
    uniform = 'meta.atnas.prior="uniform"'
    assert key("atnas-supernet", 1, uniform) == key("atnas-supernet", 1, uniform, arch_lr)
    prior = 'meta.atnas.prior="metanas"'
    assert key("atnas-supernet", 1, prior) != key("atnas-supernet", 1, prior, arch_lr)
    assert key("atnas-supernet", 1, prior) != key("atnas-supernet", 1, prior,
                                                 "meta.atnas.temperature=0.5")
    assert key("atnas-prior", 1, prior) == key("atnas-prior", 1, prior,
                                               "meta.atnas.temperature=0.5")
    with pytest.raises(ValueError, match="unknown 'resnet'"):
        key("resnet")


def test_save_then_load_roundtrip_and_bad_files(tmp_path):
    run = RunDir(tmp_path, "store")
    k = key()
    assert meta_store.load(run.path, k) is None
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    name = meta_store.save(run, k, model, 12.5, derived={"genotype": ("a", 1)})
    assert name == meta_store.file_name(k) and name.startswith("meta-searched-1shot-")
    saved = meta_store.load(run.path, k)
    assert (saved.name, saved.seconds, saved.extra) == (name, 12.5,
                                                        {"derived": {"genotype": ["a", 1]}})
    fresh = nn.Linear(3, 2)
    meta_store.load_into(fresh, saved)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    with pytest.raises(CheckpointError, match=f"{name}: does not fit"):
        meta_store.load_into(nn.Linear(4, 2), saved)
    other = key("searched", 1, "meta.iterations=7")  # another setting: another file
    assert meta_store.load(run.path, other) is None
    blob = torch.load(run.path / name)  # a file whose recorded settings are not its name's
    blob["meta"]["training"] = other
    torch.save(blob, run.path / name)
    with pytest.raises(CheckpointError, match="recorded meta-training settings differ"):
        meta_store.load(run.path, k)


def test_key_fingerprints_the_run_weights_models_start_from(tmp_path):
    setup = meta_setup(load_config(SCENARIO))
    bare = meta_store.training_key(setup, "searched", 1, tmp_path)
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, tmp_path / "searched.pt")
    first = meta_store.training_key(setup, "searched", 1, tmp_path)
    assert set(first["run_weights"]) == {"searched.pt"} and first != bare
    assert meta_store.training_key(setup, "searched", 1, tmp_path) == first  # unchanged file
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, tmp_path / "searched.pt")
    assert meta_store.training_key(setup, "searched", 1, tmp_path) != first  # retrained
    # from scratch: the run's weights do not matter
    assert (meta_store.training_key(setup, "conv4", 1, tmp_path)
            == meta_store.training_key(setup, "conv4", 1))
    scratch = meta_setup(load_config(SCENARIO, ['meta.init="scratch"']))
    assert "run_weights" not in meta_store.training_key(scratch, "searched", 1, tmp_path)
