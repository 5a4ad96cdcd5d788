"""A bundle's student: a small network distilled from its ensemble, with a stated bound
on how far the two disagree. Screen's cascade (:mod:`irscreen.screening.cascade`) runs
it on every row and the ensemble only where the bound leaves a doubt.

The student reads the same scaled features as the members and predicts, for a row, what
the ensemble would say: its mean (output 0, in standardized target units) and its
calibrated sigma (output 1, divided by the target's standard deviation). It costs about
1/200 of the ensemble's FLOPs. ``irscreen distill`` trains it (:mod:`irscreen.distill`)
and measures the largest disagreement on held-out candidates; the manifest stores that
times a safety margin, per inference precision, in target units::

    |student mean - ensemble mean|   <= bound.mean[precision]
    |student sigma - ensemble sigma| <= bound.sigma[precision]
"""
from __future__ import annotations

import numpy as np
import torch

from irscreen.errors import IrscreenError
from irscreen.models.irnet import FoldedEnsemble, fold

#: Rows per student call (a small network: larger calls amortize per-call overheads).
STUDENT_BATCH = 4096


class Student:
    def __init__(self, net, scaler, info: dict, output_min: float | None = None):
        self.info = info
        self.scaler = scaler
        self.output_min = output_min
        self.engine = FoldedEnsemble([fold(net)], precision="fp32")

    @property
    def architecture(self) -> str:
        return self.info["architecture"]

    def bound(self, precision: str) -> tuple[float, float]:
        """(mean, sigma) disagreement bound against the ensemble run at ``precision``."""
        b = self.info["bound"]
        if precision not in b["mean"]:
            raise IrscreenError(f"the student has no disagreement bound for precision {precision!r} "
                                f"({', '.join(b['mean'])}); rebuild it with `irscreen distill` or pass --exact")
        return float(b["mean"][precision]), float(b["sigma"][precision])

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw features (n, F) -> the ensemble's (mean, calibrated sigma) as the student
        guesses them, float64, target units (the mean clipped like the ensemble's)."""
        Z = np.ascontiguousarray(self.scaler.transform(X))
        out = np.empty((len(Z), 2), dtype=np.float32)
        for i in range(0, len(Z), STUDENT_BATCH):
            out[i : i + STUDENT_BATCH] = self.engine(torch.from_numpy(Z[i : i + STUDENT_BATCH]))[0].numpy()
        y_std = float(self.scaler.y_std)
        mean = out[:, 0].astype(np.float64) * y_std + float(self.scaler.y_mean)
        if self.output_min is not None:
            mean = np.maximum(mean, self.output_min)
        return mean, np.maximum(out[:, 1].astype(np.float64) * y_std, 0.0)
