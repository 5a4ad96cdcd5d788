"""predict and screen: stream candidates through featurization and an ensemble.

One numeric path serves both: features -> :meth:`Model.predict_members` with the same
precision and inference chunking, so a row gets the same prediction from ``predict``
and ``screen``. ``screen`` keeps only the running best K rows (memory independent of
input size), applies element filters before inference (filtered rows cost nothing),
and checkpoints after every batch so ``--resume`` continues a killed run and produces
the identical shortlist.

Scores (lower is better):
    minimize        mean + kappa * std
    maximize        -(mean - kappa * std)
    target value V  |mean - V| + kappa * std
kappa > 0 is conservative (penalizes uncertain rows), kappa < 0 is optimistic.
Ties are broken by input order.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irscreen.composition import SYMBOLS, Z_OF
from irscreen.errors import IrscreenError
from irscreen.io import AtomicWriter, default_rejects_path, open_table
from irscreen.pipeline import (
    DEFAULT_BATCH_ROWS,
    FeaturizedBatch,
    RejectsLog,
    Summary,
    featurize_table,
    write_rows,
)

DEFAULT_PRECISION = "mixed"
OUTPUT_COLUMNS = ("prediction", "uncertainty")


# --------------------------------------------------------------------------- shared numeric path


def _device(device: str) -> str:
    from irscreen.train import pick_device

    return pick_device(device).type


def _load(model):
    from irscreen.models.ensemble import Model, load_model

    return model if isinstance(model, Model) else load_model(model)


def _check_precision(precision: str) -> None:
    from irscreen.models.irnet import PRECISIONS

    if precision not in PRECISIONS:
        raise IrscreenError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")


def _new_columns(schema: pa.Schema, names) -> None:
    clash = [n for n in names if n in schema.names]
    if clash:
        raise IrscreenError(f"input already has a column named {clash[0]!r}; rename it first")


# --------------------------------------------------------------------------- predict


def predict_file(input_path, output_path, *, model="formation-enthalpy", members=False, formula_column=None,
                 precision=DEFAULT_PRECISION, device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None,
                 progress=None) -> Summary:
    """Every valid row with its input columns plus prediction and uncertainty."""
    t0 = time.perf_counter()
    m = _load(model)
    _check_precision(precision)
    dev = _device(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    extra = list(OUTPUT_COLUMNS) + ([f"member_{k}" for k in range(m.n_members)] if members else [])
    _new_columns(pa.schema([pa.field(c, pa.null()) for c in table.columns]), extra)
    def with_predictions(fb: FeaturizedBatch) -> pa.RecordBatch:
        P = m.predict_members(fb.X, precision, dev)
        cols = {"prediction": P.mean(0), "uncertainty": P.std(0)}
        if members:
            cols.update({f"member_{k}": P[k] for k in range(len(P))})
        rb = fb.rows
        for name, values in cols.items():
            rb = rb.append_column(pa.field(name, pa.float32()), pa.array(values.astype(np.float32)))
        return rb

    batches = featurize_table(table, column, m.preset, "fast", batch_rows, jobs)
    s = write_rows(table, batches, with_predictions, output_path, rejects_path, progress)
    s.seconds = time.perf_counter() - t0
    return s


# --------------------------------------------------------------------------- screen


@dataclass
class ScreenOptions:
    top: int
    objective: str = "minimize"  # minimize | maximize | target
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
        if self.objective not in ("minimize", "maximize", "target"):
            raise IrscreenError(f"unknown objective {self.objective!r}")
        if self.objective == "target" and self.target_value is None:
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
        _check_precision(self.precision)

    def score(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        k = self.kappa
        if self.objective == "minimize":
            s = mean + k * std
        elif self.objective == "maximize":
            s = -(mean - k * std)
        else:
            s = np.abs(mean - self.target_value) + k * std
        return s.astype(np.float64)


def _element_filter(opts: ScreenOptions, elements: np.ndarray) -> np.ndarray:
    keep = np.ones(len(elements), dtype=bool)
    if opts.include_elements:
        for el in opts.include_elements:
            keep &= (elements == Z_OF[el]).any(axis=1)
    if opts.exclude_elements:
        bad = np.array([Z_OF[e] for e in opts.exclude_elements], dtype=elements.dtype)
        keep &= ~np.isin(elements, bad).any(axis=1)
    if opts.max_elements is not None:
        keep &= (elements != 0).sum(axis=1) <= opts.max_elements
    return keep


def _keys(elements: np.ndarray, fractions: np.ndarray) -> tuple[list[str], list[str]]:
    """Per row: the chemical system ('Fe-Li-O', alphabetical) and the reduced composition
    (system plus atomic fractions, so Fe2O3 and Fe4O6 share one)."""
    systems, comps = [], []
    for zs, fs in zip(elements, fractions):
        pairs = sorted((SYMBOLS[z], f) for z, f in zip(zs, fs) if z)
        systems.append("-".join(s for s, _ in pairs))
        comps.append(" ".join(f"{s}{f:.8g}" for s, f in pairs))
    return systems, comps


class TopK:
    """The running best K rows, ordered by (score, input row number), with an optional
    cap of rows per chemical system and an optional one row per reduced composition.

    A row turned away by either rule is worse than the rows that filled its place, so
    it can never come back: applying the rules greedily per batch equals applying them
    once to the fully sorted input."""

    def __init__(self, k: int, per_system: int | None = None, unique: bool = False):
        self.k, self.per_system, self.unique = k, per_system, unique
        self.table: pa.Table | None = None  # input columns + prediction, uncertainty, _score, _row[, _system, _comp]
        self.schema: pa.Schema | None = None

    @property
    def cutoff(self) -> float:
        if self.table is None or self.table.num_rows < self.k:
            return np.inf
        return float(self.table.column("_score")[self.table.num_rows - 1].as_py())

    def offer(self, cand: pa.Table) -> None:
        self.schema = self.schema or cand.schema
        cutoff = self.cutoff
        if cutoff < np.inf:  # only rows that can enter (ties may still win on row order)
            cand = cand.filter(pc.less_equal(cand.column("_score"), cutoff))
        if cand.num_rows == 0:
            return
        t = cand if self.table is None else pa.concat_tables([self.table, cand])
        score = t.column("_score").to_numpy()
        row = t.column("_row").to_numpy()
        order = np.lexsort((row, score))
        if self.per_system is not None or self.unique:
            order = order[self._admit(t, order)]
        self.table = t.take(pa.array(order[: self.k]))

    def _admit(self, t: pa.Table, order: np.ndarray) -> np.ndarray:
        """Mask over ``order``: the rows the caps let in, walking best first."""
        systems = t.column("_system").to_numpy(zero_copy_only=False)[order] if self.per_system else None
        comps = t.column("_comp").to_numpy(zero_copy_only=False)[order] if self.unique else None
        per_system: dict = {}
        comps_taken: set = set()
        keep = np.zeros(len(order), dtype=bool)
        n = 0
        for j in range(len(order)):
            if comps is not None and comps[j] in comps_taken:
                continue
            if systems is not None and per_system.get(systems[j], 0) >= self.per_system:
                continue
            if comps is not None:
                comps_taken.add(comps[j])
            if systems is not None:
                per_system[systems[j]] = per_system.get(systems[j], 0) + 1
            keep[j] = True
            n += 1
            if n == self.k:
                break
        return keep


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (1 << 20):
            f.seek(max(0, st.st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_sha256": h.hexdigest()}


class _State:
    """Checkpoint of a running screen: ``<output>.screen-state/`` (removed on success)."""

    def __init__(self, output: Path, identity: dict):
        self.dir = output.with_name(output.name + ".screen-state")
        self.identity = identity

    def load(self) -> dict | None:
        meta = self.dir / "state.json"
        if not meta.exists():
            return None
        state = json.loads(meta.read_text())
        if state.get("identity") != self.identity:
            raise IrscreenError(
                f"{self.dir} belongs to a screen with other input, model or options; rerun without --resume "
                "(or delete it) to start over"
            )
        top = self.dir / "top.parquet"
        state["top"] = pq.read_table(top) if top.exists() else None
        return state

    def save(self, counters: dict, top: pa.Table | None, rejects: pa.Table) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        batch = counters["batches"]
        if rejects.num_rows:
            pq.write_table(rejects, self.dir / f"rejects-{batch:08d}.parquet")
        if top is not None:
            pq.write_table(top, self.dir / ".top.tmp")
            (self.dir / ".top.tmp").replace(self.dir / "top.parquet")
        tmp = self.dir / ".state.tmp"
        tmp.write_text(json.dumps({"identity": self.identity, **counters}))
        tmp.replace(self.dir / "state.json")  # the commit point of this checkpoint

    def rejects_parts(self, upto_batch: int) -> list[Path]:
        parts = sorted(self.dir.glob("rejects-*.parquet"))
        keep = [p for p in parts if int(p.stem.split("-")[1]) <= upto_batch]
        for p in parts:
            if p not in keep:
                p.unlink()  # written by a batch whose checkpoint never committed
        return keep

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class ScreenResult:
    summary: Summary
    shortlist: pa.Table
    screened: int = 0
    filtered: int = 0
    cutoff: float = float("nan")
    options: dict = field(default_factory=dict)
    formula_column: str = "formula"

    def to_pandas(self):
        return self.shortlist.to_pandas()


def screen_file(input_path, output_path, opts: ScreenOptions, *, model="formation-enthalpy", formula_column=None,
                device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None, resume=False, progress=None,
                stop_after_batches: int | None = None) -> ScreenResult:
    """Screen INPUT for the best ``opts.top`` rows; writes OUTPUT (Parquet/CSV) and rejects.

    ``stop_after_batches`` ends early without writing the output (simulates a kill)."""
    from irscreen import __version__

    t0 = time.perf_counter()
    opts.validate()
    if batch_rows < 1:
        raise IrscreenError("--batch-rows must be >= 1")
    m = _load(model)
    dev = _device(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    _new_columns(pa.schema([pa.field(c, pa.null()) for c in table.columns]), ("rank",) + OUTPUT_COLUMNS)
    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    identity = {
        "input": str(Path(input_path).resolve()), "fingerprint": _fingerprint(Path(input_path)),
        "model": str(m.path.resolve()), "members": [mm["sha256"] for mm in m.manifest["members"]],
        "options": asdict(opts), "column": column, "batch_rows": batch_rows, "device": dev, "irscreen": __version__,
    }
    state = _State(output_path, identity)
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
        state.save(counters, top.table, fb.rejects)
        if progress:
            cut = top.cutoff
            progress(counters["rows_done"], table.num_rows, "" if not np.isfinite(cut) else f"cutoff {cut:.4g}")
        if stop_after_batches is not None and counters["batches"] >= stop_after_batches:
            return ScreenResult(Summary(rows_read=counters["rows_done"]), pa.table({}))

    if counters["rows_done"] == 0:
        raise IrscreenError(f"{table.path}: file has no rows")
    shortlist = _finish(top.table if top.table is not None else (top.schema or _fallback_schema(table)).empty_table())
    with AtomicWriter(output_path, shortlist.schema) as w:
        w.write(shortlist)
    rejects = RejectsLog(rejects_path)
    try:
        for part in state.rejects_parts(counters["batches"]):
            rejects.add(pq.read_table(part))
        rejects.commit()
    except BaseException:
        rejects.abort()
        raise
    state.clear()
    s = Summary(rows_read=counters["rows_done"], rows_ok=counters["screened"], rows_rejected=counters["rejected"],
                seconds=time.perf_counter() - t0, output=str(output_path), rejects=str(rejects_path))
    cut = top.cutoff
    return ScreenResult(s, shortlist, counters["screened"], counters["filtered"], cut, asdict(opts), column)


def _score_batch(fb: FeaturizedBatch, m, opts: ScreenOptions, dev: str) -> pa.Table:
    keep = _element_filter(opts, fb.elements)
    idx = np.flatnonzero(keep)
    rows = fb.rows if len(idx) == len(keep) else fb.rows.take(pa.array(idx))
    P = m.predict_members(fb.X[idx], opts.precision, dev)
    mean, std = P.mean(0), P.std(0)
    row_numbers = _input_row_numbers(fb)[idx]
    t = pa.Table.from_batches([rows])
    t = t.append_column(pa.field("prediction", pa.float32()), pa.array(mean.astype(np.float32)))
    t = t.append_column(pa.field("uncertainty", pa.float32()), pa.array(std.astype(np.float32)))
    t = t.append_column("_score", pa.array(opts.score(mean.astype(np.float64), std.astype(np.float64))))
    t = t.append_column("_row", pa.array(row_numbers, pa.int64()))
    if opts.unique or opts.max_per_system:
        systems, comps = _keys(fb.elements[idx], fb.fractions[idx])
        t = t.append_column("_system", pa.array(systems, pa.string()))
        t = t.append_column("_comp", pa.array(comps, pa.string()))
    return t


def _input_row_numbers(fb: FeaturizedBatch) -> np.ndarray:
    """Input row number of each featurized row (rejected rows removed)."""
    rejected = fb.rejects.column("row").to_numpy() - fb.start if fb.rejects.num_rows else np.array([], int)
    mask = np.ones(fb.n_in, dtype=bool)
    mask[rejected] = False
    return np.flatnonzero(mask) + fb.start


def _fallback_schema(table) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string()) for c in table.columns]
                     + [pa.field(c, pa.float32()) for c in OUTPUT_COLUMNS])


def _finish(t: pa.Table) -> pa.Table:
    helper = [c for c in t.column_names if c.startswith("_")]
    t = t.drop_columns(helper)
    return t.add_column(0, "rank", pa.array(np.arange(1, t.num_rows + 1), pa.int32()))


def screen(source, top: int = 100, *, model="formation-enthalpy", output=None, minimize=True, maximize=False,
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
