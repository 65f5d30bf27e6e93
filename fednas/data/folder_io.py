"""Reader for image folders (``folder:PATH``): torchvision's ImageFolder layout.

Returns :class:`~fednas.data.io.RawData` and raises :class:`~fednas.errors.DataError` naming
the offending file and the problem, like the other readers of :mod:`fednas.data.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fednas.data.io import RawData
from fednas.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

def _class_dirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_image_tree(directory: Path, classes: list[str]) -> tuple[list, list[int], list[Path]]:
    from PIL import Image, UnidentifiedImageError

    images, labels, paths = [], [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (directory / cls).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    images.append(im.copy())
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"image folder {directory}: cannot read {f} ({exc})") from exc
            labels.append(label)
            paths.append(f)
    return images, labels, paths


def _images_to_array(images: list, paths: list[Path], color: bool, directory: Path) -> np.ndarray:
    size = images[0].size
    out = []
    for im, p in zip(images, paths, strict=True):
        if im.size != size:
            raise DataError(f"image folder {directory}: {p} is {im.size[0]}×{im.size[1]} but "
                            f"{paths[0]} is {size[0]}×{size[1]}; resize all images to one size")
        arr = np.asarray(im.convert("RGB" if color else "L"), dtype=np.uint8)
        out.append(arr if color else arr[..., None])
    return np.stack(out)


def read_folder(path: Path) -> RawData:
    """Read an ImageFolder tree (``PATH/<class>/<image>``) into memory.

    If ``PATH`` holds ``train/`` and ``test/`` class trees, ``test/`` is the official test
    set. Grayscale images stay 1 channel; if any image has colour, all become RGB.
    """
    if not path.is_dir():
        raise DataError(f"image folder {path} not found: give a directory as folder:PATH")
    splits = {"train": path / "train", "test": path / "test"}
    has_split = all(p.is_dir() for p in splits.values())
    root = splits["train"] if has_split else path
    classes = [d.name for d in _class_dirs(root)]
    if not classes:
        raise DataError(f"image folder {root} has no class subfolders: expected "
                        f"{root}/<class>/<image>.png")
    groups = {"train": _read_image_tree(root, classes)}
    if has_split:
        groups["test"] = _read_image_tree(splits["test"], classes)
    for name, (images, labels, _) in groups.items():
        missing = sorted(set(classes) - {classes[i] for i in labels}) if name == "train" else []
        if not images or missing:
            raise DataError(f"image folder {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                            f"for classes {missing or classes}")
    all_images = [im for images, _, _ in groups.values() for im in images]
    all_paths = [p for _, _, paths in groups.values() for p in paths]
    color = any(im.mode not in ("1", "L", "I", "I;16", "F", "LA") for im in all_images)
    x_all = _images_to_array(all_images, all_paths, color, path)
    n = len(groups["train"][0])
    y = np.asarray(groups["train"][1], dtype=np.int64)
    if has_split:
        yt = np.asarray(groups["test"][1], dtype=np.int64)
        return RawData(x_all[:n], y, tuple(classes), x_all[n:], yt)
    return RawData(x_all, y, tuple(classes))
