"""The meta phase's data: the few-shot pool of ``meta.dataset``, its class split, and the
check that every configured task size can be drawn from it (run before any phase starts)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from fednas.data.episodes import ClassSplit, FewShotSet, official_split, split_classes
from fednas.data.fewshot import load_fewshot
from fednas.errors import ConfigError, DataError
from fednas.meta.setup import MetaSetup


@lru_cache(maxsize=1)
def fewshot_data(setup: MetaSetup) -> tuple[FewShotSet, ClassSplit]:
    """Every sample of ``meta.dataset`` and its class-disjoint split (seeded).

    Cached for the last configuration seen: the task-size check, the federated client-share
    check and the meta phase of one run load the pool once (mini-ImageNet is ~5 GB as
    float32). Callers take subsets (copies) and must not modify the returned tensors.
    """
    m = setup.meta
    options = None
    if m.dataset == "glyphs":
        from fednas.data.glyphs import GlyphOptions

        options = GlyphOptions(scripts=m.glyph_scripts or None, max_per_script=m.glyph_letters,
                               samples_per_class=m.glyph_samples)
    root = Path(m.root or setup.data.root).expanduser()
    try:
        data = load_fewshot(m.dataset, root, glyph_options=options, image_size=m.image_size,
                            download=setup.data.download)
    except ConfigError as exc:  # the loaders name data.dataset
        raise ConfigError(str(exc).replace("data.dataset", "meta.dataset", 1)) from None
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        key = "meta.root" if m.root else "data.root"
        where = f" {exc.filename}" if exc.filename else ""
        raise DataError(f"meta.dataset {m.dataset!r}: {exc.strerror or exc}:{where} ({key} = "
                        f"{root}; is it a readable, writable directory?)") from exc
    seed = setup.seed + m.seed_offset
    try:
        if m.split_by == "official":
            from fednas.data.fewshot import VAL_GROUPS

            split = official_split(data, val_share=m.split[1] / (m.split[0] + m.split[1]),
                                   by=VAL_GROUPS.get(m.dataset), seed=seed)
        else:
            split = split_classes(data, m.split, by=None if m.split_by == "class" else
                                  m.split_by, seed=seed)
    except ValueError as exc:
        raise ConfigError(f"meta.split: {exc}") from None
    return data, split


def check_tasks(setup: MetaSetup) -> None:
    """Fail before any phase runs if the few-shot pools cannot yield ``meta.*`` tasks."""
    m = setup.meta
    data, split = fewshot_data(setup)
    for part in ("train", m.eval_split):
        _, counts = np.unique(data.y.numpy()[split.indices(data.y, part)], return_counts=True)
        smallest = int(counts.min()) if len(counts) else 0
        for shots in m.shots:
            if len(counts) < m.ways or smallest < shots + m.queries:
                raise ConfigError(
                    f"meta.shots: {m.ways}-way {shots}-shot tasks with meta.queries = "
                    f"{m.queries} need >= {m.ways} classes of >= {shots + m.queries} samples "
                    f"in meta-{part}; it has {len(counts)} classes, the smallest {smallest} "
                    f"samples (lower meta.shots / meta.queries / meta.ways, or give more "
                    f"samples per class{', meta.glyph-samples' if m.dataset == 'glyphs' else ''})")
    if m.clients:  # federated Reptile: every client's share of classes must hold a task
        from fednas.meta.fedmeta import client_classes

        client_classes(data.subset(split.train), m.clients, m.ways, setup.seed + m.seed_offset)
