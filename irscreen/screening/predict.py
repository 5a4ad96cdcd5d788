"""``predict``: every valid row of a file with its predictions; and the helpers that
``predict`` and ``screen`` share, so a row gets the same numbers from both.

One numeric path: features -> :meth:`Model.predict_members` with the same precision and
inference chunking -> :meth:`Model.outputs` (mean, calibrated sigma, extrapolation flag).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.errors import IrscreenError
from irscreen.io import open_table
from irscreen.pipeline import DEFAULT_BATCH_ROWS, FeaturizedBatch, Summary, featurize_table, write_rows

OUTPUT_COLUMNS = ("prediction", "uncertainty", "extrapolation")


def load(model):
    """A Model passes through; a name or a path is loaded."""
    from irscreen.models.ensemble import Model, load_model

    return model if isinstance(model, Model) else load_model(model)


def device_type(device: str) -> str:
    from irscreen.models.device import pick_device

    return pick_device(device).type


def check_precision(precision: str) -> None:
    from irscreen.models.irnet import PRECISIONS

    if precision not in PRECISIONS:
        raise IrscreenError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")


def check_new_columns(columns: list[str], names) -> None:
    clash = [n for n in names if n in columns]
    if clash:
        raise IrscreenError(f"input already has a column named {clash[0]!r}; rename it first")


def output_arrays(cols: dict[str, np.ndarray]) -> list[tuple[pa.Field, pa.Array]]:
    """Prediction columns as Arrow: float32 numbers, the extrapolation flag as bool."""
    out = []
    for name, values in cols.items():
        typ = pa.bool_() if values.dtype == bool else pa.float32()
        out.append((pa.field(name, typ), pa.array(values if typ == pa.bool_() else values.astype(np.float32))))
    return out


def predict_file(input_path, output_path, *, model=DEFAULT_MODEL, members=False, formula_column=None,
                 precision=DEFAULT_PRECISION, device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None,
                 progress=None) -> Summary:
    """Every valid row with its input columns plus prediction, uncertainty, extrapolation."""
    t0 = time.perf_counter()
    m = load(model)
    check_precision(precision)
    dev = device_type(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    check_new_columns(table.columns, list(OUTPUT_COLUMNS) + ([f"member_{k}" for k in range(m.n_members)] if members else []))

    def with_predictions(fb: FeaturizedBatch) -> pa.RecordBatch:
        cols = m.outputs(m.predict_members(fb.X, precision, dev), fb.elements, members)
        rb = fb.rows
        for field, arr in output_arrays(cols):
            rb = rb.append_column(field, arr)
        return rb

    batches = featurize_table(table, column, m.preset, "fast", batch_rows, jobs)
    s = write_rows(table, batches, with_predictions, output_path, rejects_path, progress)
    s.seconds = time.perf_counter() - t0
    return s
