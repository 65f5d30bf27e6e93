"""The meta phase's ``dap`` model (issue 32): a trained network pruned by DAP on the
meta-train classes, then meta-trained and scored beside the others."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_meta

from fednas.config.loading import load_config
from fednas.config.meta_dap import DapMetaConfig
from fednas.data.episodes import FewShotSet
from fednas.errors import ConfigError
from fednas.meta.dap_model import DapSource, prune_on_source, with_head
from fednas.models.conv4 import Conv4
from fednas.models.flops import count_params

SHAPE = (1, 28, 28)
CPU = torch.device("cpu")
D = DapMetaConfig(params=0.5, probe_steps=20, steps=30, batch_size=32)
SETS = ["baseline.model=\"conv4\"", "baseline.width=6", "meta.ways=3",
        'meta.models=["conv4-pretrained", "dap"]', "meta.atnas.enabled=false",
        "meta.atnas.params-ratio=0", 'phases=["baseline", "meta"]', "meta.dap.probe-steps=10",
        "meta.dap.steps=10"]


@pytest.fixture(scope="module")
def pool() -> FewShotSet:
    torch.manual_seed(0)
    templates = torch.rand(6, *SHAPE)
    y = torch.arange(6).repeat_interleave(8) + 10  # class ids need not start at 0
    x = (templates[y - 10] + 0.2 * torch.randn(48, *SHAPE)).clamp(0, 1)
    return FewShotSet(x, y, tuple({"name": str(i)} for i in range(16)))


def source() -> Conv4:
    torch.manual_seed(1)
    return Conv4(input_shape=SHAPE, num_classes=3, hidden=8)


def test_with_head_swaps_only_the_head():
    model = source()
    probe = with_head(model, 11)
    assert probe.head.out_features == 11 and model.head.out_features == 3
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in probe.state_dict().items()
               if not k.startswith("head."))
    with pytest.raises(ValueError, match="no linear head"):
        with_head(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), 4)


def test_pruned_on_the_source_task_within_budget_keeping_trained_channels(pool):
    model = source()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, record = prune_on_source(model, pool, D, seed=5, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert count_params(pruned) == record["params"] <= 0.5 * record["source_params"]
    assert record["source_params"] == count_params(model) and record["classes"] == 6
    widths = [pruned.features[4 * i].out_channels for i in range(4)]
    assert widths == record["kept_units"] and all(1 <= w <= 8 for w in widths)
    # the first conv keeps a subset of the trained filters, untouched
    rows = [next(j for j in range(8) if torch.equal(w, model.features[0].weight[j]))
            for w in pruned.features[0].weight]
    assert rows == sorted(set(rows))
    assert pruned(torch.zeros(2, *SHAPE)).shape == (2, 3)  # the ways-class head
    assert 0.0 <= record["probe_train_acc"] <= 1.0
    again, record2 = prune_on_source(source(), pool, D, seed=5, device=CPU)
    assert record2["kept_units"] == record["kept_units"]
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(),
                                                 again.state_dict().values(), strict=True))


def test_source_is_pruned_once_and_copied_per_shot_count(pool):
    calls = []

    def build(name):
        calls.append(name)
        return source(), "baseline.pt"

    dap = DapSource(D, pool, 3, CPU)
    a, origin, record = dap.model(build)
    b, _, _ = dap.model(build)
    assert calls == ["conv4-pretrained"] and origin == "dap(baseline.pt)"
    assert a is not b and record["source"] == "conv4-pretrained"


def test_budget_below_one_channel_per_layer_names_the_smallest(pool):
    with pytest.raises(ConfigError, match="smallest network DAP can reach"):
        prune_on_source(source(), pool, dataclasses.replace(D, params=50), seed=0, device=CPU)


@pytest.mark.parametrize("bad, match", [
    ('meta.models=["dap"]', "'conv4-pretrained' prunes the run's Conv-4"),
    ('meta.dap.source="searched"', "'searched' prunes the channels of a width-space"),
    ("meta.dap.params=0", "set at least one budget"),
])
def test_config_errors(tiny_overrides, tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS, bad]
                    + (['phases=["meta"]'] if "models" in bad else []))


@pytest.mark.slow
def test_meta_phase_scores_dap_beside_the_full_model(tiny_overrides, tmp_path):
    from simulations.pipeline import Pipeline

    cfg = load_config(None, [*tiny_overrides, *tiny_meta(tmp_path), *SETS,
                             'data.dataset="meta-train"', "data.val-fraction=0.2"])
    run_dir, _ = Pipeline(cfg).run()
    meta = json.loads((run_dir / "meta.json").read_text())
    full, dap = meta["models"]["conv4-pretrained"], meta["models"]["dap"]
    assert dap["init"] == "dap(baseline.pt)" and dap["dap"]["source_params"] == full["params"]
    assert dap["params"] == dap["dap"]["params"] <= 0.5 * full["params"]
    for shots in (1, 2):
        assert 0.0 <= dap[f"{shots}shot"]["acc"] <= 1.0
        assert dap[f"{shots}shot"]["weights"].startswith(f"meta-dap-{shots}shot-")
