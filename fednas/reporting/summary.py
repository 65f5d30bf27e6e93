"""Human-readable summaries of run results (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def format_count(n: float) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def summary_table(summary: dict[str, Any]) -> Table:
    """Test accuracy, params and FLOPs of every model in a summary."""
    table = Table(title=f"{summary['scenario']} (seed {summary['seed']}, "
                        f"{summary['dataset']['name']})")
    for col in ("model", "test acc", "params", "FLOPs", "epochs/rounds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in summary["models"].items():
        table.add_row(name, f"{100 * m['test_acc']:.2f} %", format_count(m["params"]),
                      format_count(m["flops"]), str(m.get("epochs", m.get("rounds", ""))))
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    console.print(summary_table(summary))
    if summary.get("timings"):
        console.print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings"].items()))
    privacy = summary.get("privacy")
    if privacy and privacy.get("epsilon") is not None:
        line = (f"privacy ({privacy['mode']} DP): ε = {privacy['epsilon']:.3g} at δ = "
                f"{privacy.get('delta_total', privacy['delta']):.3g} after {privacy['rounds']} "
                "rounds")
        if privacy.get("stopped_by_budget"):
            stop = privacy["stopped_by_budget"]
            line += f"; stopped by the ε budget after {stop['phase']} round {stop['round']}"
        console.print(line)
