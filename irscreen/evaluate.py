"""Regression metrics for a model bundle, per member and for the ensemble mean."""
from __future__ import annotations

import numpy as np


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


def evaluate_members(member_preds: np.ndarray, y_true: np.ndarray) -> dict:
    """member_preds: (members, n). Returns ensemble metrics plus a 'members' list."""
    out = metrics(y_true, member_preds.mean(0))
    out["members"] = [metrics(y_true, p) for p in member_preds]
    return out
