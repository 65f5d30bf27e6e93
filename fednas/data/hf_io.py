"""Readers for Hugging Face-format data: parquet files, ``save_to_disk`` directories, FEMNIST.

``parquet:PATH`` (one parquet file, or a directory of them: files named ``test*`` or under
a ``test/`` folder are the test split, the rest the train split) and ``hf-disk:PATH`` (a
``datasets`` ``save_to_disk`` directory: a ``DatasetDict`` with ``train`` and optional
``test``, or a single ``Dataset``) become a :class:`~fednas.data.io.RawData`. Columns: an
image (:data:`IMAGE_COLUMNS`; the HF ``Image`` feature, a struct of PNG/JPEG ``bytes`` and
``path``, or nested lists of pixels), a label (:data:`LABEL_COLUMNS`; integers, with class
names from a ``ClassLabel`` feature when there is one, or strings) and, for natural client
partitions, a per-sample id column (``partition.by``; by default the first of
:data:`ID_COLUMNS` present). Images are decoded with PIL to ``N×H×W×C`` uint8 (1 channel
when every image is grayscale, else RGB). Problems raise :class:`~fednas.errors.DataError`
naming the path.

FEMNIST (``femnist``) is Flower's ``flwrlabs/femnist`` (columns ``image`` 28×28 grayscale,
``writer_id``, ``hsf_id``, ``character`` 0..61), read from a local copy in
``{root}/femnist`` or downloaded there through flwr-datasets' ``FederatedDataset``.
"""

from __future__ import annotations

import io as _bytes_io
import string
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fednas.data.io import RawData, check_images
from fednas.errors import DataError

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "character")
ID_COLUMNS = ("writer_id", "client_id", "user_id", "font")  # partition.by = "" looks for these
GRAY_MODES = ("1", "L", "I", "I;16", "F", "LA")
FEMNIST_HUB = "flwrlabs/femnist"
FEMNIST_CLASSES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)


# ----------------------------------------------------------------------------- readers
def read_parquet(path: Path, group_by: str | None = None) -> RawData:
    """Read ``parquet:PATH``: a parquet file or a directory of them (see the module doc).

    Parameters
    ----------
    path : Path
        The file or directory.
    group_by : str, optional
        The id column of natural partitions (``""``: the first of :data:`ID_COLUMNS`);
        None reads no ids.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"parquet dataset {path}"
    if not path.exists():
        raise DataError(f"{where} not found: give a parquet file or a directory of them as "
                        "parquet:PATH")
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise DataError(f"{where}: no .parquet files in it")
    is_test = [f.name.startswith("test") or "test" in f.relative_to(path).parts[:-1]
               if f != path else False for f in files]
    train = [f for f, t in zip(files, is_test, strict=True) if not t]
    test = [f for f, t in zip(files, is_test, strict=True) if t]
    if not train:
        raise DataError(f"{where}: only test files ({', '.join(f.name for f in test)}); "
                        "the train split is every parquet file not named test*")

    def table(group: list[Path]) -> Any:
        try:
            return pa.concat_tables([pq.read_table(f) for f in group], promote_options="default")
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"{where}: cannot read {', '.join(f.name for f in group)} "
                            f"({exc})") from exc

    return _to_raw(table(train), table(test) if test else None, where, group_by,
                   path if path.is_dir() else path.parent)


def read_hf_disk(path: Path, group_by: str | None = None) -> RawData:
    """Read ``hf-disk:PATH``: a ``save_to_disk`` directory (``DatasetDict`` with ``train`` and
    optional ``test``, or one ``Dataset``); ``group_by`` as in :func:`read_parquet`."""
    import datasets

    where = f"hf-disk dataset {path}"
    if not path.is_dir():
        raise DataError(f"{where} not found: give a directory written by datasets' "
                        "save_to_disk as hf-disk:PATH")
    try:
        obj = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:  # FileNotFoundError: not a save_to_disk directory
        raise DataError(f"{where} cannot be read ({exc}); write it with "
                        "Dataset.save_to_disk or DatasetDict.save_to_disk") from exc
    if isinstance(obj, datasets.DatasetDict):
        if "train" not in obj:
            raise DataError(f"{where}: splits {sorted(obj)} but no 'train'")
        train, test = obj["train"], obj.get("test")
    else:
        train, test = obj, None

    def table(ds: Any) -> Any:
        return ds.with_format("arrow")[:] if len(ds) else ds.data.table

    return _to_raw(table(train), None if test is None else table(test), where, group_by, path)


def read_local(path: Path, group_by: str | None = None) -> RawData:
    """``path`` as ``hf-disk:`` when it is a ``save_to_disk`` directory, else as
    ``parquet:``."""
    marks = ("dataset_dict.json", "state.json")
    if path.is_dir() and any((path / m).is_file() for m in marks):
        return read_hf_disk(path, group_by)
    return read_parquet(path, group_by)


def load_femnist(root: Path, download: bool) -> RawData:
    """FEMNIST from ``{root}/femnist`` (parquet files or a ``save_to_disk`` directory in
    Flower's ``flwrlabs/femnist`` schema), downloaded there first if ``download``; the
    writers (``writer_id``) are the natural client ids."""
    local = root / "femnist"
    if not local.exists():
        if not download:
            raise DataError(f"dataset 'femnist' not found in {local}: put a copy of "
                            f"{FEMNIST_HUB} there (parquet files or a save_to_disk directory), "
                            "name one as data.dataset = 'parquet:PATH' or 'hf-disk:PATH', or "
                            "set data.download = true with network access")
        _download_femnist(local)
    raw = read_local(local, "writer_id")
    if len(raw.class_names) <= len(FEMNIST_CLASSES) and \
            raw.class_names == tuple(str(i) for i in range(len(raw.class_names))):
        raw = replace(raw, class_names=FEMNIST_CLASSES)  # no ClassLabel names in the copy
    return raw


def _download_femnist(local: Path) -> None:  # pragma: no cover - needs the network
    from flwr_datasets import FederatedDataset

    try:
        fds = FederatedDataset(dataset=FEMNIST_HUB, partitioners={"train": 1})
        fds.load_split("train").save_to_disk(str(local))
    except (OSError, ValueError, ConnectionError) as exc:
        raise DataError(f"downloading {FEMNIST_HUB} into {local} failed ({exc}); check the "
                        "network or place a copy there yourself") from exc


# ----------------------------------------------------------------------------- columns
def _column(table: Any, names: tuple[str, ...], what: str, where: str) -> str:
    for name in names:
        if name in table.column_names:
            return name
    raise DataError(f"{where}: no {what} column (looked for {', '.join(names)}; found "
                    f"{', '.join(table.column_names)})")


def _id_column(table: Any, group_by: str, where: str) -> str:
    if not group_by:
        found = [c for c in ID_COLUMNS if c in table.column_names]
        if not found:
            raise DataError(f"partition.by: {where} has no client id column (looked for "
                            f"{', '.join(ID_COLUMNS)}; found {', '.join(table.column_names)}); "
                            "name the id column with partition.by")
        return found[0]
    if group_by not in table.column_names:
        raise DataError(f"partition.by = {group_by!r}: {where} has no such column (found "
                        f"{', '.join(table.column_names)})")
    return group_by


def _to_raw(train: Any, test: Any | None, where: str, group_by: str | None,
            base: Path) -> RawData:
    """Decode the image, label and id columns of the train (and test) tables."""
    import datasets

    image_col = _column(train, IMAGE_COLUMNS, "image", where)
    label_col = _column(train, LABEL_COLUMNS, "label", where)
    tables = [train] if test is None else [train, test]
    for t in tables[1:]:
        for col in (image_col, label_col):
            if col not in t.column_names:
                raise DataError(f"{where}: the test split has no column {col!r} (found "
                                f"{', '.join(t.column_names)})")
    xs = _decode_images([t.column(image_col) for t in tables], image_col, where, base)
    try:  # class names of a ClassLabel feature (HF metadata of the schema)
        feature = datasets.Features.from_arrow_schema(train.schema).get(label_col)
    except (TypeError, ValueError, NotImplementedError):  # arrow types datasets cannot map
        feature = None
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    ys, class_names = _labels([t.column(label_col) for t in tables], label_col, names, where)
    groups, field = None, ""
    if group_by is not None:
        field = _id_column(train, group_by, where)
        groups = _ids(train.column(field), field, where)
    xt, yt = (xs[1], ys[1]) if test is not None else (None, None)
    return RawData(xs[0], ys[0], class_names, xt, yt, groups, field)


def _ids(column: Any, field: str, where: str) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{where}: column {field!r} has {column.null_count} missing ids")
    values = column.to_numpy(zero_copy_only=False)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    return np.asarray([str(v) for v in values], dtype=str)


def _labels(columns: list, col: str, names: list[str] | None,
            where: str) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Integer labels of every split and the class names."""
    if any(c.null_count for c in columns):
        raise DataError(f"{where}: column {col!r} has missing labels")
    values = [c.to_numpy(zero_copy_only=False) for c in columns]
    if all(np.issubdtype(v.dtype, np.integer) for v in values):
        ys = [v.astype(np.int64) for v in values]
        low = min(int(y.min(initial=0)) for y in ys)
        top = max(int(y.max(initial=-1)) for y in ys) + 1
        if low < 0:
            raise DataError(f"{where}: labels in {col!r} must be >= 0, found {low}")
        if names is not None and top > len(names):
            raise DataError(f"{where}: {len(names)} class names but labels go up to {top - 1}")
        return ys, tuple(names) if names is not None else tuple(str(i) for i in range(top))
    if all(v.dtype == object and all(isinstance(s, str) for s in v) for v in values):
        classes = sorted({s for v in values for s in v})
        return [np.searchsorted(classes, v.astype(str)).astype(np.int64) for v in values], \
            tuple(classes)
    raise DataError(f"{where}: column {col!r} must hold integer or string labels, got "
                    f"{columns[0].type}")


def _decode_images(columns: list, col: str, where: str, base: Path) -> list[np.ndarray]:
    """Every split's images as N×H×W×C uint8 (float arrays in [0, 1] stay float32)."""
    import pyarrow as pa

    if isinstance(columns[0].type, pa.ExtensionType):  # datasets' Array2D/Array3D features
        columns = [pa.chunked_array([ch.storage for ch in c.chunks], c.type.storage_type)
                   for c in columns]
    kind = columns[0].type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        decoded = [_decode_encoded(c.combine_chunks(), where, base) for c in columns]
        color = any(d.shape[-1] == 3 for d in decoded)
        xs = [np.repeat(d, 3, axis=-1) if color and d.shape[-1] == 1 else d for d in decoded]
    elif pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) \
            or pa.types.is_large_list(kind):
        xs = []
        for c in columns:
            try:
                arr = np.asarray(c.to_pylist())
            except ValueError as exc:
                raise DataError(f"{where}: the {col!r} arrays have inconsistent sizes "
                                f"({exc}); give all images one size") from exc
            if arr.dtype == object:
                raise DataError(f"{where}: the {col!r} arrays have inconsistent sizes; give "
                                "all images one size")
            xs.append(check_images(arr, where))
    else:
        raise DataError(f"{where}: column {col!r} has type {kind}; expected images (the HF "
                        "Image feature, a struct of bytes and path, or nested pixel lists)")
    if len(xs) == 2 and xs[0].shape[1:3] != xs[1].shape[1:3]:
        raise DataError(f"{where}: test images are {xs[1].shape[2]}×{xs[1].shape[1]} but train "
                        f"images {xs[0].shape[2]}×{xs[0].shape[1]}; give all images one size")
    return xs


def _decode_encoded(column: Any, where: str, base: Path) -> np.ndarray:
    """Decode a struct<bytes, path> column with PIL into N×H×W×C (C = 1 or 3)."""
    from PIL import Image, UnidentifiedImageError

    blobs = column.field("bytes").to_pylist()
    paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 \
        else [None] * len(blobs)
    out: np.ndarray | None = None
    for i, (blob, name) in enumerate(zip(blobs, paths, strict=True)):
        if blob is None and name is None:
            raise DataError(f"{where}: row {i} has no image (neither bytes nor path)")
        try:
            src = _bytes_io.BytesIO(blob) if blob is not None else \
                (Path(name) if Path(name).is_file() else base / name)
            with Image.open(src) as im:
                gray = im.mode in GRAY_MODES
                arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{where}: cannot decode the image of row {i} ({exc})") from exc
        arr = arr[..., None] if gray else arr
        if out is None:
            out = np.empty((len(blobs), *arr.shape[:2], 3 if not gray else 1), dtype=np.uint8)
        if arr.shape[:2] != out.shape[1:3]:
            raise DataError(f"{where}: the image of row {i} is {arr.shape[1]}×{arr.shape[0]} "
                            f"but row 0's is {out.shape[2]}×{out.shape[1]}; resize all images "
                            "to one size")
        if arr.shape[-1] != out.shape[-1]:  # a colour image among grayscale ones: all RGB
            out = np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out
            arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr
        out[i] = arr
    return out if out is not None else np.empty((0, 1, 1, 1), dtype=np.uint8)
