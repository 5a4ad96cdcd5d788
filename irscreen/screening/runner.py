"""``screen``: stream a file through featurization and a model, keep the best K rows.

Element filters apply before inference (filtered rows cost nothing), the running top-K
keeps memory independent of the input size, and every batch is committed to the resume
state (:mod:`irscreen.screening.state`), so ``--resume`` after a kill anywhere gives the
shortlist an uninterrupted run gives. The shortlist and its rejects file are committed
together (:mod:`irscreen.atomic`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irscreen.atomic import commit_together, recover
from irscreen.composition import Z_OF
from irscreen.errors import IrscreenError
from irscreen.io import AtomicWriter, default_rejects_path, open_table
from irscreen.pipeline import DEFAULT_BATCH_ROWS, FeaturizedBatch, RejectsLog, Summary, featurize_table
from irscreen.screening import objectives
from irscreen.screening.filters import element_filter, system_and_composition
from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.screening.predict import (
    OUTPUT_COLUMNS,
    check_new_columns,
    check_precision,
    device_type,
    load,
    output_arrays,
)
from irscreen.screening.state import ScreenState, fingerprint
from irscreen.screening.topk import TopK


@dataclass
class ScreenOptions:
    top: int
    objective: str = "minimize"  # a key of objectives.OBJECTIVES
    target_value: float | None = None
    kappa: float = 0.0
    include_elements: list[str] = field(default_factory=list)
    exclude_elements: list[str] = field(default_factory=list)
    max_elements: int | None = None
    max_per_system: int | None = None
    unique: bool = False
    precision: str = DEFAULT_PRECISION

    def validate(self) -> None:
        if self.top <= 0:
            raise IrscreenError(f"--top must be a positive number of rows, got {self.top}")
        if self.objective not in objectives.OBJECTIVES:
            raise IrscreenError(f"unknown objective {self.objective!r} ({', '.join(objectives.OBJECTIVES)})")
        if self.objective in objectives.NEEDS_VALUE and self.target_value is None:
            raise IrscreenError("the target objective needs --target-value")
        for name in ("max_elements", "max_per_system"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise IrscreenError(f"--{name.replace('_', '-')} must be >= 1")
        for el in list(self.include_elements) + list(self.exclude_elements):
            if el not in Z_OF:
                raise IrscreenError(f"unknown element {el!r} in --include-elements/--exclude-elements")
        both = set(self.include_elements) & set(self.exclude_elements)
        if both:
            raise IrscreenError(f"{sorted(both)[0]} is both included and excluded")
        check_precision(self.precision)

    def score(self, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return objectives.score(self.objective, mean, sigma, self.kappa, self.target_value)


@dataclass
class ScreenResult:
    summary: Summary
    shortlist: pa.Table
    screened: int = 0
    filtered: int = 0
    cutoff: float = float("nan")
    formula_column: str = "formula"

    def to_pandas(self):
        return self.shortlist.to_pandas()


def screen_file(input_path, output_path, opts: ScreenOptions, *, model=DEFAULT_MODEL, formula_column=None,
                device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None, resume=False, progress=None,
                _kill=None) -> ScreenResult:
    """Screen INPUT for the best ``opts.top`` rows; writes OUTPUT (Parquet/CSV) and its rejects.

    ``_kill(point)``: a test hook called at every commit point of every batch (and of the
    final write); raising there simulates a kill."""
    from irscreen import __version__

    t0 = time.perf_counter()
    opts.validate()
    if batch_rows < 1:
        raise IrscreenError("--batch-rows must be >= 1")
    m = load(model)
    dev = device_type(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    check_new_columns(table.columns, ("rank",) + OUTPUT_COLUMNS)
    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    recover(output_path)
    identity = {
        "input": str(Path(input_path).resolve()), "fingerprint": fingerprint(Path(input_path)),
        "model": str(m.path.resolve()), "members": [mm["sha256"] for mm in m.manifest["members"]],
        "options": asdict(opts), "column": column, "batch_rows": batch_rows, "device": dev, "irscreen": __version__,
    }
    state = ScreenState(output_path, identity)
    top = TopK(opts.top, opts.max_per_system, opts.unique)
    counters = {"rows_done": 0, "batches": 0, "rejected": 0, "screened": 0, "filtered": 0}
    if resume:
        saved = state.load()
        if saved is not None:
            counters = {k: saved[k] for k in counters}
            top.table = saved["top"]
    else:
        state.clear()

    for fb in featurize_table(table, column, m.preset, "fast", batch_rows, jobs, skip_rows=counters["rows_done"]):
        cand = _score_batch(fb, m, opts, dev)
        top.offer(cand)
        counters["rows_done"] += fb.n_in
        counters["batches"] += 1
        counters["rejected"] += fb.rejects.num_rows
        counters["screened"] += fb.rows.num_rows
        counters["filtered"] += fb.rows.num_rows - cand.num_rows
        state.save(counters, top.table, fb.rejects, _kill=_kill)
        if progress:
            cut = top.cutoff
            progress(counters["rows_done"], table.num_rows, "" if not np.isfinite(cut) else f"cutoff {cut:.4g}")

    if counters["rows_done"] == 0:
        raise IrscreenError(f"{table.path}: file has no rows")
    held = top.table if top.table is not None else (top.schema or _fallback_schema(table)).empty_table()
    shortlist = _finish(held)
    out = AtomicWriter(output_path, shortlist.schema)
    rejects = RejectsLog(rejects_path)
    try:
        out.write(shortlist)
        for part in state.rejects_parts():
            rejects.add(pq.read_table(part))
        _kill and _kill("final-write")
        commit_together([out.finish(), rejects.finish()],
                        _after_rename=(lambda i: _kill(f"final-rename-{i}")) if _kill else None)
    except BaseException:
        out.abort()
        rejects.abort()
        raise
    state.clear()
    s = Summary(rows_read=counters["rows_done"], rows_ok=counters["screened"], rows_rejected=counters["rejected"],
                seconds=time.perf_counter() - t0, output=str(output_path), rejects=str(rejects_path))
    return ScreenResult(s, shortlist, counters["screened"], counters["filtered"], top.cutoff, column)


def _score_batch(fb: FeaturizedBatch, m, opts: ScreenOptions, dev: str) -> pa.Table:
    idx = np.flatnonzero(element_filter(fb.elements, opts.include_elements, opts.exclude_elements, opts.max_elements))
    rows = fb.rows if len(idx) == fb.rows.num_rows else fb.rows.take(pa.array(idx))
    cols = m.outputs(m.predict_members(fb.X[idx], opts.precision, dev), fb.elements[idx])
    t = pa.Table.from_batches([rows])
    for fld, arr in output_arrays(cols):
        t = t.append_column(fld, arr)
    # score the float32 values the shortlist shows, so ranking agrees with sorting the output
    mean = cols["prediction"].astype(np.float32).astype(np.float64)
    sigma = cols["uncertainty"].astype(np.float32).astype(np.float64)
    t = t.append_column("_score", pa.array(opts.score(mean, sigma)))
    t = t.append_column("_row", pa.array(fb.row_numbers()[idx], pa.int64()))
    if opts.unique or opts.max_per_system:
        systems, comps = system_and_composition(fb.elements[idx], fb.fractions[idx])
        t = t.append_column("_system", pa.array(systems, pa.string()))
        t = t.append_column("_comp", pa.array(comps, pa.string()))
    return t


def _fallback_schema(table) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string()) for c in table.columns]
                     + [pa.field("prediction", pa.float32()), pa.field("uncertainty", pa.float32()),
                        pa.field("extrapolation", pa.bool_())])


def _finish(t: pa.Table) -> pa.Table:
    t = t.drop_columns([c for c in t.column_names if c.startswith("_")])
    return t.add_column(0, "rank", pa.array(np.arange(1, t.num_rows + 1), pa.int32()))


def screen(source, top: int = 100, *, model=DEFAULT_MODEL, output=None, minimize=True, maximize=False,
           target_value=None, kappa=0.0, include_elements=(), exclude_elements=(), max_elements=None,
           max_per_system=None, unique=False, precision=DEFAULT_PRECISION, device="auto", jobs=1,
           batch_rows=DEFAULT_BATCH_ROWS, formula_column=None):
    """Notebook API mirroring ``irscreen screen``: returns the shortlist as a pandas DataFrame.

    ``source``: a Parquet/CSV path, or in-memory formulas (list, pandas/polars DataFrame
    with a formula column, pyarrow Table). ``output``: also write the shortlist there."""
    import tempfile

    objective = "target" if target_value is not None else ("maximize" if maximize else "minimize")
    opts = ScreenOptions(top=top, objective=objective, target_value=target_value, kappa=kappa,
                         include_elements=list(include_elements), exclude_elements=list(exclude_elements),
                         max_elements=max_elements, max_per_system=max_per_system, unique=unique, precision=precision)
    with tempfile.TemporaryDirectory(prefix="irscreen-") as tmp:
        path = source
        if not isinstance(source, (str, Path)):
            path = Path(tmp) / "input.parquet"
            pq.write_table(_as_arrow(source), path)
        out = Path(output) if output else Path(tmp) / "shortlist.parquet"
        res = screen_file(path, out, opts, model=model, formula_column=formula_column, device=device, jobs=jobs,
                          batch_rows=batch_rows, rejects_path=Path(tmp) / "rejects.parquet")
        return res.shortlist.to_pandas()


def _as_arrow(source) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if hasattr(source, "to_arrow"):  # polars
        return source.to_arrow()
    if hasattr(source, "columns") and hasattr(source, "iloc"):  # pandas
        return pa.Table.from_pandas(source, preserve_index=False)
    return pa.table({"formula": pa.array([None if f is None else str(f) for f in source], pa.string())})
