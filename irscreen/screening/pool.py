"""What a shortlist was drawn from, for its picture (``screen --plot``, ``irscreen plot``).

Gathered while streaming, so memory stays flat: how many pool rows hold each element, and
a fixed-bin histogram of the ranking value (known compounds counted apart). The bins are
fixed before the first row from the model's target scale (mean +- 8 standard deviations of
its training targets, wider for hull distances; 2,000 bins; values outside are counted in
two end bins), fine enough to be re-binned for the figure. The statistics go into the resume state after every
batch and into the shortlist's Parquet metadata, where ``irscreen plot`` finds them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from irscreen.composition import SYMBOLS

#: The shortlist's Parquet metadata key.
META_KEY = b"irscreen.screen"
N_BINS = 2000


@dataclass
class PoolStats:
    label: str  # what the ranking value is, with units
    lo: float
    hi: float
    higher_is_better: bool = False
    rows: int = 0
    elements: list = field(default_factory=lambda: [0] * len(SYMBOLS))  # rows holding each element (by Z)
    hist: list = field(default_factory=lambda: [0] * (N_BINS + 2))  # [below lo, N_BINS bins, above hi]
    hist_known: list = field(default_factory=lambda: [0] * (N_BINS + 2))

    def add(self, value: np.ndarray, elements: np.ndarray, known: np.ndarray | None = None) -> None:
        """One batch of pool rows: ranking values (n,), atomic numbers (n, k; 0 = padding)."""
        self.rows += len(value)
        counts = np.bincount(np.asarray(elements, dtype=np.int64).ravel(), minlength=len(SYMBOLS))
        counts[0] = 0  # padding
        self.elements = (np.asarray(self.elements) + counts).tolist()
        b = self.bin_of(value)
        known = np.zeros(len(value), bool) if known is None else np.asarray(known, bool)
        self.hist = (np.asarray(self.hist) + np.bincount(b[~known], minlength=N_BINS + 2)).tolist()
        self.hist_known = (np.asarray(self.hist_known) + np.bincount(b[known], minlength=N_BINS + 2)).tolist()

    def bin_of(self, value: np.ndarray) -> np.ndarray:
        edges = self.edges()
        return np.searchsorted(edges, np.asarray(value, dtype=np.float64), side="right")  # 0: below, N+1: above

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, N_BINS + 1)

    def merge(self, other: "PoolStats") -> None:
        """Add statistics gathered elsewhere on the same bins (another worker's rows)."""
        self.rows += other.rows
        for name in ("elements", "hist", "hist_known"):
            setattr(self, name, (np.asarray(getattr(self, name)) + np.asarray(getattr(other, name))).tolist())

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "PoolStats":
        return cls(**d)


def new_pool(model, opts) -> PoolStats:
    """Empty statistics for a screen: bins on the model's target scale."""
    mean, std = float(model.scaler.y_mean), float(model.scaler.y_std)
    units = f" ({model.units})" if model.units else ""

    def plus(k: float) -> str:
        return "" if k == 0 else f" {'+' if k > 0 else '-'} {abs(k):g} sigma"

    if opts.hull:  # prediction minus a hull between the lowest training energies and 0
        width = abs(mean) + 8 * std
        return PoolStats(f"hull distance{plus(opts.kappa)}{units}", -width, 2 * width)
    if opts.objective == "target":
        return PoolStats(f"|{model.target} - {opts.target_value:g}|{plus(opts.kappa)}{units}", 0.0, 8 * std)
    if opts.objective == "maximize":  # ranked by mean - kappa sigma, highest first
        return PoolStats(f"{model.target}{plus(-opts.kappa)}{units}", mean - 8 * std, mean + 8 * std, True)
    return PoolStats(f"{model.target}{plus(opts.kappa)}{units}", mean - 8 * std, mean + 8 * std)


def ranking_value(score: np.ndarray, objective: str) -> np.ndarray:
    """The value a scientist reads (higher is better for maximize) from a score (lower is better)."""
    return -score if objective == "maximize" else score


def with_metadata(shortlist: pa.Table, info: dict) -> pa.Table:
    meta = dict(shortlist.schema.metadata or {})
    meta[META_KEY] = json.dumps(info).encode()
    return shortlist.replace_schema_metadata(meta)


def read_metadata(schema: pa.Schema) -> dict | None:
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else None


def shortlist_values(shortlist: pa.Table, options: dict | None) -> tuple[np.ndarray, str]:
    """Each shortlisted row's ranking value (with the screen's options; without them, the
    hull distance or prediction itself) and what it is."""
    from irscreen.screening.objectives import score

    hull = "hull_distance" in shortlist.column_names
    base, sigma = ("hull_distance", "hull_uncertainty") if hull else ("prediction", "uncertainty")
    x = shortlist.column(base).to_numpy(zero_copy_only=False).astype(np.float64)
    if not options:
        return x, base.replace("_", " ")
    s = shortlist.column(sigma).to_numpy(zero_copy_only=False).astype(np.float64)
    objective = options["objective"]
    return ranking_value(score(objective, x, s, options["kappa"], options["target_value"]), objective), base


def draw(shortlist: pa.Table, png, formula_column: str | None = None):
    """Write the shortlist's picture (:func:`irscreen.plots.shortlist`) to ``png``, atomically;
    the pool side comes from the shortlist's metadata when the screen recorded it."""
    import os
    from pathlib import Path

    from irscreen import plots
    from irscreen.composition import parse_batch

    info = read_metadata(shortlist.schema) or {}
    pool = PoolStats.from_json(info["pool"]) if info.get("pool") else None
    column = formula_column or info.get("formula_column") or "formula"
    z = parse_batch(shortlist.column(column).combine_chunks()).elements if shortlist.num_rows else np.zeros((0, 1))
    counts = np.bincount(z.astype(np.int64).ravel(), minlength=len(SYMBOLS))
    counts[0] = 0
    values, base = shortlist_values(shortlist, info.get("options"))
    label = pool.label if pool else base
    better_high = bool(pool and pool.higher_is_better)
    cutoff = (values.min() if better_high else values.max()) if len(values) else float("nan")
    known = shortlist.column("known").to_numpy(zero_copy_only=False) if "known" in shortlist.column_names else None
    n_known = int(known.sum()) if known is not None else 0
    title = (f"{shortlist.num_rows:,} shortlisted of {pool.rows:,} pool rows" if pool
             else f"{shortlist.num_rows:,} shortlisted rows (no pool statistics: `screen --plot` records them)")
    if known is not None:
        title += f"; {n_known:,} shortlisted rows are known compounds"
    png = Path(png)
    tmp = png.with_name(f".{png.name}.partial.png")
    try:
        plots.shortlist(tmp, short_counts=counts, n_short=shortlist.num_rows, values=values, known=known, label=label,
                        cutoff=cutoff, pool=pool, title=title)
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)
    return png


def read_shortlist(path, formula_column: str | None = None) -> tuple[pa.Table, str]:
    """A shortlist file (Parquet keeps the pool statistics in its metadata) and its formula column."""
    import pyarrow.parquet as pq

    from irscreen.errors import IrscreenError
    from irscreen.io import open_table

    table = open_table(path)
    column = table.formula_column(formula_column)
    if table.kind == "parquet":
        data = pq.read_table(table.path)
    else:
        data = pa.Table.from_batches(list(table.batches(1 << 16, string_columns=(column,))))
    if not {"rank", "prediction", "uncertainty"} <= set(data.column_names):
        raise IrscreenError(f"{path}: not a shortlist written by `irscreen screen` (it needs rank, prediction, "
                            "uncertainty)")
    return data, column
