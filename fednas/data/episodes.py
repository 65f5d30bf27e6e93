"""Few-shot data: class-disjoint meta-train/val/test splits and N-way K-shot episodes.

A :class:`FewShotSet` holds every image of a labelled set with one metadata record per class
(for glyphs: ``script``, ``char``, ...). :func:`split_classes` divides the *classes* (never
the samples) into meta-train/val/test, optionally keeping whole groups such as a glyph
script together so that test scripts are unseen; :func:`official_split` follows the split a
benchmark ships with (Omniglot, mini-ImageNet, CIFAR-FS: :mod:`fednas.data.fewshot`). An
:class:`Episode` is one task: ``N·K`` support and ``N·Q`` query samples, class-major, labels
remapped to ``0..N-1``.
Task *sampling* (learn2learn) lives in :mod:`fednas.meta.task_sampler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PARTS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class FewShotSet:
    """Images ``x`` (float32 ``N×C×H×W`` in [0, 1]) with original class ids ``y``.

    ``classes[i]`` is the metadata dict of class id ``i`` (at least ``name``); a subset keeps
    the full tuple so ids stay global.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[dict, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def class_ids(self) -> np.ndarray:
        """Sorted ids of the classes that have samples here."""
        return np.unique(self.y.numpy())

    def subset(self, class_ids: Sequence[int] | np.ndarray) -> FewShotSet:
        """The samples of ``class_ids`` only (ids unchanged)."""
        keep = torch.isin(self.y, torch.as_tensor(np.asarray(class_ids), dtype=torch.int64))
        return FewShotSet(self.x[keep], self.y[keep], self.classes)


def image_tensor(x: np.ndarray) -> torch.Tensor:
    """``N×H×W`` or ``N×H×W×C`` images (uint8 or float in [0, 1]) as float32 ``N×C×H×W``."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    unit = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- splits
@dataclass(frozen=True, eq=False)
class ClassSplit:
    """Disjoint class ids of the meta-train, meta-val and meta-test parts (sorted)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    by: str | None = None
    groups: tuple[tuple[str, ...], ...] | None = None  # group names per part when ``by``

    def part(self, name: str) -> np.ndarray:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; choose from {PARTS}")
        return getattr(self, name)

    def indices(self, labels: np.ndarray | torch.Tensor, part: str) -> np.ndarray:
        """Sample indices of ``labels`` whose class is in ``part``."""
        return np.flatnonzero(np.isin(np.asarray(labels), self.part(part)))

    def describe(self) -> dict:
        """JSON-able summary for logs and ``summary.json``."""
        out: dict = {p: self.part(p).tolist() for p in PARTS}
        if self.by is not None:
            out["by"] = self.by
            out["groups"] = dict(zip(PARTS, map(list, self.groups or ((),) * 3), strict=True))
        return out


def _quota(total: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder counts; every part with a positive fraction gets at least one."""
    raw = fractions * total
    counts = np.floor(raw).astype(np.int64)
    for k in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[k] += 1
    for k in np.flatnonzero((fractions > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    return counts


def split_classes(source: FewShotSet | Sequence[dict] | np.ndarray | torch.Tensor,
                  fractions: Sequence[float] = (0.64, 0.16, 0.2), *, by: str | None = None,
                  seed: int = 0) -> ClassSplit:
    """Split classes into disjoint meta-train/val/test parts, deterministically for ``seed``.

    Parameters
    ----------
    source
        A :class:`FewShotSet`, per-class metadata (class id = position), or per-sample labels.
    fractions
        ``(train, val, test)`` shares of the classes; they sum to 1, val may be 0.
    by
        A metadata key (``"script"``): whole groups go to one part, so test groups are
        unseen; the shares then hold approximately (groups differ in size).
    seed
        Seed of the shuffle.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be (train, val, test) >= 0 summing to 1, "
                         f"got {tuple(fractions)}")
    if frac[0] == 0 or frac[2] == 0:
        raise ValueError("split fractions: train and test need a positive share")
    if isinstance(source, FewShotSet):
        ids, meta = source.class_ids(), source.classes
    elif isinstance(source, np.ndarray | torch.Tensor):
        ids, meta = np.unique(np.asarray(source)), None
    else:
        meta = tuple(source)
        ids = np.arange(len(meta))
    rng = np.random.default_rng(seed)
    if by is None:
        order = rng.permutation(ids)
        bounds = np.cumsum(_quota(len(ids), frac))
        parts = np.split(order, bounds[:2])
        groups = None
    else:
        if meta is None:
            raise ValueError(f"split by {by!r} needs per-class metadata, not bare labels")
        missing = [int(i) for i in ids if by not in meta[i]]
        if missing:
            raise ValueError(f"split by {by!r}: classes {missing[:5]} have no {by!r} entry")
        names = sorted({str(meta[i][by]) for i in ids})
        names = [names[k] for k in rng.permutation(len(names))]
        size = {g: sum(str(meta[i][by]) == g for i in ids) for g in names}
        targets = np.cumsum(frac) * len(ids)
        part_of, seen = {}, 0
        for g in names:  # a group goes to the part its midpoint falls in
            part_of[g] = int(np.searchsorted(targets, seen + size[g] / 2, side="right"))
            seen += size[g]
        parts = [np.array([i for i in ids if part_of[str(meta[i][by])] == p], dtype=np.int64)
                 for p in range(3)]
        groups = tuple(tuple(sorted(g for g in names if part_of[g] == p)) for p in range(3))
    for name, part, f in zip(PARTS, parts, frac, strict=True):
        if f > 0 and len(part) == 0:
            what = f"groups of {by!r}" if by else "classes"
            raise ValueError(f"split fractions {tuple(fractions)}: too few {what} "
                             f"({len(ids) if by is None else len(names)}) for a {name} part")
    train, val, test = (np.sort(p).astype(np.int64) for p in parts)
    return ClassSplit(train, val, test, by, groups)


def official_split(source: FewShotSet | Sequence[dict], *, val_share: float = 0.0,
                   by: str | None = None, seed: int = 0) -> ClassSplit:
    """The split a benchmark ships with: each class goes to the ``part`` of its record.

    Without official meta-val classes (Omniglot: background = train, evaluation = test) and
    with ``val_share > 0``, that share of the train classes becomes meta-val, whole groups of
    ``by`` (Omniglot: alphabets) drawn at random for ``seed`` (the midpoint rule of
    :func:`split_classes`); with official val classes ``val_share`` is ignored. ``by`` also
    names the groups reported per part.
    """
    if isinstance(source, FewShotSet):
        ids, meta = source.class_ids(), source.classes
    else:
        meta = tuple(source)
        ids = np.arange(len(meta))
    bad = [int(i) for i in ids if meta[i].get("part") not in PARTS]
    if bad:
        raise ValueError(f"classes {bad[:5]} have no official part {PARTS} in their metadata: "
                         "this dataset has no official split")
    if not 0.0 <= val_share < 1.0:
        raise ValueError(f"val share must be in [0, 1), got {val_share}")
    key = (lambda i: str(meta[i][by])) if by else str
    part = {int(i): meta[i]["part"] for i in ids}
    train = [i for i in part if part[i] == "train"]
    if val_share > 0 and "val" not in part.values():
        names = sorted({key(i) for i in train})
        names = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
        seen, target = 0, (1.0 - val_share) * len(train)
        for g in names:  # a group goes to val when its midpoint lies past the train share
            members = [i for i in train if key(i) == g]
            if seen + len(members) / 2 > target:
                part.update(dict.fromkeys(members, "val"))
            seen += len(members)
    parts = [np.array(sorted(i for i in part if part[i] == p), dtype=np.int64) for p in PARTS]
    empty = [p for p, ids_ in zip(PARTS, parts, strict=True)
             if len(ids_) == 0 and (p != "val" or val_share > 0)]
    if empty:
        raise ValueError(f"official split: no classes for the {'/'.join(empty)} part "
                         f"(val share {val_share:g}, grouped by {by or 'class'})")
    groups = tuple(tuple(sorted({key(i) for i in p})) for p in parts) if by else None
    return ClassSplit(*parts, by=by, groups=groups)


# ----------------------------------------------------------------------------- episodes
@dataclass(frozen=True, eq=False)
class Episode:
    """One N-way task: support ``N·K`` and query ``N·Q`` samples, class-major, labels 0..N-1.

    ``classes[c]`` is the original class id behind label ``c``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: tuple[int, ...]

    @property
    def ways(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Episode:
        return Episode(self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device), self.classes)


def episode_from_batch(x: torch.Tensor, y: torch.Tensor, *, ways: int, shots: int, queries: int,
                       classes: Sequence[int] | None = None) -> Episode:
    """Split a task batch (labels 0..N-1, ``shots + queries`` samples each) into an episode.

    The first ``shots`` samples of each label (in batch order) are the support, the rest the
    query. ``classes`` gives the original id per label (default ``0..N-1``).
    """
    y = torch.as_tensor(y, dtype=torch.int64)
    support, query = [], []
    for c in range(ways):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) != shots + queries:
            raise ValueError(f"episode label {c} has {len(idx)} samples, expected "
                             f"shots + queries = {shots + queries}")
        support.append(idx[:shots])
        query.append(idx[shots:])
    if len(y) != ways * (shots + queries):
        raise ValueError(f"episode has labels outside 0..{ways - 1}")
    s, q = torch.cat(support), torch.cat(query)
    ids = tuple(range(ways)) if classes is None else tuple(int(c) for c in classes)
    return Episode(x[s], y[s], x[q], y[q], ids)


def split_support(episode: Episode, holdout: int) -> Episode:
    """A sub-episode of the support set alone: ``holdout`` shots per class become the query.

    Used to score an adaptation without touching the real query (AT-NAS fitness).
    """
    shots = len(episode.support_y) // episode.ways
    if not 0 < holdout < shots:
        raise ValueError(f"holding out {holdout} of {shots} support shots per class leaves "
                         "nothing to adapt on or to score; use shots >= 2 and 0 < holdout < shots")
    pos = torch.arange(len(episode.support_y)) % shots
    fit, held = pos < shots - holdout, pos >= shots - holdout
    return Episode(episode.support_x[fit], episode.support_y[fit], episode.support_x[held],
                   episode.support_y[held], episode.classes)
