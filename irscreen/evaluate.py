"""Scoring a model bundle on labelled data: per member, for the ensemble mean, and how
well its uncertainty covers the errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from irscreen.errors import IrscreenError


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "max_error": float(np.max(np.abs(err))),
        "n": int(len(y_true)),
    }


def evaluate_members(member_preds: np.ndarray, y_true: np.ndarray, prediction: np.ndarray | None = None) -> dict:
    """member_preds: (members, n). Returns metrics of the ensemble's ``prediction`` (default:
    the members' mean) plus a 'members' list."""
    out = metrics(y_true, member_preds.mean(0) if prediction is None else prediction)
    out["members"] = [metrics(y_true, p) for p in member_preds]
    return out


def evaluate_file(path, model_name, target, *, formula_column=None, split="all", plot=None, precision="fp32",
                  jobs=1, console=None) -> dict:
    from irscreen.data import load_training_data
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
    res_pred = model.outputs(preds)["prediction"]
    res = evaluate_members(preds, td.y[idx], res_pred)
    if model.n_members > 1:
        from irscreen.models.calibration import coverage

        res["uncertainty"] = coverage(model.uncertainty(preds), np.abs(res_pred - td.y[idx]))
    res.update({"model": model.name, "split": split, "rejected": td.rows_rejected, "precision": precision})
    if plot:
        from irscreen import plots

        label = f"{model.target} ({model.units})" if model.units else model.target
        plots.parity(td.y[idx], res_pred, label, Path(plot))
    return res
