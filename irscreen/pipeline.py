"""Streaming featurization of a table, shared by featurize, predict and screen.

Input batches are parsed and featurized (in joblib worker processes when jobs > 1,
overlapping with whatever the caller does with the previous batch); each batch comes
back split into the rows that featurized and the rejected rows with their reason.
Nothing is dropped silently: rows in = rows featurized + rows rejected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa

from irscreen.io import REJECTS_SCHEMA, Table

#: Rows per batch. Measured on 2 cores: 32,768 featurizes 1M rows ~8% faster than 65,536
#: (shorter pipeline fill and drain) and keeps memory lower (docs/benchmarks.md).
DEFAULT_BATCH_ROWS = 32_768


@dataclass
class FeaturizedBatch:
    start: int  # row number (0-based) of the batch's first input row
    n_in: int
    rows: pa.RecordBatch  # the input rows that featurized, all columns
    XT: np.ndarray  # (F, len(rows)) float32, feature-major (one contiguous array per column)
    rejects: pa.Table  # row, formula, error
    elements: np.ndarray  # (len(rows), k) int16 atomic numbers, 0 = padding
    fractions: np.ndarray  # (len(rows), k) atomic fractions
    preset: str = ""  # XT's preset
    #: Other presets' features of the same rows, (F, n) each: computed from the same parsed
    #: batch for the other models of a run (``featurize_table(also=...)``)
    more: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def X(self) -> np.ndarray:
        """(len(rows), F) view of the features."""
        return self.XT.T

    def X_for(self, preset: str) -> np.ndarray:
        """(len(rows), F) view of ``preset``'s features: XT's, or one computed alongside."""
        if preset == self.preset:
            return self.X
        try:
            return self.more[preset].T
        except KeyError:  # a caller's bug: featurize_table was not asked for this preset
            raise RuntimeError(f"batch has no {preset!r} features (it has {self.preset!r}, {list(self.more)})") from None

    def row_numbers(self) -> np.ndarray:
        """Input row number of each featurized row (rejected rows removed)."""
        mask = np.ones(self.n_in, dtype=bool)
        if self.rejects.num_rows:
            mask[self.rejects.column("row").to_numpy() - self.start] = False
        return np.flatnonzero(mask) + self.start


def featurize_formulas(formulas: pa.Array, preset: str, engine: str = "fast", also: tuple[str, ...] = ()):
    """Worker: formulas -> (features (F, n) float32, feature-major, NaN for failed rows;
    per-row error or None; element numbers (n, k); atomic fractions (n, k); the ``also``
    presets' features, {preset: (F, n)}).

    The formulas are parsed once; every preset is computed from that parsed batch. A row
    any preset cannot featurize is an error (it cannot get every model's prediction)."""
    from irscreen.composition import parse_batch
    from irscreen.features import featurize_parsed_columns, get_preset, nonfinite_errors

    batch = parse_batch(formulas)
    errors = list(batch.errors)
    if engine == "matminer":
        from irscreen.features.reference import featurize_matminer

        ok = np.flatnonzero(batch.ok)
        X = np.full((batch.n_rows, get_preset(preset).n_features), np.nan)
        texts = formulas.to_pylist()
        if len(ok):
            X[ok] = featurize_matminer([texts[i] for i in ok], n_jobs=1)
        XT = np.ascontiguousarray(X.T, dtype=np.float32)
    else:
        XT = featurize_parsed_columns(batch, preset, np.float32)
    # a row with a non-finite feature the preset does not allow to be missing is a reject
    # that names the feature: no model ever sees a silently filled value
    errors = nonfinite_errors(XT, preset, formulas, errors)
    more = {}
    for other in also:
        more[other] = featurize_parsed_columns(batch, other, np.float32)
        errors = nonfinite_errors(more[other], other, formulas, errors)
    return XT, errors, batch.elements, batch.fractions(), more


def _split(start: int, rb: pa.RecordBatch, column: str, preset: str, XT: np.ndarray, errors: list,
           elements: np.ndarray, fractions: np.ndarray, more: dict) -> FeaturizedBatch:
    bad = np.fromiter((e is not None for e in errors), dtype=bool, count=len(errors))
    good = np.flatnonzero(~bad)
    if bad.any():
        idx = np.flatnonzero(bad)
        formulas = rb.column(rb.schema.get_field_index(column)).take(pa.array(idx))
        rejects = pa.table(
            {
                "row": pa.array(idx + start, pa.int64()),
                "formula": pa.array([None if f is None else str(f) for f in formulas.to_pylist()], pa.string()),
                "error": pa.array([errors[i] for i in idx], pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )
        rows = rb.take(pa.array(good))
        XT, elements, fractions = XT[:, good], elements[good], fractions[good]
        more = {p: v[:, good] for p, v in more.items()}
    else:
        rejects = REJECTS_SCHEMA.empty_table()
        rows = rb
    return FeaturizedBatch(start, rb.num_rows, rows, XT, rejects, elements, fractions, preset, more)


def featurize_table(
    table: Table,
    column: str,
    preset: str = "magpie",
    engine: str = "fast",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    jobs: int = 1,
    skip_rows: int = 0,
    also: tuple[str, ...] = (),
) -> Iterator[FeaturizedBatch]:
    """Yield FeaturizedBatch objects in input order. ``skip_rows`` resumes after a
    prefix that was already processed (it must be a multiple of ``batch_rows``).
    ``also``: other presets to compute from the same parsed rows (``FeaturizedBatch.more``)."""
    also = tuple(p for p in dict.fromkeys(also) if p != preset)
    def source():
        start = 0
        for rb in table.batches(batch_rows, string_columns=(column,)):
            if start >= skip_rows:
                yield start, rb
            start += rb.num_rows

    def formulas_of(rb: pa.RecordBatch) -> pa.Array:
        col = rb.column(rb.schema.get_field_index(column))
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            if pa.types.is_dictionary(col.type):
                col = col.cast(pa.string())
            else:
                from irscreen.errors import IrscreenError

                raise IrscreenError(f"{table.path}: column {column!r} holds {col.type}, not formula strings")
        return col

    if jobs <= 1:
        for start, rb in source():
            yield _split(start, rb, column, preset, *featurize_formulas(formulas_of(rb), preset, engine, also))
        return

    # A private pool of joblib's process backend (loky), driven with an explicit bound:
    # at most jobs + 1 batches submitted and not yet consumed. joblib.Parallel(return_as=
    # "generator") dispatches on completion, not on consumption, so when the consumer is
    # the slower side (writing Parquet, model inference) finished batches pile up and
    # memory grows with the input. (The global reusable loky pool belongs to Parallel and
    # is not shared with it.)
    from collections import deque

    from joblib.externals.loky import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=jobs)
    in_flight: deque = deque()
    try:
        for start, rb in source():
            in_flight.append((start, rb, executor.submit(featurize_formulas, formulas_of(rb), preset, engine, also)))
            if len(in_flight) > jobs:
                start0, rb0, fut = in_flight.popleft()
                yield _split(start0, rb0, column, preset, *fut.result())
        while in_flight:
            start0, rb0, fut = in_flight.popleft()
            yield _split(start0, rb0, column, preset, *fut.result())
    finally:  # also when the consumer stops early (an error, a simulated kill)
        executor.shutdown(wait=False, kill_workers=True)


@dataclass
class Summary:
    rows_read: int = 0
    rows_ok: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    output: str = ""
    rejects: str = ""

    @property
    def rate(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


class RejectsLog:
    """Collects rejected rows in memory-light batches and writes them atomically.
    The file is always written (possibly empty) so users can rely on it existing."""

    def __init__(self, path):
        from irscreen.io import AtomicWriter

        self._w = AtomicWriter(path, REJECTS_SCHEMA)
        self.rows = 0

    def add(self, rejects: pa.Table) -> None:
        if rejects.num_rows:
            self._w.write(rejects)
            self.rows += rejects.num_rows

    def finish(self):
        return self._w.finish()

    def abort(self) -> None:
        self._w.abort()


def featurize_file(
    input_path,
    output_path,
    *,
    formula_column: str | None = None,
    preset: str = "magpie",
    engine: str = "fast",
    jobs: int = 1,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    rejects_path=None,
    progress=None,
) -> Summary:
    """INPUT -> OUTPUT with all input columns plus the features (float32).

    ``progress(rows_done, total_or_None)`` is called after every batch."""
    import time

    from functools import partial

    from irscreen.io import open_table

    t0 = time.perf_counter()
    spec = feature_spec(preset, engine, batch_rows)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    labels = feature_fields(spec, table.path, table.columns)
    batches = featurize_table(table, column, spec.name, engine, batch_rows, jobs)
    summary = write_rows(table, batches, partial(feature_batch, labels=labels), output_path, rejects_path, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def feature_spec(preset: str, engine: str, batch_rows: int):
    """The preset of a featurize run, with its engine and batch size checked."""
    from irscreen.errors import IrscreenError
    from irscreen.features import get_preset

    try:
        spec = get_preset(preset)
    except ValueError as e:
        raise IrscreenError(str(e)) from None
    if engine not in ("fast", "matminer"):
        raise IrscreenError(f"unknown engine {engine!r} (fast, matminer)")
    if engine == "matminer" and spec.name != "magpie":
        raise IrscreenError("--engine matminer supports only the magpie preset")
    if batch_rows < 1:
        raise IrscreenError("--batch-rows must be >= 1")
    return spec


def feature_fields(spec, path, columns: list[str]) -> list[pa.Field]:
    """The float32 feature columns a featurize run adds; an input that already has them is an error."""
    from irscreen.errors import IrscreenError

    clash = sorted(set(columns) & set(spec.labels))
    if clash:
        raise IrscreenError(f"{path}: already has feature columns ({', '.join(clash[:3])}...); is it featurized?")
    return [pa.field(label, pa.float32()) for label in spec.labels]


def feature_batch(fb: FeaturizedBatch, labels: list[pa.Field]) -> pa.RecordBatch:
    """A featurized batch's rows with their features as columns."""
    schema = pa.schema(list(fb.rows.schema) + labels)
    return pa.RecordBatch.from_arrays(list(fb.rows.columns) + [pa.array(col) for col in fb.XT], schema=schema)


def write_rows(table: Table, batches, transform, output_path, rejects_path=None, progress=None,
               extra: dict | None = None, _after_rename=None) -> Summary:
    """Drive featurized batches into OUTPUT (``transform(batch) -> record batch``) and
    their rejects into the rejects file; both are committed together, or neither.
    ``extra`` ({path: table}, e.g. a --phases file's rejects) joins the same commit."""
    from pathlib import Path

    from irscreen.atomic import commit_together, recover
    from irscreen.errors import IrscreenError
    from irscreen.io import AtomicWriter, default_rejects_path

    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    recover(output_path)
    summary = Summary(output=str(output_path), rejects=str(rejects_path))
    writer = None
    rejects = RejectsLog(rejects_path)
    others = []
    try:
        for fb in batches:
            rb = transform(fb)
            if writer is None:
                writer = AtomicWriter(output_path, rb.schema)
            writer.write(rb)
            rejects.add(fb.rejects)
            summary.rows_read += fb.n_in
            summary.rows_ok += fb.rows.num_rows
            summary.rows_rejected += fb.rejects.num_rows
            if progress:
                progress(summary.rows_read, table.num_rows)
        if writer is None:
            raise IrscreenError(f"{table.path}: file has no rows")
        for path, t in (extra or {}).items():
            others.append(AtomicWriter(path, t.schema))
            others[-1].write(t)
        commit_together([writer.finish(), rejects.finish(), *(w.finish() for w in others)],
                        _after_rename=_after_rename)
    except BaseException:
        for w in (writer, *others):
            if w is not None:
                w.abort()
        rejects.abort()
        raise
    return summary
