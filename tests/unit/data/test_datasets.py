"""Tests of fednas.data.datasets, fednas.data.io and fednas.data.glyphs (offline, fixtures on
disk)."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image

from fednas.data import datasets as data
from fednas.data import glyphs
from fednas.data import io as datasets_io
from fednas.data.folder_io import read_folder
from fednas.errors import ConfigError, DataError

FIXTURES = FIXTURES
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_system_dirs(monkeypatch):
    """Ignore the Debian dataset packages so the ``root`` lookup is exercised."""
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})


@pytest.fixture
def small_glyphs(monkeypatch):
    """A small glyph set (3 scripts × ≤ 6 letters × 10 samples) for load_dataset('glyphs')."""
    opts = glyphs.GlyphOptions(scripts=("latin", "greek", "hebrew"), max_per_script=6,
                               samples_per_class=10)
    monkeypatch.setattr(glyphs, "DEFAULT_OPTIONS", opts)
    return opts


def assert_normalised(ds: data.Dataset) -> None:
    """Train images are float32 N×C×H×W with per-channel mean ≈ 0 and std ≈ 1."""
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert tuple(ds.train_x.shape[1:]) == ds.input_shape
    assert tuple(ds.test_x.shape[1:]) == ds.input_shape
    flat = ds.train_x.transpose(0, 1).reshape(ds.input_shape[0], -1).double()
    assert torch.allclose(flat.mean(1), torch.zeros(ds.input_shape[0], dtype=torch.float64),
                          atol=1e-4)
    assert torch.allclose(flat.std(1, correction=0),
                          torch.ones(ds.input_shape[0], dtype=torch.float64), atol=1e-3)
    for y in (ds.train_y, ds.val_y, ds.test_y):
        assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert len(ds.class_names) == ds.num_classes
    json.dumps(ds.describe())


def sizes(ds: data.Dataset) -> tuple[int, int, int]:
    return len(ds.train_y), len(ds.val_y), len(ds.test_y)


# ----------------------------------------------------------------------------- registry
def test_available_datasets_lists_registry_and_path_forms():
    names = data.available_datasets()
    for name in ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "glyphs",
                 "npz:PATH", "folder:PATH"):
        assert name in names
    assert set(data.DATASETS) <= set(names)


def test_unknown_dataset_is_config_error_listing_names(tmp_path):
    with pytest.raises(ConfigError, match="imagenet.*available: .*fashion-mnist"):
        data.load_dataset("imagenet", root=tmp_path)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0},
                                    {"max_train": -1}])
def test_bad_arguments_are_config_errors(tmp_path, kwargs):
    with pytest.raises(ConfigError, match="val-fraction|max-train"):
        data.load_dataset("digits", root=tmp_path, **kwargs)


# ----------------------------------------------------------------------------- digits
def test_digits_shapes_splits_and_normalisation(tmp_path):
    ds = data.load_dataset("digits", root=tmp_path, val_fraction=0.1, seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert sizes(ds) == (1294, 144, 359)  # 1797: 20 % test, then 10 % of the rest as val
    assert_normalised(ds)
    assert ds.describe()["sizes"] == {"train": 1294, "val": 144, "test": 359}
    # stratified: every class is in every split, in proportion
    counts = torch.bincount(ds.val_y, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16


def test_splits_are_deterministic_for_a_seed(tmp_path):
    a = data.load_dataset("digits", root=tmp_path, seed=3)
    b = data.load_dataset("digits", root=tmp_path, seed=3)
    c = data.load_dataset("digits", root=tmp_path, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_x, c.val_x)
    # the test set is fixed: it does not depend on the run seed
    assert torch.equal(a.test_y, c.test_y)


def test_max_train_subsamples_stratified_before_the_val_split(tmp_path):
    ds = data.load_dataset("digits", root=tmp_path, max_train=200, val_fraction=0.25, seed=1)
    assert sizes(ds) == (150, 50, 359)
    assert torch.bincount(ds.train_y, minlength=10).min() >= 13


def test_stratified_split_exact_size_and_proportions():
    labels = np.repeat(np.arange(4), [10, 20, 30, 41])
    keep, take = data.stratified_split(labels, 0.1, seed=0)
    assert len(take) == 10 and len(keep) == 91
    assert np.intersect1d(keep, take).size == 0
    assert np.bincount(labels[take], minlength=4).tolist() == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- IDX
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    ds = data.load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.1)
    assert sizes(ds) == (54000, 6000, 10000)
    assert ds.input_shape == (1, 28, 28) and ds.class_names[0] == "T-shirt/top"
    assert ds.class_names[-1] == "Ankle boot"
    assert abs(ds.mean[0] - 0.286) < 0.01 and abs(ds.std[0] - 0.353) < 0.01
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


def test_idx_reader_gzip_and_plain_keep_labels_with_images():
    for name in ("fashion-mnist", "mnist"):  # fixtures: gzip and plain
        raw = datasets_io.read_idx_dataset(FIXTURES / name, data.MNIST_CLASSES)
        assert raw.x.shape == (20, 28, 28, 1) and raw.x.dtype == np.uint8
        assert raw.x_test.shape == (10, 28, 28, 1)
        assert np.array_equal(raw.x[:, 0, 0, 0], 10 * raw.y + 5)
        assert np.array_equal(raw.x_test[:, 0, 0, 0], 10 * raw.y_test + 5)


def test_fashion_mnist_from_root_fixture(tmp_path, no_system_dirs):
    ds = data.load_dataset("fashion-mnist", root=FIXTURES, val_fraction=0.1)
    assert sizes(ds) == (18, 2, 10)
    assert ds.class_names == data.FASHION_CLASSES
    assert_normalised(ds)


def test_mnist_from_torchvision_raw_layout(tmp_path, no_system_dirs):
    shutil.copytree(FIXTURES / "mnist", tmp_path / "MNIST" / "raw")
    ds = data.load_dataset("mnist", root=tmp_path, val_fraction=0.5)
    assert sizes(ds) == (10, 10, 10) and ds.input_shape == (1, 28, 28)


def test_truncated_idx_gz_is_data_error_naming_file(tmp_path, no_system_dirs):
    shutil.copytree(FIXTURES / "fashion-mnist", tmp_path / "fashion-mnist")
    bad = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt IDX file .*train-images-idx3-ubyte.gz"):
        data.load_dataset("fashion-mnist", root=tmp_path)


def test_short_idx_payload_reports_expected_bytes(tmp_path):
    src = FIXTURES / "mnist" / "train-images-idx3-ubyte"
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"corrupt IDX file {bad}: expected 15680 bytes .*got "
                                        r"15580"):
        datasets_io.read_idx(bad)
    gz = tmp_path / "t.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="bad magic number"):
        datasets_io.read_idx(gz)


def test_missing_fashion_mnist_gives_install_hint(tmp_path, no_system_dirs):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.download"):
        data.load_dataset("fashion-mnist", root=tmp_path, download=False)


def test_download_uses_torchvision_then_reads_its_raw_files(tmp_path, monkeypatch,
                                                            no_system_dirs):
    import torchvision.datasets as tvd

    calls = []

    def fake_fashion(root, train, download):  # what torchvision leaves on disk
        calls.append((root, train, download))
        shutil.copytree(FIXTURES / "fashion-mnist", Path(root) / "FashionMNIST" / "raw",
                        dirs_exist_ok=True)

    monkeypatch.setattr(tvd, "FashionMNIST", fake_fashion)
    ds = data.load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert sizes(ds) == (18, 2, 10)

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading 'cifar10' into .* failed"):
        data.load_dataset("cifar10", root=tmp_path / "c", download=True)


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_pickles(tmp_path):
    raw = datasets_io.read_cifar(FIXTURES / "cifar-10-batches-py", fine=False)
    assert raw.x.shape == (10, 32, 32, 3) and sorted(raw.y.tolist()) == list(range(10))
    assert np.array_equal(raw.x[:, 0, 0, 0], 10 * raw.y + 5)
    assert np.array_equal(raw.x[0, :, 7, 1], np.arange(32))  # channel 1 = row
    assert np.array_equal(raw.x[0, 7, :, 2], np.arange(32))  # channel 2 = column
    ds = data.load_dataset("cifar10", root=FIXTURES, val_fraction=0.2)
    assert ds.input_shape == (3, 32, 32) and sizes(ds) == (8, 2, 4)
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10
    assert ds.test_y.tolist() == [3, 1, 4, 1]
    assert len(ds.mean) == 3 and len(ds.std) == 3


def test_cifar100_fine_labels(tmp_path):
    ds = data.load_dataset("cifar100", root=FIXTURES, val_fraction=0.5)
    assert ds.num_classes == 100 and ds.class_names[:2] == ("apple", "aquarium_fish")
    assert sizes(ds) == (4, 4, 4) and ds.input_shape == (3, 32, 32)
    raw = datasets_io.read_cifar(FIXTURES / "cifar-100-python", fine=True)
    assert np.array_equal(raw.x_test[:, 0, 0, 0], 10 * raw.y_test + 5)


def test_missing_cifar_gives_download_hint(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data.download = true"):
        data.load_dataset("cifar10", root=tmp_path)


def test_corrupt_cifar_batch_names_file(tmp_path):
    shutil.copytree(FIXTURES / "cifar-100-python", tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt CIFAR file .*cifar-100-python/test"):
        data.load_dataset("cifar100", root=tmp_path)


# ----------------------------------------------------------------------------- npz
def test_npz_uint8_gray_without_test_set(tmp_path):
    path = FIXTURES / "npz" / "gray_uint8.npz"
    ds = data.load_dataset(f"npz:{path}", root=tmp_path, val_fraction=0.25)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 5
    assert sizes(ds) == (18, 6, 6)  # 30 samples: 20 % test (6), then 25 % val
    assert ds.class_names == ("0", "1", "2", "3", "4")
    assert_normalised(ds)


def test_npz_float_color_with_test_set_and_relative_path(tmp_path):
    ds = data.load_dataset("npz:npz/color_float.npz", root=FIXTURES, val_fraction=0.2)
    assert ds.input_shape == (3, 8, 8) and sizes(ds) == (24, 6, 5)
    assert ds.class_names == tuple("abcde")
    assert_normalised(ds)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.zeros(9, int)}, "9 labels for 10 images"),
    ({"x": np.zeros((10, 16), np.uint8), "y": np.zeros(10, int)}, "N×H×W or N×H×W×C"),
    ({"x": np.zeros((10, 3, 8, 8), np.uint8), "y": np.zeros(10, int)}, "channels-first"),
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.zeros((10, 2), int)}, "1-D integer"),
    ({"x": np.full((10, 4, 4), 2.0), "y": np.zeros(10, int)}, r"\[0, 1\]"),
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": -np.ones(10, int)}, ">= 0"),
    ({"x": np.zeros((10, 4, 4), np.uint8)}, "no array 'y'"),
])
def test_bad_npz_is_data_error_naming_path(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        data.load_dataset(f"npz:{path}", root=tmp_path)
    assert str(path) in str(info.value)


def test_missing_npz_is_data_error(tmp_path):
    with pytest.raises(DataError, match="nothere.npz"):
        data.load_dataset("npz:nothere.npz", root=tmp_path)


# ----------------------------------------------------------------------------- folder
def test_folder_gray_and_rgb(tmp_path):
    gray = data.load_dataset(f"folder:{FIXTURES / 'folder' / 'gray'}", root=tmp_path,
                             val_fraction=0.25)
    assert gray.input_shape == (1, 10, 12) and gray.class_names == ("cat", "dog", "emu")
    assert sum(sizes(gray)) == 15 and len(gray.test_y) == 3
    assert_normalised(gray)
    rgb = data.load_dataset(f"folder:{FIXTURES / 'folder' / 'rgb'}", root=tmp_path)
    assert rgb.input_shape == (3, 9, 9) and rgb.class_names == ("blue", "red")
    raw = read_folder(FIXTURES / "folder" / "rgb")
    assert np.array_equal(raw.x[:, 0, 0, 0], 10 * raw.y + 5)


def test_folder_with_different_image_sizes_is_data_error(tmp_path):
    for cls, size in (("a", (8, 8)), ("b", (9, 8))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("L", size).save(tmp_path / "imgs" / cls / "x.png")
    with pytest.raises(DataError, match=r"b/x.png is 9×8 .* resize"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}", root=tmp_path)


def test_folder_without_classes_is_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        data.load_dataset(f"folder:{tmp_path / 'empty'}", root=tmp_path)


# ----------------------------------------------------------------------------- glyphs
def test_glyphs_build_cache_and_scripts(tmp_path, small_glyphs):
    start = time.perf_counter()
    ds = data.load_dataset("glyphs", root=tmp_path, val_fraction=0.25)
    build_s = time.perf_counter() - start
    cache = glyphs.cache_path(tmp_path, small_glyphs)
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))
    assert ds.input_shape == (1, 28, 28) and 12 <= ds.num_classes <= 18
    assert sum(sizes(ds)) == 10 * ds.num_classes
    assert_normalised(ds)
    classes = glyphs.glyph_classes(tmp_path)
    assert [c["name"] for c in classes] == list(ds.class_names)
    assert {c["script"] for c in classes} == {"latin", "greek", "hebrew"}
    assert all(c["name"] == f"{c['script']}:{c['char']}" for c in classes)
    assert "greek:α" in ds.class_names
    start = time.perf_counter()
    again = data.load_dataset("glyphs", root=tmp_path, val_fraction=0.25)
    assert time.perf_counter() - start < max(1.0, build_s / 2)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_glyph_samples_differ_and_rebuild_is_identical(tmp_path):
    opts = glyphs.GlyphOptions(scripts=("cyrillic",), max_per_script=4, samples_per_class=6)
    x, y, classes = glyphs.build_glyphs(opts)
    assert x.dtype == np.uint8 and x.shape == (6 * len(classes), 28, 28)
    assert (x.reshape(len(x), -1).max(1) > 128).all()  # every sample has ink
    assert len({x[i].tobytes() for i in range(6)}) == 6  # augmentation varies samples
    x2, _, _ = glyphs.build_glyphs(opts)
    assert np.array_equal(x, x2)


def test_glyphs_drop_cross_script_lookalikes():
    opts = glyphs.GlyphOptions(scripts=("latin", "cyrillic"), samples_per_class=1)
    chars = {c["char"] for c in glyphs.build_glyphs(opts)[2]}
    assert "a" in chars and "\u0430" not in chars  # Cyrillic а looks like Latin a
    assert "\u0436" in chars  # ж has no Latin twin


def test_default_glyph_cache_name(tmp_path):
    assert glyphs.cache_path(tmp_path, glyphs.GlyphOptions()).name == "glyphs-v1.npz"
    other = glyphs.cache_path(tmp_path, glyphs.GlyphOptions(samples_per_class=3))
    assert other.name.startswith("glyphs-v1-") and other.parent.name == "glyphs"


def test_glyphs_without_fonts_is_data_error(tmp_path, monkeypatch, small_glyphs):
    monkeypatch.setattr(glyphs, "FONT_DIRS", (tmp_path / "no-fonts",))
    with pytest.raises(DataError, match="apt-get install fonts-noto-core"):
        data.load_dataset("glyphs", root=tmp_path)


def test_unknown_glyph_script_is_config_error():
    with pytest.raises(ConfigError, match="klingon"):
        glyphs.build_glyphs(glyphs.GlyphOptions(scripts=("klingon",)))
