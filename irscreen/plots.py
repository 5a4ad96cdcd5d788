"""The two plots a bundle carries: learning curves and a validation parity plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(members: list[dict], units: str, path: Path) -> None:
    """Train and validation MAE per epoch for every member (log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for k, m in enumerate(members):
        hist = m.get("history") or []
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [h["train_mae"] for h in hist], color=f"C{k}", alpha=0.45, lw=1)
        ax.plot(ep, [h["val_mae"] for h in hist], color=f"C{k}", lw=1.5, label=f"member {k} (val)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({units})" if units else "MAE")
    ax.set_title("Learning curves (thin: train, thick: validation)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parity(y_true: np.ndarray, y_pred: np.ndarray, label: str, path: Path, title: str = "") -> None:
    """Predicted vs true, as a 2-D histogram (tens of thousands of points stay readable)."""
    plt = _plt()
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    mae = float(np.mean(np.abs(y_pred - y_true)))
    lo = float(min(np.percentile(y_true, 0.1), np.percentile(y_pred, 0.1)))
    hi = float(max(np.percentile(y_true, 99.9), np.percentile(y_pred, 99.9)))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.hexbin(y_true, y_pred, gridsize=80, extent=(lo, hi, lo, hi), bins="log", mincnt=1, cmap="viridis")
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(title or f"n = {len(y_true):,}, MAE = {mae:.4g}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
