"""Rendering of the glyph set (:mod:`fednas.data.glyphs`): a letter of a font drawn with PIL,
cropped to its ink, placed into 28×28 with a seeded augmentation, and a look-alike filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 28  # output side in pixels
FONT_PX = 64  # render size of the font (pixels per em)
EM_OUT = 26.0  # one em maps to this many output pixels...
FIT_OUT = 24.0  # ...unless the glyph is larger than this (then it is shrunk to fit)
SUPERSAMPLE = 4
DUPLICATE_RMS = 0.045  # canonical renders closer than this (RMS, [0, 1] scale) are one class


class Renderer:
    """Renders letters with cached PIL fonts; returns cropped high-resolution glyphs."""

    def __init__(self) -> None:
        self._fonts: dict[Path, tuple] = {}

    def glyph(self, path: Path, ch: str):
        """The letter's ink, cropped, at FONT_PX; None if empty, tofu, clipped or unreadable."""
        if path not in self._fonts:
            self._fonts[path] = self._open(path)
        font, tofu = self._fonts[path]
        if font is None:
            return None
        crop = self._draw(font, ch)
        if crop is None or (tofu is not None and crop.tobytes() == tofu):
            return None
        return crop

    def _open(self, path: Path) -> tuple:
        from PIL import ImageFont

        try:
            font = ImageFont.truetype(str(path), FONT_PX, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            return None, None
        tofu = self._draw(font, "\U0010FFFD")  # unmapped: renders the font's .notdef
        return font, None if tofu is None else tofu.tobytes()

    @staticmethod
    def _draw(font, ch: str):
        from PIL import Image, ImageDraw

        side = 3 * FONT_PX
        img = Image.new("L", (side, side), 0)
        ImageDraw.Draw(img).text((side / 2, side / 2), ch, fill=255, font=font, anchor="mm")
        box = img.getbbox()
        if box is None or box[0] == 0 or box[1] == 0 or box[2] == side or box[3] == side:
            return None
        crop = img.crop(box)
        if np.asarray(crop, dtype=np.float32).sum() < 255.0 * FONT_PX * 0.5:
            return None  # a dot or hairline: not a usable letter
        return crop


def place(glyph, rng: np.random.Generator | None) -> np.ndarray:
    """Map a cropped glyph into SIZE×SIZE, centred, with optional random augmentation."""
    from PIL import Image, ImageFilter

    w, h = glyph.size
    scale = min(EM_OUT / FONT_PX, FIT_OUT / max(w, h))
    angle, shift = 0.0, (0.0, 0.0)
    if rng is not None:
        scale = min(scale * rng.uniform(0.85, 1.15), (SIZE - 2) / max(w, h))
        angle = np.deg2rad(rng.uniform(-10.0, 10.0))
        shift = tuple(rng.uniform(-2.0, 2.0, size=2))
        if rng.random() < 0.3:
            glyph = glyph.filter(ImageFilter.MaxFilter(3))  # bolder strokes
    out = SIZE * SUPERSAMPLE
    k = 1.0 / (scale * SUPERSAMPLE)
    cos, sin = np.cos(angle) * k, np.sin(angle) * k
    cu, cv = out / 2 + shift[0] * SUPERSAMPLE, out / 2 + shift[1] * SUPERSAMPLE
    data = (cos, sin, w / 2 - cos * cu - sin * cv, -sin, cos, h / 2 + sin * cu - cos * cv)
    img = glyph.transform((out, out), Image.Transform.AFFINE, data,
                          resample=Image.Resampling.BILINEAR)
    return np.asarray(img.reduce(SUPERSAMPLE), dtype=np.uint8)


def dedupe(canon: np.ndarray) -> np.ndarray:
    """Greedy keep-mask: drop a class whose canonical image is ~equal to an earlier kept one."""
    flat = canon.reshape(len(canon), -1).astype(np.float32) / 255.0
    sq = (flat**2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T) / flat.shape[1]
    keep = np.ones(len(canon), dtype=bool)
    for i in range(len(canon)):
        earlier = np.flatnonzero(keep[:i])
        if earlier.size and dist[i, earlier].min() < DUPLICATE_RMS**2:
            keep[i] = False
    return keep
