"""The standard few-shot benchmarks, read from their usual on-disk formats with official splits.

Each loader returns a :class:`~fednas.data.episodes.FewShotSet` of every image (all parts pooled,
class ids global) whose per-class records carry the official ``part`` (``train``, ``val`` or
``test``); :func:`fednas.data.episodes.official_split` turns the records into a ``ClassSplit``.

- ``omniglot``: torchvision's layout ``ROOT/omniglot-py/images_{background,evaluation}/
  <alphabet>/<character>/*.png`` (105×105, 1 bit). Classes are characters. The official
  division is Lake et al.'s (2015): the 30 *background* alphabets are meta-train (a meta-val
  share can be carved out as whole alphabets, see ``official_split``), the 20 *evaluation*
  alphabets meta-test. (Vinyals et al.'s 1200/423-character split is not fixed on disk: it
  shuffles characters of all 50 alphabets and adds rotations as classes; it is not used.)
  Images are resized to ``side`` (default 28, as in MAML) with Lanczos on the grey image and,
  by default, inverted so that strokes are bright on a dark background (as MAML and
  learn2learn do; Fashion-MNIST and glyphs look the same way).
- ``mini-imagenet``: the Ravi & Larochelle pickles used by learn2learn,
  ``ROOT/mini-imagenet/mini-imagenet-cache-{train,validation,test}.pkl`` (``image_data``
  uint8 N×84×84×3, ``class_dict`` ``{wnid: [row, ...]}``): 64/16/20 classes. No download.
- ``cifar-fs``: CIFAR-100 (``ROOT/cifar-100-python``, downloaded through torchvision when
  allowed) with Bertinetto et al.'s (2019) fixed 64/16/20 split of the fine classes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from fednas.data.episodes import FewShotSet, image_tensor
from fednas.errors import ConfigError, DataError

OFFICIAL_DATASETS = ("omniglot", "mini-imagenet", "cifar-fs")
DEFAULT_SIDE = {"omniglot": 28, "mini-imagenet": 84, "cifar-fs": 32}
#: Metadata key whose groups a meta-val carve-out keeps whole (datasets without a val part).
VAL_GROUPS = {"omniglot": "alphabet"}
OMNIGLOT_SETS = (("background", "train"), ("evaluation", "test"))
MINI_IMAGENET_FILES = (("train", "train"), ("validation", "val"), ("test", "test"))

#: CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers",
#: ICLR 2019; the split files of github.com/bertinetto/r2d2): CIFAR-100 fine class names.
CIFAR_FS_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "train", "skyscraper", "turtle", "raccoon", "spider", "orange", "castle", "keyboard",
        "clock", "pear", "girl", "seal", "elephant", "apple", "aquarium_fish", "bus",
        "mushroom", "possum", "squirrel", "chair", "tank", "plate", "wolf", "road", "mouse",
        "boy", "shrew", "couch", "sunflower", "tiger", "caterpillar", "lion", "streetcar",
        "lawn_mower", "tulip", "forest", "dolphin", "cockroach", "bear", "porcupine", "bee",
        "hamster", "lobster", "bowl", "can", "bottle", "trout", "snake", "bridge",
        "pine_tree", "skunk", "lizard", "cup", "kangaroo", "oak_tree", "dinosaur", "rabbit",
        "orchid", "willow_tree", "ray", "palm_tree", "mountain", "house", "cloud"),
    "val": (
        "otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly",
        "beaver", "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea",
        "cattle"),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
        "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
        "wardrobe", "whale", "woman", "worm"),
}


def load_fewshot(name: str, root: str | Path, *, glyph_options=None, image_size: int = 0,
                 download: bool = False) -> FewShotSet:
    """Load every sample of dataset ``name`` for class-disjoint few-shot use.

    ``glyphs`` keeps its per-class metadata (``script`` ...) and accepts ``glyph_options``
    (a :class:`fednas.data.glyphs.GlyphOptions`, e.g. a small subset for tests). ``omniglot``,
    ``mini-imagenet`` and ``cifar-fs`` (:func:`fednas.data.fewshot.load_official`) get
    records with their official ``part``, images resized to ``image_size`` (0 = default) and
    fetched when ``download`` allows. Other datasets of :func:`fednas.data.datasets.read_raw` get
    ``{"name": ...}`` records, official train and test samples pooled (their classes are
    split, not their samples).
    """
    if name in OFFICIAL_DATASETS:
        if glyph_options is not None:
            raise ConfigError(f"meta.dataset: glyph options given for dataset {name!r}")
        return load_official(name, root, image_size=image_size, download=download)
    if image_size:
        raise ConfigError(f"meta.image-size: resizes {', '.join(OFFICIAL_DATASETS)} only "
                          f"(dataset {name!r})")
    if name == "glyphs":
        from fednas.data.glyphs import load_glyphs

        x, y, classes = load_glyphs(root, glyph_options)
        return FewShotSet(image_tensor(x), torch.from_numpy(y.astype(np.int64)), tuple(classes))
    if glyph_options is not None:
        raise ConfigError(f"meta.dataset: glyph options given for dataset {name!r}")
    from fednas.data.datasets import available_datasets, read_raw

    if name not in available_datasets() and \
            name.partition(":")[0] not in ("npz", "folder", "parquet", "hf-disk"):
        names = dict.fromkeys(["glyphs", *OFFICIAL_DATASETS, *available_datasets()])
        raise ConfigError(f"meta.dataset: unknown dataset {name!r}; available: "
                          + ", ".join(names))
    raw = read_raw(name, root)
    x, y = raw.x, raw.y
    if raw.x_test is not None:
        x, y = np.concatenate([x, raw.x_test]), np.concatenate([y, raw.y_test])
    return FewShotSet(image_tensor(x), torch.from_numpy(y.astype(np.int64)),
                      tuple({"name": n} for n in raw.class_names))


def load_official(name: str, root: str | Path, *, image_size: int = 0,
                  download: bool = False) -> FewShotSet:
    """Load few-shot benchmark ``name`` (one of :data:`OFFICIAL_DATASETS`) from ``root``.

    Parameters
    ----------
    name
        ``omniglot``, ``mini-imagenet`` or ``cifar-fs``.
    root
        The data directory that holds ``omniglot-py``, ``mini-imagenet`` or
        ``cifar-100-python``.
    image_size
        Side of the (square) images; 0 = :data:`DEFAULT_SIDE` (28, 84, 32).
    download
        Fetch missing files through torchvision (Omniglot, CIFAR-100); mini-ImageNet has no
        automatic download.
    """
    if name not in OFFICIAL_DATASETS:
        raise ValueError(f"no official few-shot split for {name!r}; choose from "
                         f"{OFFICIAL_DATASETS}")
    if image_size < 0:
        raise ValueError(f"image size must be >= 0 (0 = default), got {image_size}")
    side = image_size or DEFAULT_SIDE[name]
    root = Path(root).expanduser()
    if name == "omniglot":
        parts, labels, classes = read_omniglot(root, side=side, download=download)
    elif name == "mini-imagenet":
        parts, labels, classes = read_mini_imagenet(root, side=side)
    else:
        parts, labels, classes = read_cifar_fs(root, side=side, download=download)
    return FewShotSet(stack_images(parts), torch.from_numpy(labels), tuple(classes))


def stack_images(parts: list[np.ndarray], chunk: int = 4096) -> torch.Tensor:
    """uint8 ``N×H×W[×C]`` arrays as one float32 ``N×C×H×W`` tensor, converted in chunks.

    Avoids the float copies of a whole-array conversion (mini-ImageNet at 84×84 is 5 GB as
    float32).
    """
    n = sum(len(p) for p in parts)
    first = image_tensor(parts[0][:1])
    out = torch.empty((n, *first.shape[1:]), dtype=torch.float32)
    at = 0
    for p in parts:
        for s in range(0, len(p), chunk):
            block = image_tensor(p[s:s + chunk])
            out[at:at + len(block)] = block
            at += len(block)
    return out


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    """Square-resize uint8 ``N×H×W×C`` images with Lanczos (no-op at the same size)."""
    if images.shape[1:3] == (side, side):
        return images
    from PIL import Image

    out = np.empty((len(images), side, side, images.shape[3]), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[2] == 1 else im)
        arr = np.asarray(pil.resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8)
        out[i] = arr.reshape(side, side, -1)
    return out


# ----------------------------------------------------------------------------- Omniglot
def _subdirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _omniglot_png(path: Path, side: int, invert: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = im.convert("L")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"omniglot: cannot read {path} ({exc}); delete the folder and "
                        "download it again") from exc
    if grey.size != (side, side):
        grey = grey.resize((side, side), Image.Resampling.LANCZOS)
    arr = np.asarray(grey, dtype=np.uint8)
    return 255 - arr if invert else arr


def read_omniglot(root: Path, *, side: int = 28, invert: bool = True, download: bool = False
                  ) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """Omniglot characters: images (uint8 ``N×side×side``), labels and per-class records.

    Records: ``name`` (``alphabet/character``), ``alphabet``, ``character``, ``set``
    (``background``/``evaluation``) and ``part`` (``train``/``test``).
    """
    base = root / "omniglot-py"
    dirs = [base / f"images_{s}" for s, _ in OMNIGLOT_SETS]
    if not all(d.is_dir() for d in dirs):
        if not download:
            raise DataError(f"omniglot not found: expected {dirs[0]} and {dirs[1]} "
                            "(<alphabet>/<character>/*.png); set data.download = true "
                            "(torchvision.datasets.Omniglot fetches both), or unzip "
                            "images_background.zip and images_evaluation.zip of "
                            f"github.com/brendenlake/omniglot into {base}")
        _download_omniglot(root)
    images, labels, classes = [], [], []
    for (set_name, part), directory in zip(OMNIGLOT_SETS, dirs, strict=True):
        alphabets = _subdirs(directory)
        if not alphabets:
            raise DataError(f"omniglot: no alphabet folders in {directory}")
        for alphabet in alphabets:
            for character in _subdirs(alphabet):
                files = sorted(character.glob("*.png"))
                if not files:
                    raise DataError(f"omniglot: no PNG images in {character}")
                images += [_omniglot_png(f, side, invert) for f in files]
                labels += [len(classes)] * len(files)
                classes.append({"name": f"{alphabet.name}/{character.name}",
                                "alphabet": alphabet.name, "character": character.name,
                                "set": set_name, "part": part})
    return [np.stack(images)], np.asarray(labels, dtype=np.int64), classes


def _download_omniglot(root: Path) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        for background in (True, False):
            tvd.Omniglot(str(root), background=background, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise DataError(f"downloading omniglot into {root} failed ({exc}); check the network "
                        "or place the files there yourself") from exc


# ----------------------------------------------------------------------------- mini-ImageNet
def _mini_imagenet_dir(root: Path) -> Path:
    """``ROOT/mini-imagenet``, or ``ROOT`` itself when the pickles lie there (learn2learn)."""
    names = [f"mini-imagenet-cache-{mode}.pkl" for mode, _ in MINI_IMAGENET_FILES]
    for directory in (root / "mini-imagenet", root):
        if all((directory / n).is_file() for n in names):
            return directory
    expected = ", ".join(str(root / "mini-imagenet" / n) for n in names)
    raise DataError(f"mini-imagenet not found: expected {expected} (no automatic download; "
                    "get the Ravi & Larochelle pickles that learn2learn's MiniImagenet uses, "
                    "e.g. zenodo.org/record/7978538, and put them there)")


def _mini_imagenet_part(path: Path, side: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="latin1")  # latin1: Python 2 numpy pickles
        images, class_dict = data["image_data"], data["class_dict"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as exc:
        raise DataError(f"corrupt mini-imagenet file {path}: {exc!r}; expected a pickled dict "
                        "with 'image_data' and 'class_dict'") from exc
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"corrupt mini-imagenet file {path}: image_data is {images.dtype} "
                        f"{images.shape}, expected uint8 N×H×W×3")
    keys = sorted(class_dict, key=str)
    rows = [np.asarray(class_dict[k], dtype=np.int64).reshape(-1) for k in keys]
    if any(len(r) == 0 or r.min() < 0 or r.max() >= len(images) for r in rows):
        raise DataError(f"corrupt mini-imagenet file {path}: class_dict rows outside "
                        f"0..{len(images) - 1} (or a class without images)")
    labels = np.concatenate([np.full(len(r), k, dtype=np.int64) for k, r in enumerate(rows)])
    return _resize(images[np.concatenate(rows)], side), [str(k) for k in keys], labels


def read_mini_imagenet(root: Path, *, side: int = 84
                       ) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """mini-ImageNet: images (uint8 ``N×side×side×3``, per part), labels, records.

    Records: ``name`` (the WordNet id) and ``part`` (the file's part; ``validation`` is
    ``val``). Classes are numbered part by part, WordNet ids sorted within a part.
    """
    directory = _mini_imagenet_dir(root)
    parts, labels, classes = [], [], []
    for mode, part in MINI_IMAGENET_FILES:
        x, wnids, y = _mini_imagenet_part(directory / f"mini-imagenet-cache-{mode}.pkl", side)
        parts.append(x)
        labels.append(y + len(classes))
        classes += [{"name": w, "part": part} for w in wnids]
    return parts, np.concatenate(labels), classes


# ----------------------------------------------------------------------------- CIFAR-FS
def read_cifar_fs(root: Path, *, side: int = 32, download: bool = False
                  ) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """CIFAR-FS: every CIFAR-100 image (train and test pooled), labels = fine labels.

    Records: ``name`` (the fine label name) and ``part`` from :data:`CIFAR_FS_SPLIT`.
    """
    from fednas.data.datasets import _cifar_loader

    raw = _cifar_loader("cifar-fs", "cifar-100-python", "CIFAR100", True)(root, download)
    part_of = {n: p for p, names in CIFAR_FS_SPLIT.items() for n in names}
    unknown = sorted(set(raw.class_names) - set(part_of))
    if unknown or len(raw.class_names) != len(part_of):
        raise DataError(f"cifar-fs: {root / 'cifar-100-python' / 'meta'} does not list the 100 "
                        f"CIFAR-100 fine classes (unknown: {unknown[:5]}, "
                        f"{len(raw.class_names)} names)")
    x = _resize(np.concatenate([raw.x, raw.x_test]), side)
    y = np.concatenate([raw.y, raw.y_test]).astype(np.int64)
    return [x], y, [{"name": n, "part": part_of[n]} for n in raw.class_names]
