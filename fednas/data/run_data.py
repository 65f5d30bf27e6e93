"""The dataset a run's search and training phases use: ``data.dataset``, or ``meta-train``.

``data.dataset = "meta-train"`` means the meta-train classes of the meta phase's few-shot
split (``meta.dataset`` divided by ``meta.split`` / ``meta.split-by`` under the run's seed,
exactly the classes :mod:`fednas.meta.tasks` meta-trains on), relabelled ``0..K-1``. The
federated search and retraining then learn the architecture and its weights on those
classes, and the meta-val and meta-test classes stay unseen by every phase until the meta
phase scores them. The samples are split and normalised like any registry dataset's
(a stratified test share, since the pool has no official test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fednas.config.run_config import DataConfig
from fednas.data.datasets import Dataset, load_dataset
from fednas.data.io import RawData

META_TRAIN = "meta-train"


def meta_train_raw(setup: Any) -> RawData:
    """The meta-train classes of a :class:`fednas.meta.setup.MetaSetup`'s few-shot split as
    a :class:`RawData`."""
    from fednas.meta.tasks import fewshot_data

    data, split = fewshot_data(setup)
    index = split.indices(data.y, "train")
    ids = data.y.numpy()[index]
    classes = np.unique(ids)  # sorted: class k of the run is the k-th meta-train id
    x = data.x[index].numpy().transpose(0, 2, 3, 1)  # N×C×H×W in [0, 1] → N×H×W×C
    names = tuple(str(data.classes[c].get("name", c)) for c in classes)
    return RawData(np.ascontiguousarray(x), np.searchsorted(classes, ids).astype(np.int64),
                   names)


def run_dataset(d: DataConfig, seed: int, meta: Any = None,
                group_by: str | None = None) -> Dataset:
    """The training data of ``[data]`` (``d``), split and normalised with ``seed``.

    ``meta`` (a :class:`fednas.meta.setup.MetaSetup`) is needed for ``meta-train`` only (see
    the module docstring); ``group_by`` (``PartitionConfig.group_by()``) loads the natural
    client ids of the train split.
    """
    if d.dataset == META_TRAIN and meta is None:
        raise ValueError("run_dataset: data.dataset = 'meta-train' needs the meta setup")
    raw = meta_train_raw(meta) if d.dataset == META_TRAIN else None
    return load_dataset(d.dataset, root=Path(d.root).expanduser(), val_fraction=d.val_fraction,
                        seed=seed, download=d.download, max_train=d.max_train, raw=raw,
                        group_by=group_by)
