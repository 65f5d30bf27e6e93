"""Run checkpoints: global state, strategy RNG, phase/round and bookkeeping.

Written atomically and durably (temp file, fsync, rename, fsync of the directory), read with
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only, so
resuming a run directory someone shared cannot execute code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fednas.errors import CheckpointError
from fednas.reporting.fingerprint import changed_data, changed_keys, config_fingerprint

LATEST = "checkpoints/latest.pt"
REQUIRED = frozenset({"phase", "round", "state", "strategy", "metrics_count"})


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain data) to ``run_dir/checkpoints/latest.pt``.

    The file is complete and on disk before it replaces the previous checkpoint, so a crash
    at any moment leaves either the old or the new one.
    """
    path = Path(run_dir) / LATEST
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {**payload, "state": {k: v.detach().cpu() for k, v in payload["state"].items()}}
    with tmp.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest checkpoint of a run directory, validated.

    Raises
    ------
    CheckpointError
        When there is none, it cannot be read, it holds anything but tensors and plain
        containers (``weights_only`` refuses it), or it lacks a required entry.
    """
    path = Path(run_dir) / LATEST
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint ({LATEST}); it cannot be resumed "
                              "(was federation.checkpoint-every = 0, or is it not a run dir?)")
    try:
        payload = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing checkpoint {path}: it is corrupt or holds more than "
                              f"tensors and plain data ({first})") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} is not a fednas checkpoint")
    missing = REQUIRED - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return payload


def verify_config(checkpoint: Mapping[str, Any], fingerprint: Mapping[str, Any],
                  where: Path) -> bool:
    """Refuse a resume whose config differs from the checkpoint's in a key that changes the
    numbers (:func:`fednas.reporting.fingerprint.config_fingerprint`).

    Returns False for a checkpoint written before fingerprints existed (nothing to compare).
    """
    saved = (checkpoint.get("fingerprint") or {}).get("config")
    if saved is None:
        return False
    from fednas.config.run_config import RunConfig
    from fednas.config.tools import to_dict

    changed = changed_keys(saved, fingerprint, config_fingerprint(to_dict(RunConfig())))
    if changed:
        shown = ", ".join(f"{k} ({_short(saved.get(k, '<absent>'))} → "
                          f"{_short(fingerprint.get(k, '<absent>'))})" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise CheckpointError(
            f"{where / 'config.toml'} differs from the checkpoint's config in {shown}{more}: "
            "a resume must run the config it was checkpointed with (only runtime settings "
            "such as runtime.device/threads/progress, federation.node-wait/client-cpus may "
            "change; start a new run for a new config)")
    return True


def verify_data(checkpoint: Mapping[str, Any], fingerprint: Mapping[str, Any],
                where: Path) -> bool:
    """Refuse a resume whose loaded data (or partitions) differ from the checkpoint's."""
    saved = (checkpoint.get("fingerprint") or {}).get("data")
    if saved is None:
        return False
    changed = changed_data(saved, fingerprint)
    if changed:
        raise CheckpointError(
            f"the data loaded to resume {where} differ from the checkpoint's in "
            f"{', '.join(changed)} (dataset {saved.get('name')!r}): the files under data.root "
            "changed since the run started; restore them or start a new run")
    return True


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"
