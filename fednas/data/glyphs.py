"""Glyphs: an Omniglot-like few-shot dataset rendered from the installed fonts.

Classes are letters of many scripts (Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew,
Arabic, Indic scripts, Thai, Ethiopic, historic scripts, ...) that the fonts cover; the
samples of a class are the same letter rendered in different fonts and weights with a small
seeded augmentation (rotation ±10°, scale, shift, stroke thickening), as 28×28 uint8.
Bicameral scripts contribute lower-case letters only (Omniglot has no case), and letters
that look identical to an earlier class (Latin ``o`` / Cyrillic ``о``) are dropped.

The set is built once (a few seconds) and cached in ``{root}/glyphs/glyphs-v1.npz``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import unicodedata
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fednas.data.glyph_render import SIZE, Renderer, dedupe, place
from fednas.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VERSION = 1
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
SKIP_FONTS = ("Math", "Symbols", "Music", "Emoji", "SignWriting")
FONTS_HINT = "apt-get install fonts-noto-core fonts-dejavu-core (Debian/Ubuntu)"

#: (script, inclusive code point ranges). Upper-case letters whose lower case lies in the
#: same ranges are skipped. Order matters: an earlier script keeps a shared-looking letter.
SCRIPTS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("latin", ((0x61, 0x7A),)), ("greek", ((0x3B1, 0x3C9),)),
    ("cyrillic", ((0x430, 0x44F),)), ("armenian", ((0x561, 0x586),)),
    ("georgian", ((0x10D0, 0x10FA),)), ("hebrew", ((0x5D0, 0x5EA),)),
    ("arabic", ((0x621, 0x64A),)), ("syriac", ((0x710, 0x72F),)),
    ("thaana", ((0x780, 0x7A5),)), ("nko", ((0x7CA, 0x7EA),)),
    ("samaritan", ((0x800, 0x815),)), ("mandaic", ((0x840, 0x858),)),
    ("devanagari", ((0x904, 0x939),)), ("bengali", ((0x985, 0x9B9),)),
    ("gurmukhi", ((0xA05, 0xA39),)), ("gujarati", ((0xA85, 0xAB9),)),
    ("oriya", ((0xB05, 0xB39),)), ("tamil", ((0xB85, 0xBB9),)),
    ("telugu", ((0xC05, 0xC39),)), ("kannada", ((0xC85, 0xCB9),)),
    ("malayalam", ((0xD05, 0xD3A),)), ("sinhala", ((0xD85, 0xDC6),)),
    ("thai", ((0xE01, 0xE2E),)), ("lao", ((0xE81, 0xEAE),)),
    ("tibetan", ((0xF40, 0xF6C),)), ("myanmar", ((0x1000, 0x102A),)),
    ("ethiopic", ((0x1200, 0x135A),)), ("cherokee", ((0x13A0, 0x13F5),)),
    ("canadian-syllabics", ((0x1401, 0x166C),)), ("ogham", ((0x1681, 0x169A),)),
    ("runic", ((0x16A0, 0x16EA),)), ("khmer", ((0x1780, 0x17A2),)),
    ("mongolian", ((0x1820, 0x1878),)), ("tai-le", ((0x1950, 0x196D),)),
    ("balinese", ((0x1B05, 0x1B33),)), ("sundanese", ((0x1B83, 0x1BA0),)),
    ("ol-chiki", ((0x1C5A, 0x1C77),)), ("glagolitic", ((0x2C30, 0x2C5F),)),
    ("coptic", ((0x2C80, 0x2CE3),)), ("tifinagh", ((0x2D30, 0x2D67),)),
    ("yi", ((0xA000, 0xA48C),)), ("lisu", ((0xA4D0, 0xA4F7),)),
    ("vai", ((0xA500, 0xA60B),)), ("bamum", ((0xA6A0, 0xA6E5),)),
    ("javanese", ((0xA984, 0xA9B2),)), ("meetei-mayek", ((0xABC0, 0xABE2),)),
    ("old-italic", ((0x10300, 0x1031F),)), ("gothic", ((0x10330, 0x1034A),)),
    ("deseret", ((0x10428, 0x1044F),)), ("shavian", ((0x10450, 0x1047F),)),
    ("osmanya", ((0x10480, 0x1049D),)), ("phoenician", ((0x10900, 0x10915),)),
    ("old-turkic", ((0x10C00, 0x10C48),)), ("adlam", ((0x1E922, 0x1E943),)),
)


@dataclass(frozen=True)
class GlyphOptions:
    """What to build. ``scripts=None`` means every script in :data:`SCRIPTS`."""

    scripts: tuple[str, ...] | None = None
    max_per_script: int = 40  # letters per script, spread evenly over its range
    samples_per_class: int = 20
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError for unknown scripts or non-positive sizes."""
        known = {s for s, _ in SCRIPTS}
        unknown = sorted(set(self.scripts or ()) - known)
        if unknown:
            raise ConfigError(f"glyph scripts {unknown} unknown; choose from {sorted(known)}")
        if self.max_per_script < 1 or self.samples_per_class < 1:
            raise ConfigError("glyph max_per_script and samples_per_class must be >= 1")


#: Options used by ``load_dataset("glyphs")``; tests may patch this for a smaller set.
DEFAULT_OPTIONS = GlyphOptions()


# ----------------------------------------------------------------------------- fonts
def find_fonts(dirs: tuple[Path, ...] | None = None) -> list[Path]:
    """Return the usable font files under ``dirs`` (recursively), sorted by path."""
    found = []
    for d in FONT_DIRS if dirs is None else dirs:
        if d.is_dir():
            found += [p for p in d.rglob("*") if p.suffix.lower() in FONT_SUFFIXES]
    return sorted(p for p in found if not any(s in p.name for s in SKIP_FONTS))


@functools.lru_cache(maxsize=1024)
def _font_cmap(path: Path) -> frozenset[int] | None:
    """Code points the font maps to a glyph (its cmap), empty if unreadable, None if unknown.

    Without fontTools the coverage is unknown and only the rendering checks (empty or
    ``.notdef`` "tofu" output) reject letters.
    """
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return None
    try:
        font = TTFont(str(path), lazy=True, fontNumber=0)
        try:
            return frozenset(font.getBestCmap() or {})
        finally:
            font.close()
    except Exception as exc:  # noqa: BLE001 - fontTools raises many types on bad files
        log.warning("skipping unreadable font %s (%s)", path, exc)
        return frozenset()


def _letters(ranges: tuple[tuple[int, int], ...]) -> list[str]:
    """Letters of a script's ranges: Lo/Ll, and Lu only when its lower case is elsewhere."""
    inside = {cp for lo, hi in ranges for cp in range(lo, hi + 1)}
    out = []
    for cp in sorted(inside):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        lower = ch.lower()
        if cat in ("Ll", "Lo") or (cat == "Lu" and not (len(lower) == 1
                                                        and ord(lower) in inside
                                                        and lower != ch)):
            out.append(ch)
    return out


# ----------------------------------------------------------------------------- build
def _candidates(opts: GlyphOptions, fonts: list[Path]) -> list[tuple[str, str, list[Path]]]:
    """(script, letter, covering fonts) for each letter some font covers, capped per script."""
    cmaps = {p: _font_cmap(p) for p in fonts}
    wanted = set(opts.scripts) if opts.scripts else None
    out = []
    for script, ranges in SCRIPTS:
        if wanted is not None and script not in wanted:
            continue
        covered = [(ch, [p for p in fonts if cmaps[p] is None or ord(ch) in cmaps[p]])
                   for ch in _letters(ranges)]
        covered = [(ch, fs) for ch, fs in covered if fs]
        if len(covered) > opts.max_per_script:
            pick = np.linspace(0, len(covered) - 1, opts.max_per_script).round().astype(int)
            covered = [covered[i] for i in pick]
        out += [(script, ch, fs) for ch, fs in covered]
    return out


def build_glyphs(options: GlyphOptions | None = None, *,
                 font_dirs: tuple[Path, ...] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Render the glyph set (no caching); :func:`render_glyphs` also says which font drew
    each sample.

    Returns
    -------
    x : numpy.ndarray
        uint8 ``N×28×28``, class-major.
    y : numpy.ndarray
        int64 labels.
    classes : list of dict
        Per label: ``name`` (``"greek:α"``), ``script``, ``char``, ``codepoint``,
        ``unicode_name``, ``num_fonts``.
    """
    return render_glyphs(options, font_dirs=font_dirs)[:3]


def render_glyphs(options: GlyphOptions | None = None, *,
                  font_dirs: tuple[Path, ...] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """:func:`build_glyphs` and the font file name (str) that drew each sample: the natural
    client id of the set (every font a "writer", as FEMNIST's writers)."""
    opts = options or DEFAULT_OPTIONS
    opts.validate()
    fonts = find_fonts(font_dirs)
    if not fonts:
        where = ", ".join(str(d) for d in (font_dirs or FONT_DIRS))
        raise DataError(f"glyphs: no font files found in {where}; {FONTS_HINT}")
    renderer = Renderer()
    kept = []
    for script, ch, fs in _candidates(opts, fonts):
        usable = [(p, g) for p in fs[:64] if (g := renderer.glyph(p, ch)) is not None]
        if usable:
            kept.append((script, ch, usable))
    if not kept:
        raise DataError(f"glyphs: the installed fonts cover none of the letters; {FONTS_HINT}")
    keep = dedupe(np.stack([place(usable[0][1], None) for _, _, usable in kept]))
    kept = [k for k, ok in zip(kept, keep, strict=True) if ok]
    n = opts.samples_per_class
    x = np.empty((len(kept) * n, SIZE, SIZE), dtype=np.uint8)
    drawn_by = np.empty(len(kept) * n, dtype=object)
    classes = []
    for label, (script, ch, usable) in enumerate(kept):
        rng = np.random.default_rng([opts.seed, ord(ch)])
        order = rng.permutation(len(usable))
        for j in range(n):
            font, glyph = usable[order[j % len(usable)]]
            x[label * n + j], drawn_by[label * n + j] = place(glyph, rng), font.name
        classes.append({"name": f"{script}:{ch}", "script": script, "char": ch,
                        "codepoint": f"U+{ord(ch):04X}",
                        "unicode_name": unicodedata.name(ch, ""), "num_fonts": len(usable)})
    y = np.repeat(np.arange(len(kept), dtype=np.int64), n)
    return x, y, classes, drawn_by.astype(str)


# ----------------------------------------------------------------------------- cache
def cache_path(root: str | Path, options: GlyphOptions | None = None) -> Path:
    """``{root}/glyphs/glyphs-v1.npz`` for the default options, a hashed name otherwise."""
    opts = options or DEFAULT_OPTIONS
    base = Path(root).expanduser() / "glyphs"
    if opts == GlyphOptions():
        return base / f"glyphs-v{VERSION}.npz"
    digest = hashlib.sha1(json.dumps(asdict(opts), sort_keys=True).encode()).hexdigest()[:10]
    return base / f"glyphs-v{VERSION}-{digest}.npz"


def _save(path: Path, x: np.ndarray, y: np.ndarray, classes: list[dict],
          opts: GlyphOptions, fonts: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, x=x, y=y.astype(np.int32),
                                classes=np.array(json.dumps(classes, ensure_ascii=False)),
                                fonts=fonts,
                                options=np.array(json.dumps(asdict(opts), sort_keys=True)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, opts: GlyphOptions) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if json.loads(str(npz["options"])) != json.loads(json.dumps(asdict(opts))):
                return None
            return npz["x"], npz["y"].astype(np.int64), json.loads(str(npz["classes"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        log.warning("glyph cache %s unreadable (%s); rebuilding it", path, exc)
        return None


def load_glyphs(root: str | Path, options: GlyphOptions | None = None, *,
                rebuild: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Load the glyph set from its cache under ``root``, building it first if needed.

    Returns ``(x, y, classes)`` as :func:`build_glyphs` does.
    """
    opts = options or DEFAULT_OPTIONS
    path = cache_path(root, opts)
    if not rebuild and path.is_file():
        cached = _load(path, opts)
        if cached is not None:
            return cached
    x, y, classes, fonts = render_glyphs(opts)
    _save(path, x, y, classes, opts, fonts)
    log.info("built %d glyph classes × %d samples into %s", len(classes),
             opts.samples_per_class, path)
    return x, y, classes


def glyph_classes(root: str | Path, options: GlyphOptions | None = None) -> list[dict]:
    """Per-label class records (``name``, ``script``, ``char``, ...) of the glyph set."""
    return load_glyphs(root, options)[2]


def glyph_fonts(root: str | Path, options: GlyphOptions | None = None) -> np.ndarray:
    """The font file name that drew each sample of :func:`load_glyphs` (aligned with its
    ``x``/``y``); a cache written before fonts were recorded is rebuilt (same images)."""
    opts = options or DEFAULT_OPTIONS
    path = cache_path(root, opts)
    for rebuild in (False, True):
        if rebuild or not path.is_file():
            load_glyphs(root, opts, rebuild=rebuild)
        try:
            with np.load(path, allow_pickle=False) as npz:
                same = json.loads(str(npz["options"])) == json.loads(json.dumps(asdict(opts)))
                if same and "fonts" in npz.files:
                    return npz["fonts"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("glyph cache %s unreadable (%s); rebuilding it", path, exc)
    raise DataError(f"glyph cache {path} records no fonts after a rebuild; delete it")
