"""Run directories: resolved config, metrics.jsonl, genotype, weights, summary and plots.

Layout of ``runs/<name>-<YYYYmmdd-HHMMSS>/``::

    config.toml       resolved scenario (every key, defaults included)
    metrics.jsonl     one JSON object per epoch/round, with "phase" and "step" keys
    partitions.json   client partition statistics (samples, class histogram per client)
    genotype.json     the searched architecture
    searched.pt, baseline.pt   model weights (state_dict + metadata)
    summary.json      see :data:`SUMMARY_SCHEMA`
    plots/*.png       curves per phase, α heatmap

metrics.jsonl holds no wall-clock values, so the same seed gives an identical file;
timings go to summary.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from fednas.config.tools import dumps_toml, to_dict

SUMMARY_SCHEMA = {
    "scenario": "str: run name from the scenario",
    "seed": "int",
    "dataset": "dict: name, sizes, input shape, classes",
    "models": "dict NAME -> {test_acc: float in [0,1], test_loss: float, params: int, "
              "flops: int (one forward pass, one sample)}; NAME in searched, baseline, ...",
    "genotype": "dict: the searched architecture",
    "timings": "dict PHASE -> seconds",
    "versions": "dict: fednas, torch, flwr",
}
"""Stable, documented keys of summary.json (tools may rely on these)."""


def _clean(value: Any) -> Any:
    """JSON-safe copy (floats rounded to 6 significant digits; NaN/inf as strings)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    return value


class RunDir:
    """A run directory; created on construction, never overwriting an existing one."""

    def __init__(self, out_dir: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir).expanduser() / f"{name}-{stamp}"
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        path.mkdir(parents=True)
        (path / "plots").mkdir()
        self.path = path
        self.metrics: list[dict[str, Any]] = []

    @classmethod
    def reopen(cls, path: str | Path) -> RunDir:
        """An existing run directory (for resume), with its metrics loaded."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            from fednas.errors import CheckpointError

            raise CheckpointError(f"{path} is not a fednas run directory (no config.toml)")
        run = cls.__new__(cls)
        run.path = path
        run.metrics = read_metrics(path) if (path / "metrics.jsonl").exists() else []
        (path / "plots").mkdir(exist_ok=True)
        return run

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (drop those logged after the checkpoint)."""
        self.metrics = self.metrics[:count]
        text = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self.metrics)
        (self.path / "metrics.jsonl").write_text(text)

    def write_config(self, config: Any) -> None:
        (self.path / "config.toml").write_text(dumps_toml(to_dict(config)))

    def log(self, phase: str, step: int, **values: Any) -> dict[str, Any]:
        """Append one record to metrics.jsonl (flushed at once)."""
        record = _clean({"phase": phase, "step": step, **values})
        self.metrics.append(record)
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        return record

    def append_jsonl(self, name: str, records: list[dict[str, Any]]) -> None:
        """Append records to a side log (e.g. clients.jsonl: where each client ran)."""
        with (self.path / name).open("a") as fh:
            for record in records:
                fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    def save_model(self, name: str, model: torch.nn.Module, /, **meta: Any) -> Path:
        path = self.path / f"{name}.pt"
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "meta": _clean(meta)}, path)
        return path


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
