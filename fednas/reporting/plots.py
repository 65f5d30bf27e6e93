"""PNG plots of a run: curves per phase and the α heatmap (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(metrics: list[dict[str, Any]], out: Path, unit: str = "epoch") -> list[Path]:
    """One figure per phase: every ``*_loss`` and ``*_acc`` series against ``step``.

    ``unit`` names the step on the x axis (``epoch`` centralised, ``round`` federated).
    """
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
            ax.set_xlabel(unit if phase != "search" else f"search {unit}")
            ax.xaxis.get_major_locator().set_params(integer=True)
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


def alpha_entropies(alpha: dict[str, Any]) -> dict[str, float]:
    """Mean entropy (nats) of the softmax(α) rows of each group of an ``alpha`` snapshot."""
    out = {}
    for group, rows in alpha.items():
        p = np.clip(np.asarray(rows, dtype=float), 1e-12, 1.0)
        out[group] = float((-(p * np.log(p)).sum(-1)).mean())
    return out


def plot_alpha_evolution(metrics: list[dict[str, Any]], columns: list[str], out: Path,
                         phase: str = "search") -> Path | None:
    """Mean softmax(α) weight of each candidate over rounds, one panel per α group, and a
    last panel with each group's mean entropy against the uniform distribution's ln k.

    Reads the ``alpha`` entry of each ``phase`` record: ``{group: rows × candidates}``.
    """
    rows = [m for m in metrics if m["phase"] == phase and isinstance(m.get("alpha"), dict)]
    if not rows:
        return None
    groups = list(rows[0]["alpha"])
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(5.2 * (len(groups) + 1), 3.8),
                             squeeze=False)
    steps = [m["step"] for m in rows]
    for ax, group in zip(axes[0], groups, strict=False):
        series = np.array([np.asarray(m["alpha"][group], dtype=float).mean(0) for m in rows])
        for k, name in enumerate(columns):
            ax.plot(steps, series[:, k], marker="o", label=name)
        ax.axhline(1 / len(columns), color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel("mean softmax(α)")
        ax.set_title(f"α evolution: {group}")
        ax.legend(fontsize=7)
    ent = axes[0][-1]
    for group in groups:
        ent.plot(steps, [alpha_entropies(m["alpha"])[group] for m in rows], marker="o",
                 label=group)
    ent.axhline(float(np.log(len(columns))), color="grey", linestyle="--", linewidth=0.8,
                label="uniform (ln k)")
    ent.ticklabel_format(axis="y", useOffset=False)  # near-uniform α: show the digits
    ent.set_ylabel("mean entropy of softmax(α) (nats)")
    ent.set_title("α entropy")
    ent.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel("round or epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "alpha_evolution.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fedex_theta(metrics: list[dict[str, Any]], out: Path) -> list[Path]:
    """FedEx θ (probability of each configuration/value) over rounds, one figure per phase."""
    written = []
    for phase in dict.fromkeys(m["phase"] for m in metrics):
        rows = [m for m in metrics if m["phase"] == phase and "fedex_theta" in m]
        if not rows:
            continue
        factors = len(rows[0]["fedex_theta"])
        fig, axes = plt.subplots(1, factors, figsize=(5 * factors, 3.6), squeeze=False)
        steps = [m["step"] for m in rows]
        for f, ax in enumerate(axes[0]):
            theta = np.array([m["fedex_theta"][f] for m in rows])
            for j in range(theta.shape[1]):
                ax.plot(steps, theta[:, j], marker=".", label=f"config {j}")
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel("θ")
            ax.set_title(f"FedEx θ ({phase}, factor {f})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"fedex_theta_{phase}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
