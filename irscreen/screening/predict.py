"""``predict``: every valid row of a file with its predictions; and the helpers that
``predict`` and ``screen`` share, so a row gets the same numbers from both.

One numeric path: features -> :meth:`Model.predict_members` with the same precision and
inference chunking -> :meth:`Model.outputs` (mean, calibrated sigma, extrapolation flag);
``model_columns`` is that path for every model of every run.

A run may use several models (``predict -m A -m B``, ``screen --where/--also``):
:class:`Models`. The main (first) model writes ``prediction``, ``uncertainty``,
``extrapolation``; every other writes ``NAME``, ``NAME_uncertainty``,
``NAME_extrapolation`` (NAME: its manifest name), after the main model's columns, in the
order first named. A bundle named twice (by name and by path, or the main model again)
is one model: predicted once, its columns written once. Two other bundles with one name
would write one column twice: an error. Rows are parsed once and featurized once per
feature preset (``featurize_table(also=...)``); a row some model's preset cannot
featurize is a reject, so every output row has every model's numbers, and each model's
numbers are those a run of that model alone gives.

Where known phases are at hand (the model's, or ``--phases FILE``), every row also gets
``known``/``known_value``; with ``hull``, ``hull_distance``/``hull_uncertainty``
(:mod:`irscreen.screening.hull`). Without phases those columns are absent, not null: a
column that could only ever say "unknown" would read as "not a known compound".
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.errors import IrscreenError
from irscreen.io import open_table
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
    """The columns a run adds may not be the input's, nor one another's (model names make columns)."""
    clash = [n for n in names if n in columns]
    if clash:
        raise IrscreenError(f"input already has a column named {clash[0]!r}; rename it first")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise IrscreenError(f"column {twice[0]!r} would be written twice: a model's name (its manifest.json 'name') "
                            "makes its columns; use a copy of the bundle with another name")


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


# --------------------------------------------------------------------------- the models of a run


def column_name(name: str | None, key: str) -> str:
    """The column of a model's output ``key`` (a key of :meth:`Model.outputs`): the key
    itself for the main model (``name`` None); NAME for another model's prediction,
    NAME_KEY for the rest (NAME_uncertainty, NAME_extrapolation, NAME_member_0)."""
    if name is None:
        return key
    return name if key == "prediction" else f"{name}_{key}"


def uncertainty_column(value_column: str) -> str:
    """The uncertainty column beside a prediction column."""
    return "uncertainty" if value_column == "prediction" else f"{value_column}_uncertainty"


@dataclass
class Models:
    """The models of one run, each bundle once. ``main`` writes prediction, uncertainty,
    extrapolation (screen ranks by it; known/hull columns use it); each of ``others`` its
    columns under its own name. ``refs``: what each of ``others`` was named by (a shipped
    name or a path: what a Dask worker loads)."""

    main: object  # irscreen.models.ensemble.Model
    others: list = field(default_factory=list)
    refs: list = field(default_factory=list)

    @property
    def all(self) -> list:
        return [self.main, *self.others]

    def name(self, m) -> str | None:
        """The prefix of ``m``'s columns: None for the main model."""
        return None if m is self.main else m.name

    def value_column(self, m) -> str:
        return column_name(self.name(m), "prediction")

    @property
    def also_presets(self) -> tuple[str, ...]:
        """The other models' feature presets besides the main model's (computed alongside it)."""
        return tuple(dict.fromkeys(m.preset for m in self.others if m.preset != self.main.preset))

    def identity(self) -> list:
        """The other bundles, for a resume checkpoint: path and member hashes, in order."""
        return [[str(m.path.resolve()), [mm["sha256"] for mm in m.manifest["members"]]] for m in self.others]


def as_models(models) -> Models:
    """A Models passes through; a Model is a run of one model."""
    return models if isinstance(models, Models) else Models(models)


def _bundle_key(ref) -> Path:
    """Which bundle ``ref`` (a Model, a shipped name or a path) is, without loading it."""
    from irscreen.models.bundle import resolve

    path = getattr(ref, "path", None)
    return Path(path if path is not None else resolve(ref)).resolve()


def load_models(main, others=(), labels=()) -> tuple[Models, list]:
    """The run's Models, and the loaded model of each of ``others`` in order (to find a
    condition's model). ``labels[i]``: the option that named ``others[i]`` (``--where
    'band-gap >= 1'``), put before its load error. A bundle named again (the main model
    included) is loaded and predicted once."""
    models = Models(load(main))
    seen = {_bundle_key(models.main): models.main}
    named = []
    for i, ref in enumerate(others):
        try:
            key = _bundle_key(ref)
            m = seen.get(key) or load(ref)
        except IrscreenError as e:
            if i < len(labels):
                raise IrscreenError(f"{labels[i]}: {e}") from None
            raise
        if key not in seen:
            seen[key] = m
            models.others.append(m)
            models.refs.append(ref)
        named.append(m)
    _check_names(models)
    return models, named


def _check_names(models: Models) -> None:
    by_name: dict = {}
    for m in models.others:
        if m.name in by_name:
            raise IrscreenError(f"two models are named {m.name!r} ({by_name[m.name].path} and {m.path}): their columns "
                                "would clash; use a copy of one bundle with another name in its manifest.json")
        by_name[m.name] = m


def model_columns(m, fb: FeaturizedBatch, idx: np.ndarray | None, precision: str, dev: str, name: str | None = None,
                  members: bool = False) -> dict[str, np.ndarray]:
    """Model ``m``'s output columns for rows ``idx`` of a featurized batch (None: all rows),
    named by :func:`column_name`. The one place a model's numbers are computed, for
    ``predict`` and ``screen`` alike."""
    X, elements = fb.X_for(m.preset), fb.elements
    if idx is not None:
        X, elements = X[idx], elements[idx]
    cols = m.outputs(m.predict_members(X, precision, dev), elements, members)
    return {column_name(name, k): v for k, v in cols.items()}


def _model_fields(m, name: str | None, members: bool) -> list[pa.Field]:
    keys = [*OUTPUT_COLUMNS, *([f"member_{k}" for k in range(m.n_members)] if members else [])]
    return [pa.field(column_name(name, k), pa.bool_() if k == "extrapolation" else pa.float32()) for k in keys]


def new_fields(models, src: Phases, hull: bool, members: bool = False) -> list[pa.Field]:
    """The columns a run adds to the input's, in order, with their types: the main
    model's, known/hull (from the main model), then every other model's."""
    models = as_models(models)
    fields = _model_fields(models.main, None, members)
    if src.phases is not None:
        fields += [pa.field(c, pa.bool_() if c == "known" else pa.float32()) for c in KNOWN_COLUMNS]
    if hull:
        fields += [pa.field(c, pa.float32()) for c in HULL_COLUMNS]
    for m in models.others:
        fields += _model_fields(m, m.name, members)
    return fields


def new_columns(models, src: Phases, hull: bool, members: bool = False) -> list[str]:
    """The columns a run adds to the input's (an input column by one of these names is an error)."""
    return [f.name for f in new_fields(models, src, hull, members)]


@dataclass
class PredictSummary(Summary):
    phases: str = ""  # which known phases the known/hull columns use
    phases_rejects: str = ""  # the --phases file's rejects
    phases_rejected: int = 0


def prediction_batch(fb: FeaturizedBatch, models, precision: str, dev: str, members: bool = False, phases=None,
                     hull: bool = False) -> pa.RecordBatch:
    """A featurized batch's rows with their prediction columns (``models``: a Models, or one
    Model); known/known_value with ``phases`` (KnownPhases), hull_distance/hull_uncertainty
    with ``hull`` as well; then the other models' columns."""
    from irscreen.screening.hull import hull_columns, known_columns

    models = as_models(models)
    cols = model_columns(models.main, fb, None, precision, dev, None, members)
    if phases is not None:
        known, idx = known_columns(phases, fb.elements, fb.fractions)
        cols.update(known)
        if hull:
            cols.update(hull_columns(phases, fb.elements, fb.fractions, cols["prediction"], cols["uncertainty"], idx))
    for m in models.others:
        cols.update(model_columns(m, fb, None, precision, dev, m.name, members))
    rb = fb.rows
    for fld, arr in output_arrays(cols):
        rb = rb.append_column(fld, arr)
    return rb


def load_predict_models(model, also=()) -> Models:
    """``predict -m A -m B``: A the main model, the others named by their --model."""
    if isinstance(also, (str, Path)):
        also = [also]
    return load_models(model, list(also), [f"--model {str(ref)!r}" for ref in also])[0]


def predict_file(input_path, output_path, *, model=DEFAULT_MODEL, also=(), members=False, formula_column=None,
                 precision=DEFAULT_PRECISION, device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None,
                 hull=False, phases=None, progress=None) -> PredictSummary:
    """Every valid row with its input columns plus prediction, uncertainty, extrapolation;
    known, known_value where known phases are at hand; hull_distance, hull_uncertainty with ``hull``;
    NAME, NAME_uncertainty, NAME_extrapolation for every model of ``also`` (CLI: the second
    and later --model). ``phases``: a phases file replacing the model's own."""
    t0 = time.perf_counter()
    models = load_predict_models(model, also)
    check_precision(precision)
    dev = device_type(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    src = resolve_phases(models.main, phases, output_path, hull)
    check_new_columns(table.columns, new_columns(models, src, hull, members))

    batches = featurize_table(table, column, models.main.preset, "fast", batch_rows, jobs, also=models.also_presets)
    with_predictions = partial(prediction_batch, models=models, precision=precision, dev=dev, members=members,
                               phases=src.phases, hull=hull)
    extra = {src.rejects_path: src.rejects} if src.rejects is not None else None  # committed with the output
    s = PredictSummary(**asdict(write_rows(table, batches, with_predictions, output_path, rejects_path, progress,
                                           extra=extra)), phases=src.label)
    if src.rejects is not None:
        s.phases_rejects, s.phases_rejected = str(src.rejects_path), src.rejects.num_rows
    s.seconds = time.perf_counter() - t0
    return s
