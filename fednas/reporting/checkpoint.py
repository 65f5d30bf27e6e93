"""Run checkpoints: global state, strategy RNG, phase/round and bookkeeping, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fednas.errors import CheckpointError

LATEST = "checkpoints/latest.pt"


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain data) to ``run_dir/checkpoints/latest.pt``."""
    path = Path(run_dir) / LATEST
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {**payload, "state": {k: v.detach().cpu() for k, v in payload["state"].items()}}
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest checkpoint of a run directory, validated."""
    path = Path(run_dir) / LATEST
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint ({LATEST}); it cannot be resumed "
                              "(was federation.checkpoint-every = 0, or is it not a run dir?)")
    try:
        payload = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = {"phase", "round", "state", "strategy", "metrics_count"} - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return payload
