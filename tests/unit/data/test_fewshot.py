"""Omniglot, mini-ImageNet and CIFAR-FS: readers on real-format fixtures, official splits,
missing-file errors, `meta.split-by = "official"` and episodes drawn from each."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO

from fednas.config.loading import load_config
from fednas.data.episodes import official_split, split_classes
from fednas.data.fewshot import (
    CIFAR_FS_SPLIT,
    OFFICIAL_DATASETS,
    VAL_GROUPS,
    load_fewshot,
    read_omniglot,
)
from fednas.errors import ConfigError, DataError
from fednas.meta.setup import meta_setup

FIXTURES = FIXTURES
ROOTS = {"omniglot": FIXTURES, "mini-imagenet": FIXTURES, "cifar-fs": FIXTURES / "cifar-fs"}
SCENARIO = REPO / "simulations" / "fewshot_glyphs.toml"


@pytest.fixture(scope="module")
def sets():
    return {name: load_fewshot(name, root) for name, root in ROOTS.items()}


def codes(data) -> list[int]:
    """Pixel [0, 0] of channel 0 as uint8 (the fixtures write 10·k + 5 there)."""
    return (data.x[:, 0, 0, 0] * 255).round().int().tolist()


def test_omniglot_reads_the_torchvision_tree(sets):
    data = sets["omniglot"]
    assert data.x.shape == (12, 1, 28, 28) and data.x.dtype == torch.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.y.tolist() == [c for c in range(6) for _ in range(2)]
    assert data.x[:, :, :2, :2].max() < 0.02  # inverted: dark background (Lanczos ringing) ...
    assert (data.x.amax(dim=(1, 2, 3)) == 1.0).all()  # ... bright strokes
    first = data.classes[0]
    assert first == {"name": "Alphabet_of_the_Magi/character01", "part": "train",
                     "alphabet": "Alphabet_of_the_Magi", "character": "character01",
                     "set": "background"}
    assert [c["part"] for c in data.classes] == ["train"] * 4 + ["test"] * 2
    assert {c["alphabet"] for c in data.classes if c["set"] == "evaluation"} == {"Angelic"}
    parts, labels, _ = read_omniglot(FIXTURES, side=105, invert=False)
    raw = parts[0]
    assert raw.shape == (12, 105, 105) and raw.dtype == np.uint8 and raw[0, 0, 0] == 255
    assert raw[0, 11, 11] == 0 and raw[2, 11, 11] == 255  # class 0's block, not class 1's
    assert np.array_equal(labels, data.y.numpy())
    assert load_fewshot("omniglot", FIXTURES, image_size=14).input_shape == (1, 14, 14)


def test_mini_imagenet_reads_the_pickles(sets, tmp_path):
    data = sets["mini-imagenet"]
    assert data.x.shape == (6, 3, 84, 84) and data.x.dtype == torch.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert [(c["name"], c["part"]) for c in data.classes] == [
        ("n01532829", "train"), ("n01855672", "val"), ("n01930112", "test"),
        ("n01981276", "test")]
    assert codes(data) == [10 * int(y) + 5 for y in data.y]  # class_dict rows kept together
    assert data.y.tolist() == [0, 1, 2, 2, 3, 3]
    assert load_fewshot("mini-imagenet", FIXTURES, image_size=32).input_shape == (3, 32, 32)
    for f in (FIXTURES / "mini-imagenet").iterdir():  # learn2learn's layout: files in ROOT
        shutil.copy(f, tmp_path / f.name)
    assert torch.equal(load_fewshot("mini-imagenet", tmp_path).x, data.x)


def test_cifar_fs_reads_cifar100_with_the_bertinetto_split(sets):
    sizes = {p: len(names) for p, names in CIFAR_FS_SPLIT.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    assert len({n for names in CIFAR_FS_SPLIT.values() for n in names}) == 100
    data = sets["cifar-fs"]
    assert data.x.shape == (8, 3, 32, 32) and data.x.dtype == torch.float32
    assert len(data.classes) == 100 and data.classes[0] == {"name": "apple", "part": "train"}
    present = {data.classes[i]["name"]: data.classes[i]["part"] for i in data.class_ids()}
    assert present == {"apple": "train", "bear": "train", "beaver": "val", "otter": "val",
                       "baby": "test", "bed": "test"}
    per_class = {}
    for y, code in zip(data.y.tolist(), codes(data), strict=True):
        per_class.setdefault(y, set()).add(code)
    assert all(len(c) == 1 for c in per_class.values())  # train and test images pooled
    assert len(set.union(*per_class.values())) == 6
    assert torch.allclose(data.x[0, 1, :, 0] * 255, torch.arange(32.0))  # HWC kept


@pytest.mark.parametrize("name", OFFICIAL_DATASETS)
def test_official_splits_are_disjoint_and_follow_the_format(sets, name):
    data = sets[name]
    split = official_split(data, by=VAL_GROUPS.get(name))
    ids = [set(split.part(p).tolist()) for p in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set.union(*ids) == set(data.class_ids().tolist())
    for part, members in zip(("train", "val", "test"), ids, strict=True):
        assert all(data.classes[i]["part"] == part for i in members)
    assert len(split.test) == 2
    if name == "omniglot":  # no official val: none unless carved out
        assert len(split.val) == 0 and split.describe()["groups"]["test"] == ["Angelic"]
    else:  # the official val part; a val share is ignored
        assert len(split.val) > 0
        assert official_split(data, val_share=0.5).describe() == split.describe()


def test_omniglot_val_carve_out_takes_whole_background_alphabets(sets):
    data = sets["omniglot"]
    split = official_split(data, val_share=0.5, by="alphabet", seed=3)
    groups = split.describe()["groups"]
    assert len(groups["train"]) == len(groups["val"]) == 1 and groups["test"] == ["Angelic"]
    assert set(groups["train"] + groups["val"]) == {"Alphabet_of_the_Magi",
                                                     "Anglo-Saxon_Futhorc"}
    for part in ("train", "val"):
        assert {data.classes[i]["alphabet"] for i in split.part(part)} == set(groups[part])
    assert split.describe() == official_split(data, val_share=0.5, by="alphabet",
                                              seed=3).describe()
    with pytest.raises(ValueError, match="no classes for the val part"):
        official_split(data, val_share=0.1, by="alphabet")  # 10 % is less than one alphabet


def test_unknown_dataset_lists_the_few_shot_names(tmp_path):
    with pytest.raises(ConfigError, match="available: glyphs, omniglot, mini-imagenet, cifar-fs"):
        load_fewshot("omniglott", tmp_path)
    with pytest.raises(ConfigError, match="meta.image-size: resizes omniglot"):
        load_fewshot("digits", tmp_path, image_size=32)


def test_official_split_needs_parts_in_the_records():
    with pytest.raises(ValueError, match="has no official split"):
        official_split([{"name": "a"}, {"name": "b", "part": "test"}])
    labels = np.repeat(np.arange(6), 2)  # the random class split still works on any dataset
    assert len(split_classes(labels, (0.5, 0.0, 0.5)).test) == 3


def test_missing_files_name_the_expected_paths(tmp_path):
    with pytest.raises(DataError, match=r"omniglot-py/images_background.*data.download = true"):
        load_fewshot("omniglot", tmp_path)
    with pytest.raises(DataError) as err:
        load_fewshot("mini-imagenet", tmp_path)
    for mode in ("train", "validation", "test"):
        assert str(tmp_path / "mini-imagenet" / f"mini-imagenet-cache-{mode}.pkl") in str(err.value)
    assert "no automatic download" in str(err.value)
    with pytest.raises(DataError, match=r"'cifar-fs' not found in .*cifar-100-python"):
        load_fewshot("cifar-fs", tmp_path)
    with pytest.raises(DataError, match="does not list the 100 CIFAR-100 fine classes"):
        load_fewshot("cifar-fs", FIXTURES)  # the cifar100 fixture has placeholder names
    broken = tmp_path / "broken" / "mini-imagenet"
    shutil.copytree(FIXTURES / "mini-imagenet", broken)
    with open(broken / "mini-imagenet-cache-test.pkl", "wb") as fh:
        pickle.dump({"image_data": np.zeros((2, 8, 8), np.uint8), "class_dict": {}}, fh)
    with pytest.raises(DataError, match="mini-imagenet-cache-test.pkl: image_data is uint8"):
        load_fewshot("mini-imagenet", tmp_path / "broken")


@pytest.mark.parametrize("overrides, needle", [
    (['meta.split-by="official"'], "meta.split-by: 'official' needs a dataset with an official"),
    (['meta.dataset="cifar-fs"'], "meta.split-by: 'script' needs meta.dataset = 'glyphs' "
                                  "(got 'cifar-fs'); use 'official' or 'class'"),
    (['meta.dataset="digits"', 'meta.split-by="official"'], "use 'class'"),
    (["meta.image-size=32"], "meta.image-size: resizes omniglot, mini-imagenet, cifar-fs only"),
    (['meta.split-by="rotations"'], "meta.split-by: 'rotations' is not allowed"),
])
def test_split_by_official_is_validated(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(SCENARIO, overrides)
    assert needle in str(err.value)


@pytest.mark.parametrize("name", OFFICIAL_DATASETS)
def test_meta_config_with_an_official_split_validates_and_loads(name, tmp_path):
    from fednas.meta.tasks import fewshot_data

    cfg = load_config(SCENARIO, [f'meta.dataset="{name}"', 'meta.split-by="official"',
                                 f'meta.root="{ROOTS[name]}"', "meta.split=[0.5, 0.25, 0.25]",
                                 "data.download=false"])
    assert (cfg.meta.dataset, cfg.meta.split_by, cfg.meta.image_size) == (name, "official", 0)
    data, split = fewshot_data(meta_setup(cfg))
    assert len(split.test) == 2 and len(split.val) >= 1
    if name == "omniglot":  # a third of the 4 background characters: one whole alphabet
        assert len(split.val) == 2 and split.by == "alphabet"


@pytest.mark.parametrize("name", OFFICIAL_DATASETS)
def test_episodes_from_the_official_test_classes(sets, name):
    from fednas.meta.learners import fixed_tasks

    data = sets[name]
    split = official_split(data)
    tasks = fixed_tasks(data.subset(split.test), ways=2, shots=1, queries=1, num_tasks=3, seed=0)
    episode = tasks[0]
    assert episode.support_x.shape == (2, *data.input_shape)
    assert episode.query_x.shape == (2, *data.input_shape)
    assert set(episode.classes) == set(split.test.tolist())
    assert episode.support_y.tolist() == [0, 1] and episode.query_y.tolist() == [0, 1]
