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


def _table_position(z: int) -> tuple[int, int]:
    """(row, column) of element Z in the usual 18-column periodic table, with the
    lanthanides and actinides in two rows below (rows 8 and 9, columns 3-17)."""
    from pymatgen.core.periodic_table import Element

    if 57 <= z <= 71:
        return 8, z - 57 + 3
    if 89 <= z <= 103:
        return 9, z - 89 + 3
    el = Element.from_Z(z)
    return el.row, el.group


def shortlist(path: Path, *, short_counts: np.ndarray, n_short: int, values: np.ndarray, known: np.ndarray | None,
              label: str, cutoff: float, pool=None, title: str = "") -> None:
    """The picture of a shortlist: a periodic table coloured by how much more (or less)
    often each element occurs in the shortlist than in the pool, and the distribution of
    the ranking value over the pool with the shortlist's cutoff marked (known compounds
    in another colour). ``short_counts``: shortlisted rows holding each element (by Z);
    ``pool``: :class:`irscreen.screening.pool.PoolStats`, or None (shortlist only)."""
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.patches import Rectangle

    plt = _plt()
    fig, (ax_t, ax_h) = plt.subplots(2, 1, figsize=(11, 9.5), dpi=110, gridspec_kw={"height_ratios": [1.15, 1]})
    from irscreen.composition import SYMBOLS

    short_share = np.asarray(short_counts, float) / max(n_short, 1)
    if pool is not None and pool.rows:
        pool_share = np.asarray(pool.elements, float) / pool.rows
        with np.errstate(divide="ignore", invalid="ignore"):
            colour = np.log2(np.where(pool_share > 0, short_share / pool_share, np.nan))
        colour = np.clip(colour, -4, 4)  # absent from the shortlist: the bottom of the scale
        norm, cmap = TwoSlopeNorm(0.0, -4, 4), plt.get_cmap("RdBu_r")
        bar_label = "log2(share of shortlist rows / share of pool rows)"
        show = pool_share > 0
    else:
        colour, norm, cmap = short_share, Normalize(0, max(short_share.max(), 1e-9)), plt.get_cmap("viridis")
        bar_label = "share of shortlist rows holding the element"
        show = short_share > 0
    for z in range(1, 104):
        r, c = _table_position(z)
        y = r + (0.5 if r >= 8 else 0)
        face = cmap(norm(colour[z])) if show[z] else (0.93, 0.93, 0.93)
        ax_t.add_patch(Rectangle((c - 0.5, y - 0.5), 0.95, 0.95, facecolor=face, edgecolor="white"))
        ax_t.text(c - 0.03, y - 0.12, SYMBOLS[z], ha="center", va="center", fontsize=7.5,
                  color="black" if show[z] else (0.6, 0.6, 0.6))
        if short_counts[z]:
            ax_t.text(c - 0.03, y + 0.22, f"{int(short_counts[z]):,}", ha="center", va="center", fontsize=5)
    ax_t.set_xlim(0.4, 18.6)
    ax_t.set_ylim(10.1, 0.4)
    ax_t.set_aspect("equal")
    ax_t.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_t, fraction=0.025, pad=0.01, label=bar_label)
    ax_t.set_title(title, fontsize=10)

    values = np.asarray(values, float)
    if pool is not None and pool.rows:
        inner, inner_known = np.asarray(pool.hist[1:-1]), np.asarray(pool.hist_known[1:-1])
        edges = pool.edges()
        used = np.flatnonzero(inner + inner_known)
        lo = min(edges[used[0]] if len(used) else values.min(initial=0), values.min(initial=np.inf))
        hi = max(edges[used[-1] + 1] if len(used) else values.max(initial=0), values.max(initial=-np.inf))
        a, b = max(0, np.searchsorted(edges, lo, "right") - 1), min(len(inner), np.searchsorted(edges, hi, "left"))
        step = max(1, int(np.ceil((b - a) / 100)))  # about 100 bars
        cut = np.arange(a, b, step)
        pool_bars, known_bars = np.add.reduceat(inner[a:b], cut - a), np.add.reduceat(inner_known[a:b], cut - a)
        left, width = edges[cut], edges[np.minimum(cut + step, len(edges) - 1)] - edges[cut]
        ax_h.bar(left, pool_bars, width, align="edge", color="C0", alpha=0.75,
                 label=f"pool, not known ({int(inner.sum() + pool.hist[0] + pool.hist[-1]):,})")
        if known_bars.any() or known is not None:
            ax_h.bar(left, known_bars, width, bottom=pool_bars, align="edge", color="C1", alpha=0.9,
                     label=f"pool, known compounds ({int(np.sum(pool.hist_known)):,})")
        outside = pool.hist[0] + pool.hist[-1] + pool.hist_known[0] + pool.hist_known[-1]
        if outside:
            ax_h.text(0.99, 0.97, f"{outside:,} pool rows outside [{pool.lo:.3g}, {pool.hi:.3g}] not drawn",
                      transform=ax_h.transAxes, ha="right", va="top", fontsize=7)
        bins = np.append(left, left[-1] + width[-1]) if len(left) else 20
    else:
        bins = 40
    if len(values):
        ax_h.hist(values, bins=bins, color="C2", alpha=0.9, histtype="step", lw=1.6,
                  label=f"shortlist ({len(values):,})")
    if np.isfinite(cutoff):
        ax_h.axvline(cutoff, color="C3", ls="--", lw=1.2, label=f"shortlist cutoff {cutoff:.4g}")
    ax_h.set_yscale("log")
    ax_h.set_xlabel(label)
    ax_h.set_ylabel("rows")
    ax_h.legend(fontsize=8, loc="upper left")
    ax_h.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
