"""``predict``: every valid row of a file with its predictions; and the helpers that
``predict`` and ``screen`` share, so a row gets the same numbers from both.

One numeric path: features -> :meth:`Model.predict_members` with the same precision and
inference chunking -> :meth:`Model.outputs` (mean, calibrated sigma, extrapolation flag).

Where known phases are at hand (the model's, or ``--phases FILE``), every row also gets
``known``/``known_value``; with ``hull``, ``hull_distance``/``hull_uncertainty``
(:mod:`irscreen.screening.hull`). Without phases those columns are absent, not null: a
column that could only ever say "unknown" would read as "not a known compound".
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.errors import IrscreenError
from irscreen.io import open_table, write_table
from irscreen.pipeline import DEFAULT_BATCH_ROWS, FeaturizedBatch, Summary, featurize_table, write_rows

OUTPUT_COLUMNS = ("prediction", "uncertainty", "extrapolation")
KNOWN_COLUMNS = ("known", "known_value")
HULL_COLUMNS = ("hull_distance", "hull_uncertainty")
#: Float columns where NaN means "no value" and is written as null.
NULLABLE = frozenset({"known_value"})


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
    """Prediction columns as Arrow: float32 numbers (NaN -> null in NULLABLE columns),
    flags as bool."""
    out = []
    for name, values in cols.items():
        if values.dtype == bool:
            out.append((pa.field(name, pa.bool_()), pa.array(values)))
            continue
        v = values.astype(np.float32)
        out.append((pa.field(name, pa.float32()), pa.array(v, mask=np.isnan(v) if name in NULLABLE else None)))
    return out


# --------------------------------------------------------------------------- known phases


@dataclass
class Phases:
    """The known phases a run compares against, where they came from, and the rejects of
    a ``--phases`` file (written beside the output once the run succeeds)."""

    phases: object  # irscreen.phases.KnownPhases, or None: no known/hull columns
    label: str = ""
    rejects: pa.Table | None = None
    rejects_path: Path | None = None

    @property
    def sha256(self) -> str | None:
        return self.phases.sha256 if self.phases is not None else None


def phases_rejects_path(output: Path) -> Path:
    """OUTPUT.phases-rejects.parquet beside the output."""
    output = Path(output)
    return output.with_name(output.stem + ".phases-rejects.parquet")


def resolve_phases(m, phases_file, output_path, hull: bool) -> Phases:
    """``--phases FILE`` if given (it replaces the model's), else the model's own; a hull
    without either is an error that says what to do."""
    from irscreen.phases import is_formation_energy, read_phases

    if phases_file is not None:
        if m.phases is None and not is_formation_energy(m.target, m.units):
            raise IrscreenError(f"--phases compares formation energies per atom, but model {m.name!r} predicts "
                                f"{m.target} ({m.units or 'no units'})")
        ph, rejects = read_phases(phases_file)
        return Phases(ph, f"{phases_file} ({len(ph):,} compounds)", rejects, phases_rejects_path(output_path))
    if m.phases is None:
        if hull:
            raise IrscreenError(f"model {m.name!r} has no known phases to build a hull from; pass --phases FILE "
                                "(formula and formation energy per atom in eV)")
        return Phases(None)
    return Phases(m.phases, f"the model's {len(m.phases):,} known phases")


def new_columns(m, src: Phases, hull: bool, members: bool = False) -> list[str]:
    """The columns a run adds to the input's (an input column by one of these names is an error)."""
    return (list(OUTPUT_COLUMNS) + ([f"member_{k}" for k in range(m.n_members)] if members else [])
            + (list(KNOWN_COLUMNS) if src.phases is not None else []) + (list(HULL_COLUMNS) if hull else []))


@dataclass
class PredictSummary(Summary):
    phases: str = ""  # which known phases the known/hull columns use
    phases_rejects: str = ""  # the --phases file's rejects
    phases_rejected: int = 0


def prediction_batch(fb: FeaturizedBatch, m, precision: str, dev: str, members: bool = False, phases=None,
                     hull: bool = False) -> pa.RecordBatch:
    """A featurized batch's rows with their prediction columns; known/known_value with
    ``phases`` (KnownPhases), hull_distance/hull_uncertainty with ``hull`` as well."""
    from irscreen.screening.hull import hull_columns, known_columns

    cols = m.outputs(m.predict_members(fb.X, precision, dev), fb.elements, members)
    if phases is not None:
        known, idx = known_columns(phases, fb.elements, fb.fractions)
        cols.update(known)
        if hull:
            cols.update(hull_columns(phases, fb.elements, fb.fractions, cols["prediction"], cols["uncertainty"], idx))
    rb = fb.rows
    for field, arr in output_arrays(cols):
        rb = rb.append_column(field, arr)
    return rb


def predict_file(input_path, output_path, *, model=DEFAULT_MODEL, members=False, formula_column=None,
                 precision=DEFAULT_PRECISION, device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None,
                 hull=False, phases=None, progress=None) -> PredictSummary:
    """Every valid row with its input columns plus prediction, uncertainty, extrapolation;
    known, known_value where known phases are at hand; hull_distance, hull_uncertainty with ``hull``.
    ``phases``: a phases file replacing the model's own."""
    t0 = time.perf_counter()
    m = load(model)
    check_precision(precision)
    dev = device_type(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    src = resolve_phases(m, phases, output_path, hull)
    check_new_columns(table.columns, new_columns(m, src, hull, members))

    batches = featurize_table(table, column, m.preset, "fast", batch_rows, jobs)
    with_predictions = partial(prediction_batch, m=m, precision=precision, dev=dev, members=members, phases=src.phases,
                               hull=hull)
    s = PredictSummary(**asdict(write_rows(table, batches, with_predictions, output_path, rejects_path, progress)),
                       phases=src.label)
    if src.rejects is not None:
        write_table(src.rejects_path, src.rejects)
        s.phases_rejects, s.phases_rejected = str(src.rejects_path), src.rejects.num_rows
    s.seconds = time.perf_counter() - t0
    return s
