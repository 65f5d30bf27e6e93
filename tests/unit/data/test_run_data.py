"""`data.dataset = "meta-train"`: the search and retraining see only the meta-train classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_meta

from fednas.config.loading import load_config
from fednas.data.run_data import META_TRAIN, meta_train_raw, run_dataset
from fednas.meta.setup import meta_setup
from fednas.meta.tasks import fewshot_data


@pytest.fixture
def meta_train_cfg(tiny_overrides, tmp_path):
    return load_config(None, [*tiny_overrides, *tiny_meta(tmp_path),
                              f'data.dataset="{META_TRAIN}"', "data.val-fraction=0.2",
                              "partition.num-clients=2", "search.batch-size=8",
                              'phases=["search", "retrain", "meta"]'])


def test_meta_train_raw_holds_exactly_the_meta_train_classes(meta_train_cfg):
    data, split = fewshot_data(meta_setup(meta_train_cfg))
    raw = meta_train_raw(meta_setup(meta_train_cfg))
    train = np.sort(split.train)
    assert len(raw.class_names) == len(train) and set(raw.y.tolist()) == set(range(len(train)))
    assert raw.class_names == tuple(data.classes[c]["name"] for c in train)
    index = split.indices(data.y, "train")
    assert len(raw.y) == len(index) < len(data.y)  # val and test classes left out
    assert np.array_equal(train[raw.y], data.y.numpy()[index])  # relabelled in id order
    assert raw.x.shape == (len(index), *data.x.shape[2:], data.x.shape[1])
    assert np.array_equal(raw.x, data.x[index].numpy().transpose(0, 2, 3, 1))


def test_run_dataset_splits_and_normalises_the_meta_train_pool(meta_train_cfg):
    from simulations.client_app import local_clients

    data = run_dataset(meta_train_cfg.data, meta_train_cfg.seed, meta_setup(meta_train_cfg))
    _, split = fewshot_data(meta_setup(meta_train_cfg))
    assert data.name == META_TRAIN and data.num_classes == len(split.train)
    total = len(data.train_y) + len(data.val_y) + len(data.test_y)
    assert total == len(meta_train_raw(meta_setup(meta_train_cfg)).y)
    assert abs(float(data.train_x.mean())) < 1e-3  # normalised by the train split's statistics
    client_view = local_clients(meta_train_cfg).data  # what a Flower client loads: the same
    assert torch.equal(client_view.train_x, data.train_x)
    assert torch.equal(client_view.test_y, data.test_y)


@pytest.mark.slow
def test_search_retrain_on_meta_train_classes_feed_the_meta_phase(meta_train_cfg):
    from simulations.pipeline import Pipeline

    run_dir, summary = Pipeline(meta_train_cfg).run()
    _, split = fewshot_data(meta_setup(meta_train_cfg))
    assert summary["dataset"]["num_classes"] == len(split.train)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["models"]["searched"]["init"] == "searched.pt"  # retrained on meta-train
    saved = torch.load(run_dir / "searched.pt")["state_dict"]
    heads = [k for k, v in saved.items() if v.shape[:1] == (len(split.train),)]
    assert heads  # the run's head spans the meta-train classes; the meta phase made a new one


def test_file_system_errors_of_the_meta_loader_are_data_errors(meta_train_cfg, monkeypatch):
    from fednas.errors import DataError

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/some/glyph/cache")

    monkeypatch.setattr("fednas.meta.tasks.load_fewshot", denied)
    fewshot_data.cache_clear()  # a pool loaded by an earlier test would answer instead
    with pytest.raises(DataError, match=r"meta.dataset 'glyphs': Permission denied: "
                                        r"/some/glyph/cache \(meta.root = "):
        fewshot_data(meta_setup(meta_train_cfg))
