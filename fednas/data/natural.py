"""Natural client ids: the per-sample field (a FEMNIST writer, a glyph font) that
``partition.scheme = "natural"`` turns into one client per distinct id.

A reader puts the ids into :attr:`RawData.groups <fednas.data.io.RawData>` (field
``group_field``); :func:`select_groups` keeps them only when the natural scheme asks for
them, :func:`fednas.data.datasets.load_dataset` carries them through its splits, and
:func:`fednas.data.partition.partition_indices` hands them to flwr-datasets'
``NaturalIdPartitioner``, whose client ``i`` holds the ``i``-th id of :func:`client_ids`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fednas.data.io import RawData
from fednas.errors import ConfigError, DataError


def select_groups(raw: RawData, name: str, group_by: str | None) -> RawData:
    """``raw`` with the client ids of field ``group_by`` (``""``: the dataset's own field),
    or without ids when ``group_by`` is None.

    Raises
    ------
    DataError
        If ids are asked for and ``raw`` (dataset ``name``) has none, has them in another
        field, or has not one per training sample.
    """
    if group_by is None:
        return raw if raw.groups is None else replace(raw, groups=None, group_field="")
    if raw.groups is None:
        raise DataError(f"partition.by: dataset {name!r} has no per-sample client id, which "
                        "partition.scheme = 'natural' needs; use glyphs (font), femnist "
                        "(writer_id) or parquet:/hf-disk: data with an id column")
    if group_by and group_by != raw.group_field:
        raise DataError(f"partition.by = {group_by!r}: dataset {name!r} has client ids in "
                        f"field {raw.group_field!r} only")
    if len(raw.groups) != len(raw.y):
        raise DataError(f"dataset {name!r}: {len(raw.groups)} client ids for {len(raw.y)} "
                        "training samples")
    return raw


def client_ids(groups: np.ndarray) -> list[str]:
    """The id of each client of a natural partition, in client order (the sorted distinct
    ids, as ``NaturalIdPartitioner`` numbers them)."""
    return [str(v) for v in np.unique(np.asarray(groups))]


def check_natural(groups: np.ndarray | None, n_samples: int, num_clients: int,
                  by: str = "") -> list[str]:
    """Validate a natural partition's ids against ``partition.num-clients``; its client ids.

    ``num_clients`` must equal the number of distinct ids in the training split (one client
    per id: Flower's simulation starts that many nodes before any data is read).

    Raises
    ------
    ConfigError
        Naming ``partition.by`` (no ids) or ``partition.num-clients`` (another count).
    """
    if groups is None:
        raise ConfigError("partition.by: partition.scheme = 'natural' needs per-sample client "
                          "ids and the data has none")
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_samples:
        raise ConfigError(f"partition.by: {groups.shape} client ids for {n_samples} samples")
    ids = client_ids(groups)
    if num_clients != len(ids):
        raise ConfigError(f"partition.num-clients = {num_clients} but the training split "
                          f"holds {len(ids)} distinct {by or 'client'} ids; "
                          "partition.scheme = 'natural' gives one client per id: set "
                          f"partition.num-clients = {len(ids)}")
    return ids
