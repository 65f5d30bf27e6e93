"""Run directories: resolved config, metrics.jsonl, genotype, weights, summary and plots.

Layout of ``runs/<name>-<YYYYmmdd-HHMMSS>/``::

    config.toml       resolved scenario (every key, defaults included)
    metrics.jsonl     one JSON object per epoch/round, with "phase" and "step" keys
    clients.jsonl     federated runs: where each client of each round ran
    checkpoints/latest.pt   federated runs: what ``fednas resume`` continues from
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
import warnings
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

SIDE_LOGS = ("clients.jsonl",)
"""JSON-lines logs besides metrics.jsonl that a resume cuts back to the checkpoint."""


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
        self.side_counts: dict[str, int] = {}  # records in each side log (for checkpoints)

    @classmethod
    def reopen(cls, path: str | Path) -> RunDir:
        """An existing run directory (for resume), with its metrics loaded (a torn last line,
        left by a crash in mid-write, is dropped with a warning)."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            from fednas.errors import CheckpointError

            raise CheckpointError(f"{path} is not a fednas run directory (no config.toml)")
        run = cls.__new__(cls)
        run.path = path
        run.metrics = read_jsonl(path / "metrics.jsonl", torn_ok=True)
        run.side_counts = {n: len(read_jsonl(path / n, torn_ok=True)) for n in SIDE_LOGS
                           if (path / n).exists()}
        (path / "plots").mkdir(exist_ok=True)
        return run

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (drop those logged after the checkpoint)."""
        self.metrics = self.metrics[:count]
        self._rewrite("metrics.jsonl", self.metrics)

    def truncate_side_logs(self, counts: dict[str, int]) -> None:
        """Cut each side log back to its count at the checkpoint (a log the checkpoint did
        not count is cut to nothing: it was started after the checkpoint)."""
        for name in SIDE_LOGS:
            if (self.path / name).exists():
                records = read_jsonl(self.path / name, torn_ok=True,
                                     warn=False)[:counts.get(name, 0)]
                self._rewrite(name, records)
                self.side_counts[name] = len(records)

    def _rewrite(self, name: str, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / name,
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def write_config(self, config: Any) -> None:
        atomic_write_text(self.path / "config.toml", dumps_toml(to_dict(config)))

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
        self.side_counts[name] = self.side_counts.get(name, 0) + len(records)

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")
        return path

    def save_model(self, name: str, model: torch.nn.Module, /, **meta: Any) -> Path:
        path = self.path / f"{name}.pt"
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        # written under its own name in a side dir, then moved in one step: never
        # half-written, and the same bytes as a direct save (torch.save names the archive's
        # root after the file, and weight fingerprints hash the bytes)
        side = self.path / ".partial"
        side.mkdir(exist_ok=True)
        torch.save({"state_dict": state, "meta": _clean(meta)}, side / path.name)
        (side / path.name).replace(path)
        side.rmdir()
        return path


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a run's metrics.jsonl (a torn last line is dropped with a warning)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl", torn_ok=True)


def read_jsonl(path: Path, *, torn_ok: bool = False, warn: bool = True
               ) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist).

    ``torn_ok``: a last line that does not parse (a crash in mid-write) is dropped, with a
    warning when ``warn``; a bad line before the last is always an error naming the line.
    """
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip()]
    records = []
    for k, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if torn_ok and k == len(lines) - 1:
                if warn:
                    warnings.warn(f"{path}: dropped a torn last line ({i}); the run was "
                                  "interrupted while writing it", stacklevel=2)
                break
            from fednas.errors import CheckpointError

            raise CheckpointError(f"{path}, line {i}: not valid JSON ({exc.msg}); the file "
                                  "is corrupt") from None
    return records


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a temp file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
