"""Fingerprints of a run's configuration and data, checked before a resume.

A checkpoint stores the resolved configuration (every key that can change the numbers) and
a digest of the data the run trained on (dataset name, sizes, shape, classes, a hash of the
images and labels of every split, of the natural client ids when the run has them, and of
the client partitions). ``fednas resume`` compares
both with what the run directory would now load *before* Ray starts, and refuses a resume
that could not reproduce the interrupted run, naming what changed.

Keys that may differ on resume (:data:`RESUMABLE`) change where and how fast the run goes,
not what it computes: progress bars, the output/parent dir, the data root (the data
fingerprint checks the content instead), Ray's address, node wait,
resources per client, the checkpoint interval, the CPU thread count and the device. Two of
them can still move float rounding: ``runtime.device`` (another device's kernels) and, at
``federation.cohort-size = 0``, the worker count that ``federation.client-cpus`` /
``client-gpus`` imply (cohorts are packed per worker); keep them unchanged when a resumed run
must equal the uninterrupted one bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

RESUMABLE = frozenset({
    "name", "data.root", "runtime.device", "runtime.threads", "runtime.out-dir", "runtime.progress",
    "runtime.eval-batch-size", "runtime.message-pump", "federation.node-wait",
    "federation.ray-address", "federation.client-cpus", "federation.client-gpus",
    "federation.checkpoint-every"})
"""Dotted config keys a resume may change (see the module docstring)."""


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config (``to_dict``) that a resume must not change, flat."""
    return {k: v for k, v in _flat(config).items() if k not in RESUMABLE}


def changed_keys(saved: Mapping[str, Any], now: Mapping[str, Any],
                 defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Dotted keys whose values differ between two :func:`config_fingerprint` results.

    A key present in only one of them counts as changed, unless ``defaults`` (the
    fingerprint of the default config) says it holds its default value: a key that fednas
    added after the checkpoint was written, left at its default, is what the older run
    computed (new keys are added with defaults that keep the earlier behaviour). The
    exceptions, keys whose default changed the numbers, count at their legacy value where
    ``now``'s value would run differently (:func:`fednas.config.legacy.legacy_values`).
    """
    from fednas.config.legacy import legacy_values

    defaults = {**(defaults or {}), **legacy_values(now)}

    def value(side: Mapping[str, Any], key: str) -> Any:
        return side[key] if key in side else defaults.get(key, ...)

    return sorted(k for k in set(saved) | set(now) if value(saved, k) != value(now, k))


def _digest(arrays: Iterable[torch.Tensor | np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(data: Any, parts: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Name, split sizes, input shape, classes and content digests of a loaded dataset
    (:class:`fednas.data.datasets.Dataset`) and of its client partitions."""
    splits = ("train", "val", "test")
    out: dict[str, Any] = {
        "name": data.name, "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        "sizes": [int(len(getattr(data, f"{s}_y"))) for s in splits],
        "content": _digest(t for s in splits for t in (getattr(data, f"{s}_x"),
                                                        getattr(data, f"{s}_y")))}
    groups = getattr(data, "train_groups", None)
    if groups is not None:  # natural partitions: absent otherwise, so older digests still match
        out["groups"] = _digest([np.asarray(groups).astype(str)])
    if parts is not None:
        out["partitions"] = _digest(np.asarray(p, dtype=np.int64) for p in parts)
    return out


def changed_data(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The fields of two :func:`data_fingerprint` results that differ."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
