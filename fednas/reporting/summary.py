"""Human-readable summaries of run results (rich tables)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def format_count(n: float) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def alpha_summary(metrics: list[dict[str, Any]], phase: str = "search") -> dict[str, Any] | None:
    """How far the search moved α: from the last ``phase`` record with an ``alpha`` snapshot.

    Over every row (an edge or a layer) of every group: ``entropy`` (mean nats of
    softmax(α)) beside ``entropy_uniform`` (mean ln k, k the row's candidates), and
    ``max_softmax_ratio``: the mean over rows of max softmax(α) × k, i.e. the chosen
    candidate's weight as a multiple of the uniform 1/k (1 = α never moved),
    ``max_softmax_ratio_max`` its largest row. None when no record has a snapshot.
    """
    records = [m for m in metrics if m.get("phase") == phase and m.get("alpha")]
    if not records:
        return None
    rows = [np.asarray(row, dtype=float) for group in records[-1]["alpha"].values()
            for row in group]
    ratio = [float(row.max() * len(row)) for row in rows]
    entropy = [float(-(row * np.log(np.clip(row, 1e-12, 1.0))).sum()) for row in rows]
    return {"step": records[-1].get("step"), "rows": len(rows),
            "entropy": float(np.mean(entropy)),
            "entropy_uniform": float(np.mean([np.log(len(row)) for row in rows])),
            "max_softmax_ratio": float(np.mean(ratio)), "max_softmax_ratio_max": max(ratio)}


def summary_table(summary: dict[str, Any]) -> Table:
    """Test accuracy, params and FLOPs of every model in a summary."""
    table = Table(title=f"{summary['scenario']} (seed {summary['seed']}, "
                        f"{summary['dataset']['name']})")
    protocol = summary.get("protocol")
    if protocol:  # retrain.protocol (fednas/training/protocol.py)
        table.caption = f"protocol {protocol}: rounds each model trained, from what weights"
    for col in ("model", "test acc", "params", "FLOPs", "epochs/rounds", "weights from"):
        table.add_column(col, justify="left" if col in ("model", "weights from") else "right")
    for name, m in summary["models"].items():
        table.add_row(name, f"{100 * m['test_acc']:.2f} %", format_count(m["params"]),
                      format_count(m["flops"]), str(m.get("epochs", m.get("rounds", ""))),
                      m.get("inherited", ""))
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    console.print(summary_table(summary))
    if summary.get("timings"):
        console.print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings"].items()))
    alpha = summary.get("alpha")
    if alpha:
        console.print(f"α after the search: max softmax {alpha['max_softmax_ratio']:.2f}x "
                      f"uniform (mean over {alpha['rows']} rows), entropy "
                      f"{alpha['entropy']:.3f} of {alpha['entropy_uniform']:.3f} nats")
    privacy = summary.get("privacy")
    if privacy and privacy.get("epsilon") is not None:
        line = (f"privacy ({privacy['mode']} DP): ε = {privacy['epsilon']:.3g} at δ = "
                f"{privacy.get('delta_total', privacy['delta']):.3g} after {privacy['rounds']} "
                "rounds")
        if privacy.get("stopped_by_budget"):
            stop = privacy["stopped_by_budget"]
            line += f"; stopped by the ε budget after {stop['phase']} round {stop['round']}"
        console.print(line)
