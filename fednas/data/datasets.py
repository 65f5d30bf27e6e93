"""Datasets: a registry of loaders, seeded stratified splits and per-channel normalisation.

``load_dataset(name, root=...)`` returns a :class:`Dataset` with train/val/test tensors.
Names are registry entries (``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``,
``cifar100``, ``glyphs``) or the forms ``npz:PATH`` and ``folder:PATH``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fednas.data import io as io
from fednas.data.io import RawData
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
PATH_FORMS = ("npz:PATH", "folder:PATH")

Loader = Callable[[Path, bool], RawData]
DATASETS: Registry[Loader] = Registry("dataset", "data.dataset")


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image classification dataset, split and normalised.

    Images are float32 ``N×C×H×W``, normalised per channel with ``mean``/``std`` computed on
    the train split; labels are int64 in ``0..num_classes-1``.
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

    def describe(self) -> dict:
        """Return a JSON-able summary (sizes, shape, classes, normalisation) for logs."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "sizes": {"train": len(self.train_y), "val": len(self.val_y),
                      "test": len(self.test_y)},
            "mean": [round(m, 6) for m in self.mean],
            "std": [round(s, 6) for s in self.std],
        }


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register ``fn(root: Path, download: bool) -> RawData`` under ``name`` (from any module,
    e.g. a ``runtime.plugins`` file)."""
    return DATASETS.register(name)


def available_datasets() -> list[str]:
    """Return the registered names plus the ``npz:PATH`` and ``folder:PATH`` forms."""
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
    return RawData(x[..., None], y, tuple(c["name"] for c in classes))


def _resolve_path(spec: str, root: Path) -> Path:
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        return root / path
    return path


def read_raw(name: str, root: str | Path, download: bool = False) -> RawData:
    """Read dataset ``name`` from disk (no splitting); see :func:`load_dataset`."""
    root = Path(root).expanduser()
    prefix, sep, spec = name.partition(":")
    if sep and prefix in ("npz", "folder"):
        if not spec:
            raise ConfigError(f"data.dataset {name!r}: give a path after '{prefix}:'")
        path = _resolve_path(spec, root)
        return io.read_npz(path) if prefix == "npz" else io.read_folder(path)
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; available: "
                          + ", ".join(available_datasets()))
    try:
        return DATASETS.get(name)(root, download)
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


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, what: str, name: str):
    keep, take = stratified_split(y, fraction, seed)
    if len(keep) == 0 or len(take) == 0:
        raise DataError(f"dataset {name!r}: {len(y)} samples are too few for a {what} split "
                        f"of {fraction:g}; use more data (data.max-train) or another fraction")
    return x[keep], y[keep], x[take], y[take]


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32, copy=False)


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (_to_unit_float(x) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))


def load_dataset(name: str, *, root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = False, max_train: int = 0, raw: RawData | None = None
                 ) -> Dataset:
    """Load, split and normalise a dataset.

    Parameters
    ----------
    name : str
        A registry name (see :func:`available_datasets`), ``npz:PATH`` or ``folder:PATH``.
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
    raw = raw if raw is not None else read_raw(name, root, download)
    x, y = raw.x, raw.y
    if raw.x_test is None:
        x, y, x_test, y_test = _split(x, y, TEST_SPLIT_FRACTION, TEST_SPLIT_SEED, "test", name)
    else:
        x_test, y_test = raw.x_test, raw.y_test
    if 0 < max_train < len(y):
        _, take = stratified_split(y, max_train / len(y), seed)
        x, y = x[take], y[take]
    x, y, x_val, y_val = _split(x, y, val_fraction, seed + 1, "validation", name)
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
    )
