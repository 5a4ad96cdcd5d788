"""Labelled data for ``train``, ``evaluate`` and ``build``: read, featurize (cached), split.

A training file is Parquet/CSV with a formula column and a target column, or an
already-featurized file holding every feature column of the preset. A row is usable when
its formula featurizes (the same rules as ``predict``: a non-finite feature rejects the
row, naming the feature) and its target is a finite number.

Featurized arrays are cached on disk (~/.cache/irscreen/features), keyed by the formulas,
the preset, the element data and the irscreen version, so retraining on the same data
skips featurization.

Splits: a seeded random fraction (the IRNet paper's 9:1), or a column whose labels say
which rows train (``train``) and which validate (``val``); rows with any other label
(``test``, blank) are left out and counted, never trained on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irscreen.errors import IrscreenError
from irscreen.models.scaler import Scaler

CACHE_DIR = Path.home() / ".cache" / "irscreen" / "features"
TRAIN_LABELS = ("train",)
VAL_LABELS = ("val", "valid", "validation")


@dataclass
class TrainingData:
    path: Path
    X: np.ndarray  # (n, F) float32, usable rows only
    y: np.ndarray  # (n,) float64
    formulas: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    preset: str
    split: dict
    data_sha256: str
    rows_read: int
    rows_rejected: int  # bad formula, unusable feature or missing target
    target: str
    scaler: Scaler
    rows_left_out: int = 0  # usable rows the split column assigns to neither train nor val


def split_indices(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/validation split (the paper's 9:1 by default)."""
    if not 0 < val_frac < 1:
        raise IrscreenError("--val-frac must be between 0 and 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_frac)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_by_column(labels: list, path: Path, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, left out) row indices from a split column's labels (case-insensitive)."""
    norm = np.array(["" if v is None else str(v).strip().lower() for v in labels], dtype=object)
    is_train = np.isin(norm, TRAIN_LABELS)
    is_val = np.isin(norm, VAL_LABELS)
    if not is_train.any() or not is_val.any():
        found = sorted({str(v) for v in set(labels)}, key=str)[:8]
        raise IrscreenError(
            f"{path}: column {column!r} must label training rows 'train' and validation rows 'val' "
            f"(found: {', '.join(repr(v) for v in found) or 'no values'})"
        )
    if is_train.sum() < 2:
        raise IrscreenError(f"{path}: column {column!r} marks fewer than 2 usable rows 'train'")
    return np.flatnonzero(is_train), np.flatnonzero(is_val), np.flatnonzero(~(is_train | is_val))


def data_hash(formulas, y: np.ndarray) -> str:
    """Content hash of a training set: formulas and targets, in order."""
    h = hashlib.sha256()
    for f in formulas:
        h.update(str(f).encode())
        h.update(b"\n")
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()


def _read_columns(path: Path, columns: list[str], formula_column: str | None):
    import pyarrow as pa

    from irscreen.io import open_table

    table = open_table(path)
    fcol = table.formula_column(formula_column) if formula_column else table.find_formula_column()
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise IrscreenError(f"{path}: no column {missing[0]!r} (columns: {', '.join(table.columns)})")
    batches = list(table.batches(1 << 20, string_columns=(fcol,) if fcol else ()))
    if not batches:
        raise IrscreenError(f"{path}: file has no rows")
    return fcol, pa.Table.from_batches(batches)


def _featurize_cached(formulas_arr, preset: str, jobs: int, console) -> tuple[np.ndarray, list]:
    from irscreen.features import get_preset
    from irscreen.pipeline import featurize_formulas

    from irscreen import __version__
    from irscreen.features import element_data_fingerprint

    spec = get_preset(preset)
    # the features of a formula depend on the preset, the element data and the engine's code
    h = hashlib.sha256(f"{spec.labels_hash} {element_data_fingerprint()['sha256']} {__version__}".encode())
    for f in formulas_arr.to_pylist():
        h.update(str(f).encode() + b"\n")
    cache = CACHE_DIR / f"{preset}-{h.hexdigest()[:32]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as d:
            return d["X"], [None if e == "" else str(e) for e in d["errors"]]
    chunk = 65_536
    parts = [formulas_arr.slice(i, chunk) for i in range(0, len(formulas_arr), chunk)]
    if console:
        console.print(f"featurizing {len(formulas_arr):,} formulas ({preset}) ...")
    if jobs > 1 and len(parts) > 1:
        from joblib import Parallel, delayed

        res = Parallel(n_jobs=jobs)(delayed(featurize_formulas)(p, preset) for p in parts)
    else:
        res = [featurize_formulas(p, preset) for p in parts]
    X = np.concatenate([r[0].T for r in res]) if res else np.zeros((0, spec.n_features), np.float32)
    errors = [e for r in res for e in r[1]]
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, X=X, errors=np.array(["" if e is None else e for e in errors]))
        tmp.replace(cache)
    except OSError:
        pass  # the cache is an optimization only
    return X, errors


def load_training_data(path, target: str, *, formula_column=None, preset="magpie", jobs=1, val_frac=0.1,
                       split_column=None, seed=0, console=None) -> TrainingData:
    import pyarrow as pa

    from irscreen.features import get_preset, nonfinite_errors

    path = Path(path)
    try:
        spec = get_preset(preset)
    except ValueError as e:
        raise IrscreenError(str(e)) from None
    cols = [target] + ([split_column] if split_column else [])
    fcol, tbl = _read_columns(path, cols, formula_column)
    n = tbl.num_rows
    try:
        y = tbl.column(target).cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise IrscreenError(f"{path}: target column {target!r} is not numeric") from None
    y = np.asarray(y, dtype=np.float64)  # nulls arrive as NaN and make the row unusable
    if all(label in tbl.column_names for label in spec.labels):  # already featurized
        X = np.column_stack([tbl.column(c).cast(pa.float32()).to_numpy(zero_copy_only=False) for c in spec.labels])
        formulas = tbl.column(fcol).to_pylist() if fcol else [str(i) for i in range(n)]
        errors = nonfinite_errors(np.ascontiguousarray(X.T), spec, formulas, [None] * n)
    elif fcol is None:
        raise IrscreenError(
            f"{path}: no formula column (formula or composition) and not featurized with preset {preset!r}; "
            "name the column with --formula-column"
        )
    else:
        formulas_arr = tbl.column(fcol).combine_chunks()
        formulas = formulas_arr.to_pylist()
        X, errors = _featurize_cached(formulas_arr, spec.name, jobs, console)
    keep = np.flatnonzero(np.array([e is None for e in errors], dtype=bool) & np.isfinite(y))
    if len(keep) < 3:
        raise IrscreenError(f"{path}: only {len(keep)} usable rows (need a valid formula and a numeric {target!r})")
    left_out = 0
    if split_column:
        all_labels = tbl.column(split_column).to_pylist()
        labels = [all_labels[i] for i in keep]
        train_idx, val_idx, out = split_by_column(labels, path, split_column)
        left_out = len(out)
        split = {"kind": "column", "column": split_column}
    else:
        train_idx, val_idx = split_indices(len(keep), val_frac, seed)
        split = {"kind": "random", "val_frac": val_frac, "seed": seed}
    Xk = X[keep]
    td = TrainingData(
        path=path, X=Xk, y=y[keep], formulas=[formulas[i] for i in keep], train_idx=train_idx, val_idx=val_idx,
        preset=spec.name, split=split, data_sha256=data_hash(formulas, np.nan_to_num(y, nan=0.0)),
        rows_read=n, rows_rejected=n - len(keep), target=target, scaler=Scaler.fit(Xk[train_idx], y[keep][train_idx]),
        rows_left_out=left_out,
    )
    if console and td.rows_rejected:
        console.print(f"[yellow]{td.rows_rejected:,} of {n:,} rows skipped[/] (bad formula or missing target)")
    if console and left_out:
        console.print(f"[yellow]{left_out:,} rows left out[/]: column {split_column!r} labels them neither train nor val")
    return td
