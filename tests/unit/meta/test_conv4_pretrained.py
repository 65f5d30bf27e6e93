"""Conv-4 as the baseline phase, and the meta phase's `conv4-pretrained` that starts from it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_meta

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.meta.models import initial_model
from fednas.meta.setup import meta_setup
from fednas.models.baselines import build_model
from fednas.models.conv4 import Conv4

SHAPE = (1, 28, 28)
SETS = ["baseline.model=\"conv4\"", "baseline.width=6", "meta.ways=3",
        'meta.models=["conv4", "conv4-pretrained"]', "meta.conv4-hidden=6",
        "meta.atnas.enabled=false", "meta.atnas.params-ratio=0",
        'phases=["baseline", "meta"]']


@pytest.fixture
def cfg(tiny_overrides, tmp_path):
    return load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS])


def save_baseline(run_dir, hidden: int, classes: int = 10) -> Conv4:
    torch.manual_seed(7)
    model = build_model("conv4", input_shape=SHAPE, num_classes=classes, width=hidden)
    torch.save({"state_dict": model.state_dict()}, run_dir / "baseline.pt")
    return model


def test_conv4_is_a_baseline_model():
    model = build_model("conv4", input_shape=SHAPE, num_classes=7, width=5)
    assert isinstance(model, Conv4) and model.features[0].out_channels == 5
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 7)
    x = torch.randn(3, *SHAPE)
    model.train()
    model(x)  # running statistics move
    model.eval()  # and are used: one image scores the same alone as in a batch
    assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
    assert "features.1.running_mean" in model.state_dict()


def test_pretrained_conv4_takes_the_baseline_body_and_a_new_head(cfg, tmp_path):
    trained = save_baseline(tmp_path, hidden=6).state_dict()
    model, source = initial_model("conv4-pretrained", meta_setup(cfg), tmp_path, 1, SHAPE)
    scratch, scratch_source = initial_model("conv4", meta_setup(cfg), tmp_path, 1, SHAPE)
    assert (source, scratch_source) == ("baseline.pt", "scratch")
    state = model.state_dict()
    body = [k for k in state if not k.startswith("head.")]
    assert body and all(torch.equal(state[k], trained[k]) for k in body)
    assert state["head.weight"].shape[0] == 3  # meta.ways classes, not the baseline's 10
    assert not torch.equal(scratch.state_dict()["features.0.weight"], trained["features.0.weight"])


def test_pretrained_conv4_names_a_missing_or_mismatched_baseline(cfg, tmp_path):
    with pytest.raises(ConfigError, match="baseline.pt is missing"):
        initial_model("conv4-pretrained", meta_setup(cfg), tmp_path, 1, SHAPE)
    save_baseline(tmp_path, hidden=4)  # baseline.width says 6
    with pytest.raises(ConfigError, match="not a Conv-4 of width 6"):
        initial_model("conv4-pretrained", meta_setup(cfg), tmp_path, 1, SHAPE)


@pytest.mark.parametrize("bad", ['phases=["meta"]', 'baseline.model="cnn"'])
def test_conv4_pretrained_needs_a_conv4_baseline_phase(tiny_overrides, tmp_path, bad):
    with pytest.raises(ConfigError, match="'conv4-pretrained' starts from the run's baseline"):
        load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS, bad])


def test_key_fingerprints_the_baseline_weights(cfg, tiny_overrides, tmp_path):
    from fednas.meta import store as meta_store

    setup = meta_setup(cfg)
    bare = meta_store.training_key(setup, "conv4-pretrained", 1, tmp_path)
    searched = meta_store.training_key(setup, "searched", 1, tmp_path)
    save_baseline(tmp_path, hidden=6)
    first = meta_store.training_key(setup, "conv4-pretrained", 1, tmp_path)
    assert set(first["run_weights"]) == {"baseline.pt"} and first != bare
    assert meta_store.training_key(setup, "searched", 1, tmp_path) == searched  # not its file
    save_baseline(tmp_path, hidden=6, classes=11)
    assert meta_store.training_key(setup, "conv4-pretrained", 1, tmp_path) != first
    wider = load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS, "baseline.width=8"])
    assert (meta_store.training_key(meta_setup(wider), "conv4-pretrained", 1, tmp_path)["baseline"]
            != first["baseline"])


@pytest.mark.slow
def test_baseline_phase_then_meta_compares_conv4_with_and_without_pretraining(tiny_overrides,
                                                                                tmp_path):
    from simulations.pipeline import Pipeline

    cfg = load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS,
                             'data.dataset="meta-train"', "data.val-fraction=0.2"])
    run_dir, summary = Pipeline(cfg).run()
    assert summary["models"]["baseline"]["params"] > 0
    meta = json.loads((run_dir / "meta.json").read_text())
    pre, scratch = meta["models"]["conv4-pretrained"], meta["models"]["conv4"]
    assert (pre["init"], scratch["init"]) == ("baseline.pt", "scratch")
    assert pre["params"] == scratch["params"]  # the same Conv-4: only the start differs
    assert pre["1shot"]["weights"].startswith("meta-conv4-pretrained-1shot-")
    # AT-NAS is off, yet the models are also scored on its task subset (meta.atnas.eval-tasks
    # = 2 of the 4 test tasks): bench/fewshot's reruns at a tuned inner lr keep that figure
    assert meta["atnas"] == {}
    for entry in (pre, scratch):
        sub = entry["1shot"]["atnas_tasks"]
        assert 0.0 <= sub["acc"] <= 1.0 and sub["ci95"] >= 0.0
