"""Hugging Face-format data: ``parquet:PATH``, ``hf-disk:PATH`` and FEMNIST (fixture in the
real ``flwrlabs/femnist`` schema, tests/fixtures/femnist/)."""

from __future__ import annotations

import io
import shutil
import string

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES
from PIL import Image

from fednas.data import datasets as data
from fednas.data import hf_io
from fednas.data.natural import client_ids
from fednas.data.partition import partition_indices
from fednas.errors import DataError

FEMNIST = FIXTURES / "femnist"
FEMNIST_NAMES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def images(labels: list[int], color: bool = False, size: tuple[int, int] = (5, 6)) -> list:
    """Tiny PIL images whose pixel [0, 0] (channel 0) is ``10 * label + 5``."""
    out = []
    for i, label in enumerate(labels):
        arr = np.full((*size, 3) if color else size, i, dtype=np.uint8)
        arr[0, 0] = 10 * label + 5
        out.append(Image.fromarray(arr))
    return out


def small(labels: list[int], color: bool = False, **extra) -> datasets.Dataset:
    """A datasets.Dataset with an Image column, a ClassLabel and a ``client_id`` column."""
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["ant", "bee", "cat"]),
                                  "client_id": datasets.Value("string")})
    rows = {"image": images(labels, color), "label": labels,
            "client_id": [f"c{i % 2}" for i in range(len(labels))]}
    return datasets.Dataset.from_dict(rows, features=features, **extra)


@pytest.fixture(autouse=True)
def _quiet():
    datasets.disable_progress_bars()


# ----------------------------------------------------------------------------- parquet
def test_parquet_directory_round_trip_with_test_split_and_ids(tmp_path):
    small([0, 1, 2, 0, 1, 2]).to_parquet(str(tmp_path / "d" / "train-00000.parquet"))
    small([2, 1]).to_parquet(str(tmp_path / "d" / "test" / "part-0.parquet"))
    raw = data.read_raw(f"parquet:{tmp_path / 'd'}", tmp_path, group_by="")
    assert raw.x.shape == (6, 5, 6, 1) and raw.x.dtype == np.uint8
    assert raw.y.tolist() == [0, 1, 2, 0, 1, 2] and raw.class_names == ("ant", "bee", "cat")
    assert raw.x[:, 0, 0, 0].tolist() == [10 * y + 5 for y in raw.y]
    assert raw.x_test.shape == (2, 5, 6, 1) and raw.y_test.tolist() == [2, 1]
    assert raw.group_field == "client_id" and raw.groups.tolist() == ["c0", "c1"] * 3
    assert data.read_raw(f"parquet:{tmp_path / 'd'}", tmp_path).groups is None


def test_parquet_file_with_pixel_arrays_and_string_labels(tmp_path):
    x = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    table = pa.table({"img": x.tolist(), "character": ["b", "a", "b", "c"],
                      "writer_id": ["w1", "w2", "w1", "w2"]})
    pq.write_table(table, tmp_path / "one.parquet")
    raw = data.read_raw("parquet:one.parquet", tmp_path, group_by="writer_id")
    assert np.array_equal(raw.x[..., 0], x) and raw.class_names == ("a", "b", "c")
    assert raw.y.tolist() == [1, 0, 1, 2] and raw.groups.tolist() == ["w1", "w2", "w1", "w2"]


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "parquet dataset .*missing not found"),
    (lambda p: p.mkdir(), "no .parquet files"),
    (lambda p: pq.write_table(pa.table({"pixels": [[1]], "label": [0]}), p),
     r"no image column \(looked for image, img; found pixels, label\)"),
    (lambda p: pq.write_table(pa.table({"image": [[[1]]], "y": [0]}), p),
     r"no label column \(looked for label, character; found image, y\)"),
    (lambda p: pq.write_table(pa.table({"image": [{"bytes": b"not a png", "path": None}],
                                        "label": [0]}), p),
     "cannot decode the image of row 0"),
    (lambda p: pq.write_table(pa.table({"image": [{"bytes": png(np.zeros((4, 4), np.uint8)),
                                                   "path": None},
                                                  {"bytes": png(np.zeros((5, 4), np.uint8)),
                                                   "path": None}],
                                        "label": [0, 1]}), p),
     "row 1 is 4×5 but row 0's is 4×4"),
    (lambda p: pq.write_table(pa.table({"image": [[[1, 2]], [[1, 2, 3]]], "label": [0, 1]}), p),
     "inconsistent sizes"),
    (lambda p: pq.write_table(pa.table({"image": [[[1]]], "label": [-1]}), p), ">= 0"),
], ids=["missing", "no-files", "no-image", "no-label", "undecodable", "sizes", "ragged",
        "negative-label"])
def test_parquet_errors_name_path_and_problem(tmp_path, make, match):
    path = tmp_path / "missing"
    make(path)
    with pytest.raises(DataError, match=match) as err:
        data.read_raw(f"parquet:{path}", tmp_path)
    assert str(path) in str(err.value)


def test_missing_id_column_names_partition_by_and_columns(tmp_path):
    small([0, 1]).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match=r"partition.by = 'writer'.*found image, label, "
                                        r"client_id"):
        data.read_raw(f"parquet:{tmp_path / 'd.parquet'}", tmp_path, group_by="writer")
    pq.write_table(pa.table({"image": [[[1]]], "label": [0]}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"partition.by: .*no client id column"):
        data.read_raw(f"parquet:{tmp_path / 'e.parquet'}", tmp_path, group_by="")


# ----------------------------------------------------------------------------- hf-disk
def test_hf_disk_dataset_dict_round_trip_rgb(tmp_path):
    dd = datasets.DatasetDict({"train": small([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], color=True),
                               "test": small([1, 2, 0], color=True)})
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = data.load_dataset(f"hf-disk:{tmp_path / 'dd'}", root=tmp_path, val_fraction=0.2,
                           group_by="client_id")
    assert ds.input_shape == (3, 5, 6) and ds.num_classes == 3
    assert len(ds.train_y) + len(ds.val_y) == 10 and len(ds.test_y) == 3
    assert ds.group_field == "client_id" and set(ds.train_groups) == {"c0", "c1"}
    assert ds.describe()["groups"] == {"field": "client_id", "ids": 2}


def test_hf_disk_single_dataset_and_errors(tmp_path):
    small([0, 1, 2]).save_to_disk(str(tmp_path / "one"))
    raw = data.read_raw(f"hf-disk:{tmp_path / 'one'}", tmp_path)
    assert raw.x.shape == (3, 5, 6, 1) and raw.x_test is None and raw.groups is None
    with pytest.raises(DataError, match="hf-disk dataset .*nowhere not found"):
        data.read_raw(f"hf-disk:{tmp_path / 'nowhere'}", tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain cannot be read .*save_to_disk"):
        data.read_raw(f"hf-disk:{tmp_path / 'plain'}", tmp_path)
    datasets.DatasetDict({"validation": small([0])}).save_to_disk(str(tmp_path / "nv"))
    with pytest.raises(DataError, match=r"splits \['validation'\] but no 'train'"):
        data.read_raw(f"hf-disk:{tmp_path / 'nv'}", tmp_path)


def test_hf_disk_array_feature_images(tmp_path):
    x = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
    features = datasets.Features({"image": datasets.Array3D(shape=(4, 4, 1), dtype="uint8"),
                                  "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": x, "label": [0, 1, 1]},
                               features=features).save_to_disk(str(tmp_path / "arr"))
    raw = data.read_raw(f"hf-disk:{tmp_path / 'arr'}", tmp_path)
    assert np.array_equal(raw.x, x) and raw.class_names == ("0", "1")


# ----------------------------------------------------------------------------- FEMNIST
def test_femnist_fixture_has_the_real_schema():
    table = pq.read_table(FEMNIST / "data" / "train-00000-of-00001.parquet")
    assert table.column_names == ["image", "writer_id", "hsf_id", "character"]
    features = datasets.Features.from_arrow_schema(table.schema)
    assert isinstance(features["image"], datasets.Image)
    assert features["character"].names == list(FEMNIST_NAMES)


@pytest.mark.parametrize("name", ["femnist", f"parquet:{FEMNIST}"])
def test_femnist_loads_and_partitions_by_writer(name):
    raw = data.read_raw(name, FIXTURES, group_by="")
    assert raw.x.shape == (30, 28, 28, 1) and raw.x.dtype == np.uint8
    assert raw.class_names == FEMNIST_NAMES and raw.x_test is None
    assert ((raw.x[:, 0, 0, 0].astype(int) - 3) // 4 == raw.y).all()
    assert raw.group_field == "writer_id"
    ids = client_ids(raw.groups)
    assert ids == ["f0000_14", "f0412_07", "f3100_45"]
    parts = partition_indices(raw.y, 3, "natural", groups=raw.groups, by="writer_id")
    for i, part in enumerate(parts):  # one client per writer, with all its images
        assert len(part) == 10 and (raw.x[part, 0, 1, 0] == 50 * i + 10).all()


def test_femnist_without_class_names_gets_femnist_names(tmp_path):
    table = pq.read_table(FEMNIST / "data" / "train-00000-of-00001.parquet")
    (tmp_path / "femnist").mkdir()
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "femnist" / "train.parquet")
    raw = data.read_raw("femnist", tmp_path)
    assert raw.class_names == FEMNIST_NAMES and raw.groups is None


def test_femnist_hf_disk_copy_and_missing_copy(tmp_path):
    shutil.copytree(FEMNIST, tmp_path / "pq")
    ds = datasets.Dataset.from_parquet(str(tmp_path / "pq" / "data" / "*.parquet"),
                                       cache_dir=str(tmp_path / "cache"))
    ds.save_to_disk(str(tmp_path / "root" / "femnist"))
    raw = data.read_raw("femnist", tmp_path / "root", group_by="writer_id")
    assert raw.x.shape == (30, 28, 28, 1) and len(set(raw.groups)) == 3
    with pytest.raises(DataError, match="'femnist' not found in .*data.download = true"):
        data.read_raw("femnist", tmp_path / "empty")


def test_path_forms_are_listed():
    assert {"parquet:PATH", "hf-disk:PATH", "femnist"} <= set(data.available_datasets())
    assert hf_io.ID_COLUMNS[0] == "writer_id"
