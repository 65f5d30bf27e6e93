"""Natural client partitions: ``partition.scheme = "natural"`` (one client per id), the ids'
way from a reader through the splits, the glyph fonts, partitions.json and the fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES, federated_sets, in_process_run

from fednas.data import datasets as data
from fednas.data import glyphs
from fednas.data.io import RawData
from fednas.data.natural import client_ids
from fednas.data.partition import partition_indices, partition_stats
from fednas.errors import ConfigError, DataError
from fednas.reporting.fingerprint import data_fingerprint


def indexed_raw(n: int, groups: np.ndarray | None, num_classes: int = 4) -> RawData:
    """Images whose pixels [0, 0] and [0, 1] hold the sample index (low, high byte)."""
    x = np.zeros((n, 4, 4, 1), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    x[:, 2:, 2:, 0] = 200  # some spread, so the normalisation is invertible
    y = np.arange(n) % num_classes
    return RawData(x, y.astype(np.int64), tuple("abcd"[:num_classes]), groups=groups,
                   group_field="writer" if groups is not None else "")


def sample_index(ds: data.Dataset) -> np.ndarray:
    """Invert the normalisation of the train split and read back each sample's index."""
    x = ds.train_x.numpy()[:, 0] * ds.std[0] + ds.mean[0]
    pix = np.rint(x * 255).astype(np.int64)
    return pix[:, 0, 0] + 256 * pix[:, 0, 1]


# ----------------------------------------------------------------------------- partitioning
@pytest.mark.parametrize("kind", ["str", "int"])
def test_natural_gives_one_client_per_id_with_all_its_samples(kind):
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 7, size=300)
    groups = np.array([f"w{i:02d}" for i in ints]) if kind == "str" else ints * 11
    labels = rng.integers(0, 10, size=300)
    parts = partition_indices(labels, 7, "natural", groups=groups, by="writer", seed=3)
    ids = client_ids(groups)
    assert len(parts) == len(ids) == 7
    for i, part in enumerate(parts):  # exactly the samples of id i, nothing else
        assert np.array_equal(part, np.flatnonzero(groups.astype(str) == ids[i]))
    assert sum(len(p) for p in parts) == 300
    again = partition_indices(labels, 7, "natural", groups=groups, seed=99)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_natural_num_clients_must_equal_the_number_of_ids():
    groups = np.repeat(["a", "b", "c"], 5)
    with pytest.raises(ConfigError, match=r"partition.num-clients = 4 but the training split "
                                          r"holds 3 distinct writer ids.*"
                                          r"set partition.num-clients = 3"):
        partition_indices(np.zeros(15, dtype=np.int64), 4, "natural", groups=groups,
                          by="writer")
    with pytest.raises(ConfigError, match="partition.by: .*needs per-sample client ids"):
        partition_indices(np.zeros(15, dtype=np.int64), 3, "natural")


def test_other_schemes_ignore_groups():
    labels = np.arange(200) % 10
    groups = np.repeat(np.arange(4), 50)
    for scheme in ("iid", "dirichlet", "pathological"):
        plain = partition_indices(labels, 4, scheme, seed=1)
        with_groups = partition_indices(labels, 4, scheme, seed=1, groups=groups)
        assert all(np.array_equal(a, b) for a, b in zip(plain, with_groups, strict=True))


def test_partition_stats_records_scheme_and_ids_for_natural_only():
    labels = np.array([0, 1, 1, 0])
    parts = [np.array([0, 1]), np.array([2, 3])]
    plain = partition_stats(parts, labels, 2)
    assert "scheme" not in plain and "id" not in plain["clients"][0]
    natural = partition_stats(parts, labels, 2, ids=["f1", "f2"], by="font")
    assert natural["scheme"] == "natural" and natural["by"] == "font"
    assert [c["id"] for c in natural["clients"]] == ["f1", "f2"]
    assert natural["summary"] == plain["summary"]


# ----------------------------------------------------------------------------- loading
def test_groups_stay_aligned_through_test_max_train_and_val_splits(tmp_path):
    groups = np.array([f"g{i % 7}" for i in range(400)])
    ds = data.load_dataset("mine", root=tmp_path, raw=indexed_raw(400, groups),
                           val_fraction=0.25, max_train=200, seed=5, group_by="")
    idx = sample_index(ds)
    assert len(np.unique(idx)) == len(idx) == len(ds.train_y) == 150
    assert np.array_equal(ds.train_groups, groups[idx])
    assert np.array_equal(ds.train_y.numpy(), idx % 4)
    assert ds.group_field == "writer"
    plain = data.load_dataset("mine", root=tmp_path, raw=indexed_raw(400, groups),
                              val_fraction=0.25, max_train=200, seed=5)
    assert plain.train_groups is None and "groups" not in plain.describe()
    assert np.array_equal(plain.train_x.numpy(), ds.train_x.numpy())  # same samples


def test_dataset_without_ids_names_partition_by_and_dataset(tmp_path):
    with pytest.raises(DataError, match=r"partition.by: dataset 'digits' has no per-sample "
                                        r"client id"):
        data.load_dataset("digits", root=tmp_path, group_by="")
    with pytest.raises(DataError, match=r"partition.by = 'hsf_id': dataset 'femnist' has "
                                        r"client ids in field 'writer_id' only"):
        data.read_raw("femnist", FIXTURES, group_by="hsf_id")


def test_fingerprint_covers_the_groups(tmp_path):
    def load(groups):
        return data.load_dataset("mine", root=tmp_path, raw=indexed_raw(80, groups),
                                 seed=1, group_by=None if groups is None else "")

    a = data_fingerprint(load(np.arange(80) % 3))
    b = data_fingerprint(load(np.arange(80) % 4))
    assert a["groups"] != b["groups"] and a["content"] == b["content"]
    assert "groups" not in data_fingerprint(load(None))


# ----------------------------------------------------------------------------- glyphs
def test_glyph_fonts_are_the_natural_ids_of_the_glyph_set(tmp_path, monkeypatch):
    opts = glyphs.GlyphOptions(scripts=("latin", "hebrew"), max_per_script=4,
                               samples_per_class=6)
    monkeypatch.setattr(glyphs, "DEFAULT_OPTIONS", opts)
    raw = data.read_raw("glyphs", tmp_path, group_by="font")
    fonts = {p.name: p for p in glyphs.find_fonts()}
    assert raw.group_field == "font" and len(raw.groups) == len(raw.y)
    assert len(set(raw.groups)) > 1 and set(raw.groups) <= set(fonts)
    _, _, classes = glyphs.load_glyphs(tmp_path, opts)
    for font, label in zip(raw.groups, raw.y, strict=True):  # the font covers the letter
        cmap = glyphs._font_cmap(fonts[font])
        assert cmap is None or ord(classes[label]["char"]) in cmap
    assert data.read_raw("glyphs", tmp_path).groups is None
    # a cache written before fonts were recorded is rebuilt, with the same images
    path = glyphs.cache_path(tmp_path, opts)
    with np.load(path) as npz:
        old = {k: npz[k] for k in npz.files if k != "fonts"}
    np.savez_compressed(path, **old)
    assert np.array_equal(glyphs.glyph_fonts(tmp_path, opts), raw.groups)
    assert np.array_equal(glyphs.load_glyphs(tmp_path, opts)[0], old["x"])


# ----------------------------------------------------------------------------- a run
def test_in_process_federated_run_on_femnist_by_writer(tiny_overrides, tmp_path, no_plots,
                                                       task_identity):
    sets = federated_sets(tiny_overrides) + [
        f'data.dataset="parquet:{FIXTURES / "femnist"}"', "partition.scheme=natural",
        'phases=["baseline"]', "data.val-fraction=0.2", "partition.client-val-fraction=0.2"]
    with pytest.raises(ConfigError, match="set partition.num-clients = 3"):
        in_process_run(sets + ["partition.num-clients=2"])
    metrics, summary, _ = in_process_run(sets)
    assert {m["phase"] for m in metrics} == {"baseline"} and metrics[-1]["clients_ok"] == 3
    assert summary["dataset"]["groups"] == {"field": "writer_id", "ids": 3}
    record = json.loads((tmp_path / "runs").glob("*/partitions.json").__next__().read_text())
    assert record["scheme"] == "natural" and record["by"] == "writer_id"
    assert [c["id"] for c in record["clients"]] == ["f0000_14", "f0412_07", "f3100_45"]
    assert record["summary"]["total"] == summary["dataset"]["sizes"]["train"]
