"""Readers for on-disk dataset formats: IDX (MNIST family), CIFAR pickles, npz (image folders:
:mod:`fednas.data.folder_io`; Hugging Face parquet / ``save_to_disk``: :mod:`fednas.data.hf_io`).

Every reader returns plain numpy arrays (images ``N×H×W×C``, labels ``int64``) and raises
:class:`~fednas.errors.DataError` naming the offending file and the problem.
"""

from __future__ import annotations

import gzip
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fednas.errors import DataError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class RawData:
    """A dataset as read from disk, before splitting and normalisation.

    ``x`` is ``N×H×W×C`` (uint8 in 0..255, or float in [0, 1]); ``x_test``/``y_test`` are
    ``None`` when the format has no official test set. ``groups`` is the natural client id
    of every training sample (aligned with ``x``/``y``; field ``group_field``, e.g. a FEMNIST
    ``writer_id``) for ``partition.scheme = "natural"``, ``None`` when the data has none.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    groups: np.ndarray | None = None
    group_field: str = ""


# ----------------------------------------------------------------------------- IDX
def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``), checking magic number, dims and size.

    Parameters
    ----------
    path : str or Path
        The file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns
    -------
    numpy.ndarray
        The array with the dims stored in the header.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt IDX file {path}: cannot read it ({exc}); "
                        "delete it and install or download it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'}; "
                        "delete it and install or download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path}: header truncated "
                        f"(expected {header} bytes, got {len(raw)})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        raise DataError(f"corrupt IDX file {path}: expected {expected} bytes of data for "
                        f"shape {dims}, got {got}; delete it and install or download it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx(directory: Path, stem: str) -> Path | None:
    """Return ``directory/stem`` or ``directory/stem.gz``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_dataset(directory: Path, class_names: tuple[str, ...]) -> RawData:
    """Read the four MNIST-style IDX files in ``directory`` (train/t10k images and labels)."""
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, ndim in (("images", 3), ("labels", 1)):
            stem = f"{prefix}-{kind}-idx{ndim}-ubyte"
            path = find_idx(directory, stem)
            if path is None:
                raise DataError(f"missing IDX file {directory / stem}[.gz]")
            arr = read_idx(path)
            if arr.ndim != ndim:
                raise DataError(f"corrupt IDX file {path}: expected {ndim} dims, got {arr.ndim}")
            arrays[split, kind] = (arr, path)
    for split in ("train", "test"):
        (x, xpath), (y, ypath) = arrays[split, "images"], arrays[split, "labels"]
        if len(x) != len(y):
            raise DataError(f"IDX files disagree: {xpath} has {len(x)} images, "
                            f"{ypath} has {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"corrupt IDX file {ypath}: labels outside 0..{len(class_names) - 1}")
    x, y = arrays["train", "images"][0], arrays["train", "labels"][0]
    xt, yt = arrays["test", "images"][0], arrays["test", "labels"][0]
    return RawData(x[..., None].astype(np.uint8), y.astype(np.int64), class_names,
                   xt[..., None].astype(np.uint8), yt.astype(np.int64))


# ----------------------------------------------------------------------------- CIFAR
def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"corrupt CIFAR file {path}: {exc}; delete it and download it "
                        "again") from exc


def _entry(d: dict, key: bytes):
    """``d[key]``, accepting str keys too (the batches re-pickled by Python 3)."""
    if not isinstance(d, dict):
        raise TypeError(f"expected a dict, got {type(d).__name__}")
    return d[key] if key in d else d[key.decode()]


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(_entry(batch, b"data"), dtype=np.uint8)
        labels = np.asarray(_entry(batch, label_key), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"corrupt CIFAR file {path}: missing or bad entry {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"corrupt CIFAR file {path}: data shape {data.shape} with "
                        f"{len(labels)} labels, expected N×3072 with N labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_names(path: Path, key: bytes) -> tuple[str, ...]:
    meta = _unpickle(path)
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _entry(meta, key))
    except (KeyError, TypeError) as exc:
        raise DataError(f"corrupt CIFAR meta file {path}: no {key.decode()!r}") from exc


def read_cifar(directory: Path, *, fine: bool) -> RawData:
    """Read ``cifar-10-batches-py`` (``fine=False``) or ``cifar-100-python`` (fine labels)."""
    if fine:
        train = [_cifar_batch(directory / "train", b"fine_labels")]
        test = _cifar_batch(directory / "test", b"fine_labels")
        names = _cifar_names(directory / "meta", b"fine_label_names")
    else:
        train = [_cifar_batch(directory / f"data_batch_{i}", b"labels") for i in range(1, 6)]
        test = _cifar_batch(directory / "test_batch", b"labels")
        names = _cifar_names(directory / "batches.meta", b"label_names")
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    for labels in (y, test[1]):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"corrupt CIFAR data in {directory}: labels outside "
                            f"0..{len(names) - 1}")
    return RawData(x, y, names, test[0], test[1])


# ----------------------------------------------------------------------------- npz
def check_images(x: np.ndarray, where: str) -> np.ndarray:
    """Validate an image array and return it as N×H×W×C (uint8 or float32 in [0, 1])."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be N×H×W or N×H×W×C, got shape {x.shape}")
    if x.shape[-1] > 4:
        hint = " (channels-first? transpose to N×H×W×C)" if x.shape[1] in (1, 3) else ""
        raise DataError(f"{where}: last axis must be channels (1-4), got shape {x.shape}{hint}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{where}: integer images must lie in 0..255")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images must be uint8 or float, got dtype {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"{where}: float images must be finite and in [0, 1] "
                        "(store uint8 for 0..255 data)")
    return x.astype(np.float32)


def check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-D integer array, got "
                        f"shape {y.shape} dtype {y.dtype}")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def read_npz(path: Path) -> RawData:
    """Read ``x``/``y`` (and optional ``x_test``/``y_test``, ``class_names``) from an npz file."""
    if path.is_dir():
        raise DataError(f"npz dataset {path} is a directory: give an .npz file as npz:PATH")
    if not path.is_file():
        raise DataError(f"npz dataset {path} not found: give an existing file as npz:PATH")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"npz dataset {path} cannot be read: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"npz dataset {path} has no array {key!r} "
                            f"(found {sorted(arrays)}); save it with np.savez(path, x=..., y=...)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"npz dataset {path}: give both x_test and y_test, or neither")
    x = check_images(arrays["x"], f"npz dataset {path} (x)")
    y = check_labels(arrays["y"], len(x), f"npz dataset {path} (y)")
    xt = yt = None
    if "x_test" in arrays:
        xt = check_images(arrays["x_test"], f"npz dataset {path} (x_test)")
        yt = check_labels(arrays["y_test"], len(xt), f"npz dataset {path} (y_test)")
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"npz dataset {path}: x_test images {xt.shape[1:]} differ from "
                            f"x images {x.shape[1:]}")
    num_classes = int(max(y.max(initial=-1), -1 if yt is None else yt.max(initial=-1))) + 1
    if "class_names" in arrays:
        names = tuple(str(n) for n in arrays["class_names"].reshape(-1))
        if len(names) < num_classes:
            raise DataError(f"npz dataset {path}: {len(names)} class_names but labels go up "
                            f"to {num_classes - 1}")
    else:
        names = tuple(str(i) for i in range(num_classes))
    return RawData(x, y, names, xt, yt)
