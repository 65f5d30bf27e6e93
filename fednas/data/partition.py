"""Split a labelled dataset over federated clients (IID, Dirichlet, pathological non-IID,
natural ids).

The schemes are flwr-datasets partitioners run on an in-memory ``datasets.Dataset`` of
``{"label", "idx"}`` (and ``"group"``, the natural client id, for ``natural``); what comes
back is one array of sample indices per client.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import warnings

import numpy as np

from fednas.data.natural import check_natural
from fednas.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMES = ("iid", "dirichlet", "pathological", "natural")


def _quiet_datasets() -> None:
    """Turn off the progress bars and info logs of Hugging Face ``datasets``."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@functools.cache
def _label_table_class() -> type:
    """An in-memory ``datasets.Dataset`` made fast for partitioners.

    ``select`` normally dill-pickles the index list to fingerprint the result (seconds for
    60k numpy ints); here one hash of the index bytes names it (nothing is cached). A column
    read returns a numpy array instead of a ``Column`` that numpy would iterate row by row.
    Instances come only from ``from_dict`` (no indices mapping).
    """
    import datasets

    class LabelTable(datasets.Dataset):
        def __getitem__(self, key):
            if isinstance(key, str) and key in self.column_names:
                return self.data.column(key).to_numpy()
            return super().__getitem__(key)

        def select(self, indices, *args, **kwargs):
            if kwargs.get("new_fingerprint") is None:
                digest = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes())
                kwargs["new_fingerprint"] = digest.hexdigest()[:32]
            return super().select(indices, *args, **kwargs)

    return LabelTable


def _check_args(labels: np.ndarray, num_clients: int, scheme: str, alpha: float,
                classes_per_client: int, min_size: int) -> int:
    """Validate the arguments; return the number of distinct labels."""
    if scheme not in SCHEMES:
        raise ConfigError(f"partition.scheme: unknown scheme {scheme!r}; choose one of "
                          + ", ".join(SCHEMES))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"partition: labels must be a 1-D integer array, got shape "
                          f"{labels.shape} dtype {labels.dtype}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ConfigError(f"partition.num-clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"partition.num-clients must be >= 1, got {num_clients}")
    if num_clients > len(labels):
        raise ConfigError(f"partition.num-clients = {num_clients} is more than the "
                          f"{len(labels)} samples; use fewer clients or more data")
    num_classes = len(np.unique(labels))
    if scheme == "dirichlet" and not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"partition.alpha must be > 0, got {alpha}")
    if scheme == "dirichlet" and min_size < 0:
        raise ConfigError(f"partition min_size must be >= 0, got {min_size}")
    if scheme == "pathological" and not 1 <= classes_per_client <= num_classes:
        raise ConfigError(f"partition.classes-per-client must be in 1..{num_classes} "
                          f"(the number of classes present), got {classes_per_client}")
    return num_classes


def _make_partitioner(scheme: str, num_clients: int, alpha: float, classes_per_client: int,
                      seed: int, min_size: int):
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
    )

    if scheme == "natural":
        return NaturalIdPartitioner(partition_by="group")
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_partitions=num_clients, partition_by="label",
                                    alpha=float(alpha), min_partition_size=min_size,
                                    self_balancing=False, seed=seed)
    return PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                   num_classes_per_partition=classes_per_client,
                                   class_assignment_mode="first-deterministic", seed=seed)


def partition_indices(labels: np.ndarray, num_clients: int, scheme: str, *, alpha: float = 0.5,
                      classes_per_client: int = 2, seed: int = 0, min_size: int = 10,
                      groups: np.ndarray | None = None, by: str = "") -> list[np.ndarray]:
    """Split sample indices over ``num_clients`` clients.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class label of every sample (length N).
    num_clients : int
        Number of clients (1..N).
    scheme : str
        ``"iid"`` (seeded shuffle, equal shards), ``"dirichlet"`` (per-class proportions
        ~ Dir(alpha), Hsu et al. 2019), ``"pathological"`` (each client holds exactly
        ``classes_per_client`` classes; class ``i % C`` first, so all classes are used when
        ``num_clients >= C``) or ``"natural"`` (one client per distinct ``groups`` id, with
        all its samples; ``num_clients`` must equal the number of ids).
    alpha : float
        Dirichlet concentration (> 0); smaller is more heterogeneous.
    classes_per_client : int
        Classes per client for ``"pathological"``.
    seed : int
        Seed; the partition is deterministic for a given seed.
    min_size : int
        Minimum client size for ``"dirichlet"`` (resampled up to 10 times).
    groups : numpy.ndarray, optional
        The natural client id of every sample (``"natural"`` only; str or int).
    by : str
        The field ``groups`` came from, for messages (``partition.by``).

    Returns
    -------
    list of numpy.ndarray
        Disjoint sorted int64 index arrays, one per client. IID, Dirichlet and natural
        cover all samples (natural client ``i`` holds the ``i``-th id of
        :func:`fednas.data.natural.client_ids`); pathological may leave classes unused when
        ``num_clients·k < C``.
    """
    labels = np.asarray(labels)
    if scheme == "natural":
        check_natural(groups, len(labels), num_clients, by)
    _check_args(labels, num_clients, scheme, alpha, classes_per_client, min_size)
    _quiet_datasets()
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n) if scheme == "iid" else np.arange(n)
    columns = {"label": labels[order].astype(np.int64), "idx": order}
    if scheme == "natural":
        columns["group"] = np.asarray(groups)
    ds = _label_table_class().from_dict(columns)
    part = _make_partitioner(scheme, num_clients, alpha, classes_per_client, seed, min_size)
    part.dataset = ds
    try:  # NaturalIdPartitioner draws a tqdm bar on stderr
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            parts = [_indices(part.load_partition(i)) for i in range(num_clients)]
    except ValueError as exc:
        if scheme == "dirichlet":
            raise ConfigError(
                f"partition.alpha = {alpha} with partition.num-clients = {num_clients} cannot "
                f"give every client >= {min_size} samples ({n} samples); use a larger "
                "partition.alpha or fewer clients") from exc
        raise ConfigError(f"partition.classes-per-client = {classes_per_client} with "
                          f"partition.num-clients = {num_clients}: {exc}") from exc
    _warn_unused(parts, labels)
    return parts


def _indices(partition) -> np.ndarray:
    """The sorted ``idx`` column of a partition (an arrow slice; iterating a Column is slow)."""
    if len(partition) == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(partition.with_format("arrow")[:]["idx"].to_numpy().astype(np.int64))


def _warn_unused(parts: list[np.ndarray], labels: np.ndarray) -> None:
    used = np.unique(labels[np.concatenate(parts)]) if parts else np.array([])
    unused = np.setdiff1d(np.unique(labels), used)
    if unused.size:
        log.warning("partition: classes %s are assigned to no client; use more clients or "
                    "a larger partition.classes-per-client", unused.tolist())


def client_train_val(indices: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, val), seeded; both sorted.

    ``val`` has ``round(val_fraction·n)`` samples, at least 1 when ``val_fraction > 0`` and
    the client has >= 2 samples; ``val_fraction = 0`` gives an empty ``val``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"client val_fraction must be in [0, 1), got {val_fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(indices[perm[n_val:]]), np.sort(indices[perm[:n_val]])


def partition_stats(parts: list[np.ndarray], labels: np.ndarray, num_classes: int, *,
                    ids: list[str] | None = None, by: str = "") -> dict:
    """JSON-able per-client sizes and class histograms, with a size summary.

    ``ids`` (a natural partition's client ids, field ``by``) add ``"scheme": "natural"``,
    ``"by"`` and each client's ``"id"``; the other schemes' records stay as they were.

    Returns
    -------
    dict
        ``{"clients": [{"client", "samples", "num_classes", "class_hist"}, ...],
        "summary": {"num_clients", "total", "min", "max", "mean", "std",
        "mean_classes_per_client"}}``.
    """
    labels = np.asarray(labels)
    clients = []
    for i, idx in enumerate(parts):
        hist = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
        clients.append({"client": i, "samples": int(len(idx)),
                        "num_classes": int((hist > 0).sum()),
                        "class_hist": [int(h) for h in hist]})
        if ids is not None:
            clients[-1]["id"] = ids[i]
    sizes = np.array([c["samples"] for c in clients], dtype=np.float64)
    summary = {
        "num_clients": len(parts),
        "total": int(sizes.sum()),
        "min": int(sizes.min()) if len(sizes) else 0,
        "max": int(sizes.max()) if len(sizes) else 0,
        "mean": float(sizes.mean()) if len(sizes) else 0.0,
        "std": float(sizes.std()) if len(sizes) else 0.0,
        "mean_classes_per_client": (float(np.mean([c["num_classes"] for c in clients]))
                                    if clients else 0.0),
    }
    if ids is None:
        return {"clients": clients, "summary": summary}
    return {"scheme": "natural", "by": by, "clients": clients, "summary": summary}
