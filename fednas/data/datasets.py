"""Datasets: a registry of loaders, seeded stratified splits and per-channel normalisation.

``load_dataset(name, root=...)`` returns a :class:`Dataset` with train/val/test tensors.
Names are registry entries (``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``,
``cifar100``, ``glyphs``, ``femnist``) or the forms ``npz:PATH``, ``folder:PATH``,
``parquet:PATH`` and ``hf-disk:PATH`` (Hugging Face-format data, :mod:`fednas.data.hf_io`).
Datasets with a natural client id (glyphs: ``font``, femnist: ``writer_id``, an id column of
parquet/hf-disk data) carry it per training sample for ``partition.scheme = "natural"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fednas.data import hf_io
from fednas.data import io as io
from fednas.data.folder_io import read_folder
from fednas.data.io import RawData
from fednas.data.natural import select_groups
from fednas.errors import ConfigError, DataError
from fednas.registry import Registry

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
#: Directories searched before ``root`` (Debian ``dataset-*`` packages); tests may patch this.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}
TEST_SPLIT_FRACTION = 0.2  # held-out test fraction for datasets without an official test set
TEST_SPLIT_SEED = 0  # fixed, so the test set does not change with the run seed
PATH_FORMS = ("npz:PATH", "folder:PATH", "parquet:PATH", "hf-disk:PATH")

Loader = Callable[[Path, bool], RawData]
DATASETS: Registry[Loader] = Registry("dataset", "data.dataset")


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image classification dataset, split and normalised.

    Images are float32 ``N×C×H×W``, normalised per channel with ``mean``/``std`` computed on
    the train split; labels are int64 in ``0..num_classes-1``. ``train_groups`` is the
    natural client id (field ``group_field``) of every train sample, loaded only for
    ``partition.scheme = "natural"``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_groups: np.ndarray | None = None
    group_field: str = ""

    def describe(self) -> dict:
        """Return a JSON-able summary (sizes, shape, classes, normalisation) for logs."""
        out = {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "sizes": {"train": len(self.train_y), "val": len(self.val_y),
                      "test": len(self.test_y)},
            "mean": [round(m, 6) for m in self.mean],
            "std": [round(s, 6) for s in self.std],
        }
        if self.train_groups is not None:
            out["groups"] = {"field": self.group_field,
                             "ids": int(len(np.unique(self.train_groups)))}
        return out


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register ``fn(root: Path, download: bool) -> RawData`` under ``name`` (from any module,
    e.g. a ``runtime.plugins`` file)."""
    return DATASETS.register(name)


def available_datasets() -> list[str]:
    """Return the registered names plus the path forms (:data:`PATH_FORMS`)."""
    return DATASETS.names() + list(PATH_FORMS)


# ----------------------------------------------------------------------------- loaders
def _download_hint(package: str | None, name: str) -> str:
    apt = f"apt-get install {package}, or " if package else ""
    return f"{apt}set data.download = true with network access (dataset {name!r})"


def _torchvision_download(cls_name: str, root: Path, name: str) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            getattr(tvd, cls_name)(str(root), train=train, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise DataError(f"downloading {name!r} into {root} failed ({exc}); check the network "
                        "or place the files there yourself") from exc


def _idx_loader(name: str, tv_name: str, classes: tuple[str, ...], apt: str | None) -> Loader:
    def load(root: Path, download: bool) -> RawData:
        dirs = [*SYSTEM_DIRS.get(name, []), root / name, root / tv_name / "raw"]
        for d in dirs:
            if io.find_idx(d, "train-images-idx3-ubyte") is not None:
                return io.read_idx_dataset(d, classes)
        if download:
            _torchvision_download(tv_name, root, name)
            return io.read_idx_dataset(root / tv_name / "raw", classes)
        where = ", ".join(str(d) for d in dirs)
        raise DataError(f"dataset {name!r} not found (looked in {where}): "
                        + _download_hint(apt, name))

    return load


def _cifar_loader(name: str, subdir: str, tv_name: str, fine: bool) -> Loader:
    def load(root: Path, download: bool) -> RawData:
        directory = root / subdir
        if not directory.is_dir():
            if not download:
                raise DataError(f"dataset {name!r} not found in {directory}: "
                                + _download_hint(None, name))
            _torchvision_download(tv_name, root, name)
        return io.read_cifar(directory, fine=fine)

    return load


register_dataset("fashion-mnist")(
    _idx_loader("fashion-mnist", "FashionMNIST", FASHION_CLASSES, "dataset-fashion-mnist"))
register_dataset("mnist")(_idx_loader("mnist", "MNIST", MNIST_CLASSES, None))
register_dataset("cifar10")(_cifar_loader("cifar10", "cifar-10-batches-py", "CIFAR10", False))
register_dataset("cifar100")(_cifar_loader("cifar100", "cifar-100-python", "CIFAR100", True))
register_dataset("femnist")(hf_io.load_femnist)


@register_dataset("digits")
def _load_digits(root: Path, download: bool) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    return RawData(x, bunch.target.astype(np.int64), MNIST_CLASSES)


@register_dataset("glyphs")
def _load_glyphs(root: Path, download: bool) -> RawData:
    from fednas.data import glyphs

    x, y, classes = glyphs.load_glyphs(root)
    return RawData(x[..., None], y, tuple(c["name"] for c in classes),
                   groups=glyphs.glyph_fonts(root), group_field="font")


def _resolve_path(spec: str, root: Path) -> Path:
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        return root / path
    return path


def read_raw(name: str, root: str | Path, download: bool = False,
             group_by: str | None = None) -> RawData:
    """Read dataset ``name`` from disk (no splitting); see :func:`load_dataset`."""
    root = Path(root).expanduser()
    prefix, sep, spec = name.partition(":")
    if sep and prefix in ("npz", "folder", "parquet", "hf-disk"):
        if not spec:
            raise ConfigError(f"data.dataset {name!r}: give a path after '{prefix}:'")
        path = _resolve_path(spec, root)
        if prefix in ("parquet", "hf-disk"):
            read = hf_io.read_parquet if prefix == "parquet" else hf_io.read_hf_disk
            return select_groups(read(path, group_by), name, group_by)
        raw = io.read_npz(path) if prefix == "npz" else read_folder(path)
        return select_groups(raw, name, group_by)
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; available: "
                          + ", ".join(available_datasets()))
    try:
        return select_groups(DATASETS.get(name)(root, download), name, group_by)
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise DataError(f"data.dataset {name!r}: {exc.strerror or exc}:{where} (data.root = "
                        f"{root}; is it a writable directory?)") from exc


# ----------------------------------------------------------------------------- splits
def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split indices into ``(keep, take)`` with ``round(fraction·N)`` taken, per class.

    Each class contributes ``fraction`` of its samples (largest-remainder rounding so the
    total is exact); deterministic for a seed. Both outputs are sorted.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * fraction
    take_n = np.floor(quota).astype(np.int64)
    short = int(round(fraction * len(labels))) - int(take_n.sum())
    if short > 0:  # give the remaining samples to the largest remainders (ties: random)
        order = np.lexsort((rng.random(len(classes)), -(quota - take_n)))
        take_n[order[:short]] += 1
    take = [rng.permutation(np.flatnonzero(labels == c))[:k]
            for c, k in zip(classes, take_n, strict=True)]
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(take) if take else []] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _split(y: np.ndarray, fraction: float, seed: int, what: str,
           name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stratified_split` indices ``(keep, take)``; DataError when one side is empty."""
    keep, take = stratified_split(y, fraction, seed)
    if len(keep) == 0 or len(take) == 0:
        raise DataError(f"dataset {name!r}: {len(y)} samples are too few for a {what} split "
                        f"of {fraction:g}; use more data (data.max-train) or another fraction")
    return keep, take


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32, copy=False)


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (_to_unit_float(x) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))


def load_dataset(name: str, *, root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = False, max_train: int = 0, raw: RawData | None = None,
                 group_by: str | None = None) -> Dataset:
    """Load, split and normalise a dataset.

    Parameters
    ----------
    name : str
        A registry name or a path form (see :func:`available_datasets`).
    root : str or Path
        Data directory (downloads and caches go here).
    val_fraction : float
        Fraction of the (possibly subsampled) train set held out as validation, 0 < f < 1.
    seed : int
        Seed of the ``max_train`` subsample and of the validation split.
    download : bool
        Allow torchvision downloads when the files are not on disk.
    max_train : int
        If > 0, a stratified subsample of at most this many train samples (before the val
        split). The test set is not subsampled.
    raw : RawData, optional
        Samples already read (e.g. :func:`fednas.data.run_data.meta_train_raw`): split and
        normalised like a registry dataset's; ``name`` only labels them.
    group_by : str, optional
        Load the natural client ids of this field (``""``: the dataset's own) as
        ``train_groups``, kept aligned with the train samples through every split; None
        loads none (see :func:`select_groups`).

    Returns
    -------
    Dataset
        Train/val/test tensors; test is the official test set, or a stratified 20 % split
        (fixed seed) when the dataset has none.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val-fraction must be in (0, 1), got {val_fraction}")
    if max_train < 0:
        raise ConfigError(f"data.max-train must be >= 0, got {max_train}")
    raw = read_raw(name, root, download, group_by) if raw is None else \
        select_groups(raw, name, group_by)
    x, y, g = raw.x, raw.y, raw.groups
    if raw.x_test is None:
        keep, take = _split(y, TEST_SPLIT_FRACTION, TEST_SPLIT_SEED, "test", name)
        x, y, g, x_test, y_test = x[keep], y[keep], _at(g, keep), x[take], y[take]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    if 0 < max_train < len(y):
        _, take = stratified_split(y, max_train / len(y), seed)
        x, y, g = x[take], y[take], _at(g, take)
    keep, take = _split(y, val_fraction, seed + 1, "validation", name)
    x, y, g, x_val, y_val = x[keep], y[keep], _at(g, keep), x[take], y[take]
    unit = _to_unit_float(x)
    mean = unit.mean(axis=(0, 1, 2), dtype=np.float64)
    std = unit.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std < 1e-8, 1.0, std)
    del unit
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    return Dataset(
        name=name,
        train_x=_normalise(x, mean32, std32), train_y=torch.from_numpy(y.astype(np.int64)),
        val_x=_normalise(x_val, mean32, std32), val_y=torch.from_numpy(y_val.astype(np.int64)),
        test_x=_normalise(x_test, mean32, std32),
        test_y=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=len(raw.class_names), class_names=raw.class_names,
        input_shape=(x.shape[3], x.shape[1], x.shape[2]),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        train_groups=g, group_field=raw.group_field if g is not None else "",
    )


def _at(groups: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if groups is None else groups[index]
