"""Labelled data for `train` and `evaluate`: read, featurize (cached), split.

A training file is Parquet/CSV with a formula column and a target column, or an
already-featurized file holding every feature column of the preset. Featurized
arrays are cached on disk by the file's content hash (~/.cache/irscreen/features),
so retraining on the same data skips featurization.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irscreen.errors import IrscreenError

CACHE_DIR = Path.home() / ".cache" / "irscreen" / "features"


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
    rows_rejected: int
    target: str
    scaler: object = None


def _read_columns(path: Path, columns: list[str], formula_column: str | None):
    import pyarrow as pa

    from irscreen.io import open_table

    table = open_table(path)
    fcol = table.formula_column(formula_column) if (formula_column or any(c in table.columns for c in ("formula", "composition"))) else None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise IrscreenError(f"{path}: no column {missing[0]!r} (columns: {', '.join(table.columns)})")
    batches = list(table.batches(1 << 20, string_columns=(fcol,) if fcol else ()))
    if not batches:
        raise IrscreenError(f"{path}: file has no rows")
    return table, fcol, pa.Table.from_batches(batches)


def _featurize_cached(formulas_arr, preset: str, jobs: int, console) -> tuple[np.ndarray, list]:

    from irscreen.features import get_preset
    from irscreen.pipeline import featurize_formulas

    spec = get_preset(preset)
    h = hashlib.sha256(spec.labels_hash.encode())
    for f in formulas_arr.to_pylist():
        h.update(str(f).encode() + b"\n")
    key = h.hexdigest()[:32]
    cache = CACHE_DIR / f"{preset}-{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as d:
            errors = [None if e == "" else str(e) for e in d["errors"]]
            return d["X"], errors
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

    from irscreen.features import get_preset
    from irscreen.train import Scaler, data_hash, split_indices

    path = Path(path)
    try:
        spec = get_preset(preset)
    except ValueError as e:
        raise IrscreenError(str(e)) from None
    cols = [target] + ([split_column] if split_column else [])
    table, fcol, tbl = _read_columns(path, cols, formula_column)
    n = tbl.num_rows
    try:
        y = tbl.column(target).cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise IrscreenError(f"{path}: target column {target!r} is not numeric") from None
    y = np.asarray(y, dtype=np.float64)  # nulls arrive as NaN and make the row unusable
    featurized = all(label in tbl.column_names for label in spec.labels)
    if featurized:
        X = np.column_stack([tbl.column(c).cast(pa.float32()).to_numpy(zero_copy_only=False) for c in spec.labels])
        formulas = tbl.column(fcol).to_pylist() if fcol else [str(i) for i in range(n)]
        errors = [None] * n
    elif fcol is None:
        raise IrscreenError(
            f"{path}: no formula column (formula or composition) and not featurized with preset {preset!r}; "
            "name the column with --formula-column"
        )
    else:
        formulas_arr = tbl.column(fcol).combine_chunks()
        formulas = formulas_arr.to_pylist()
        X, errors = _featurize_cached(formulas_arr, spec.name, jobs, console)
    usable = np.array([e is None for e in errors]) & np.isfinite(y)
    keep = np.flatnonzero(usable)
    if len(keep) < 3:
        raise IrscreenError(f"{path}: only {len(keep)} usable rows (need a valid formula and a numeric {target!r})")
    if split_column:
        labels = np.array([str(v) for v in tbl.column(split_column).to_pylist()], dtype=object)[keep]
        val_idx = np.flatnonzero(labels == "val")
        train_idx = np.flatnonzero(labels != "val")
        if len(val_idx) == 0 or len(train_idx) < 2:
            raise IrscreenError(f"{path}: column {split_column!r} must mark some rows 'val' and leave >= 2 for training")
        split = {"kind": "column", "column": split_column}
    else:
        train_idx, val_idx = split_indices(len(keep), val_frac, seed)
        split = {"kind": "random", "val_frac": val_frac, "seed": seed}
    td = TrainingData(
        path=path, X=X[keep], y=y[keep], formulas=[formulas[i] for i in keep], train_idx=train_idx, val_idx=val_idx,
        preset=spec.name, split=split, data_sha256=data_hash(formulas, np.nan_to_num(y, nan=0.0)),
        rows_read=n, rows_rejected=n - len(keep), target=target,
    )
    td.scaler = Scaler.fit(td.X[train_idx], td.y[train_idx])
    if console and td.rows_rejected:
        console.print(f"[yellow]{td.rows_rejected:,} of {n:,} rows skipped[/] (bad formula or missing target)")
    return td


def train_bundle(td: TrainingData, cfg, output, *, name, units="", description="", resume=False,
                 checkpoint_dir=None, on_epoch=None) -> dict:
    from irscreen.features import get_preset
    from irscreen.train import finalize_bundle, new_manifest, train_ensemble

    spec = get_preset(td.preset)
    data = {
        "source": str(td.path.name), "file": td.path.name, "rows": int(len(td.y)), "rows_read": td.rows_read,
        "train_rows": int(len(td.train_idx)), "val_rows": int(len(td.val_idx)), "sha256": td.data_sha256,
        "split": td.split, "target_column": td.target,
    }
    manifest = new_manifest(
        name=name, target=td.target, units=units, description=description or f"{td.target} from composition",
        preset=spec.name, labels_hash=spec.labels_hash, n_features=spec.n_features, scaler=td.scaler, cfg=cfg,
        data=data, citations=list(spec.citations) + [
            "D. Jha et al., Enabling deeper learning on big data for materials informatics applications, "
            "Sci. Rep. 11, 4244 (2021) [IRNet]"],
    )
    out = Path(output)
    train_ensemble(td.X, td.y, td.train_idx, td.val_idx, cfg, out, manifest, checkpoint_dir=checkpoint_dir,
                   resume=resume, on_epoch=on_epoch)
    return finalize_bundle(out, td.X[td.val_idx], td.y[td.val_idx])


def evaluate_file(path, model_name, target, *, formula_column=None, split="all", plot=None, precision="fp32",
                  jobs=1, console=None) -> dict:
    from irscreen.evaluate import evaluate_members
    from irscreen.models.ensemble import load_model

    model = load_model(model_name)
    m = model.manifest
    if split not in ("all", "val", "train"):
        raise IrscreenError(f"--split must be all, val or train, not {split!r}")
    split_seed = m.get("data", {}).get("split", {}).get("seed", 0)
    split_frac = m.get("data", {}).get("split", {}).get("val_frac", 0.1)
    split_col = m.get("data", {}).get("split", {}).get("column")
    td = load_training_data(path, target, formula_column=formula_column, preset=model.preset, jobs=jobs,
                            val_frac=split_frac, split_column=split_col if split != "all" else None,
                            seed=split_seed, console=console)
    if split != "all":
        if td.data_sha256 != m.get("data", {}).get("sha256"):
            raise IrscreenError(
                f"{path} is not the file {model.name!r} was trained on (content hash differs), so its "
                f"'{split}' split is undefined; use --split all"
            )
        idx = td.val_idx if split == "val" else td.train_idx
    else:
        idx = np.arange(len(td.y))
    preds = model.predict_members(td.X[idx], precision=precision)
    res = evaluate_members(preds, td.y[idx])
    res.update({"model": model.name, "split": split, "rejected": td.rows_rejected, "precision": precision})
    if plot:
        from irscreen import plots

        label = f"{model.target} ({model.units})" if model.units else model.target
        plots.parity(td.y[idx], preds.mean(0), label, Path(plot))
    return res
