"""PNG plots of a run: curves per phase and the α heatmap (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(metrics: list[dict[str, Any]], out: Path) -> list[Path]:
    """One figure per phase: every ``*_loss`` and ``*_acc`` series against ``step``."""
    written = []
    for phase in dict.fromkeys(m["phase"] for m in metrics):
        rows = [m for m in metrics if m["phase"] == phase]
        keys = sorted({k for m in rows for k, v in m.items()
                       if isinstance(v, float) and (k.endswith("_loss") or k.endswith("_acc"))})
        if not keys:
            continue
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
        for key in keys:
            pts = [(m["step"], m[key]) for m in rows if isinstance(m.get(key), float)]
            ax = ax_loss if key.endswith("_loss") else ax_acc
            ax.plot(*zip(*pts, strict=True), marker="o", label=key)
        for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("epoch" if phase != "search" else "search epoch")
            ax.set_title(f"{phase}: {title}")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{phase}_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_alpha(alphas: dict[str, np.ndarray], columns: list[str], out: Path,
               row_label: str = "edge") -> Path:
    """Heatmaps of softmax(α), one panel per α group (e.g. normal / reduce cells)."""
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.2 * len(alphas), 4.5), squeeze=False)
    for ax, (name, weights) in zip(axes[0], alphas.items(), strict=True):
        im = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(row_label)
        ax.set_title(f"softmax(α): {name}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out / "alpha_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
