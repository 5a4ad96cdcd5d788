"""A bundle's student: a small network distilled from its ensemble, with stated bounds
on how far the two disagree. Screen's cascade (:mod:`irscreen.screening.cascade`) runs
it on every row and the ensemble only where the bounds leave a doubt.

The student reads the same scaled features as the members and predicts, for a row, what
the ensemble would say: its mean (output 0, in standardized target units) and its
calibrated sigma (output 1, divided by the target's standard deviation). It costs a few
percent of the ensemble's FLOPs. ``irscreen distill`` trains it (:mod:`irscreen.distill`)
and measures its disagreement on held-out candidates, by region of the ensemble's value:
the held-out rows are cut into bins of equal count by their ensemble mean, and each bin
records the largest over- and underestimate of the mean and of sigma. A screen needs the
bound only where a row that can still make the shortlist lies (for the lowest formation
energies: the low bins), and there the student is much closer than at its worst
anywhere. Bounds are those maxima times a safety margin, plus, for an inference precision
other than the one the labels were made at, the largest difference between the two.
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
        # the precision its bounds were measured in (students before it was recorded: fp32)
        self.engine = FoldedEnsemble([fold(net)], precision=info.get("precision", "fp32"))

    @property
    def architecture(self) -> str:
        return self.info["architecture"]

    def bound(self, precision: str, lo: float = -np.inf, hi: float = np.inf) -> dict[str, float]:
        """The student's largest over- and underestimates (``mean_over`` = student -
        ensemble, ``mean_under`` = ensemble - student, likewise for sigma), margin
        included, over held-out rows whose ensemble mean lies in [lo, hi], against the
        ensemble run at ``precision``. Target units, each >= 0."""
        info = self.info["bound"]
        if precision not in info["allowance"]:
            raise IrscreenError(f"the student has no disagreement bound for precision {precision!r} "
                                f"({', '.join(info['allowance'])}); rebuild it with `irscreen distill` or pass --exact")
        # bin k holds ensemble means in [inner[k-1], inner[k]) (the outer bins are open-ended)
        inner = np.asarray(info["edges"], dtype=np.float64)
        first = int(np.searchsorted(inner, lo, side="right"))
        last = int(np.searchsorted(inner, hi, side="right"))
        allow = info["allowance"][precision]
        return {k: info["margin"] * (max(info[k][first : last + 1]) + allow[k.split("_")[0]])
                for k in ("mean_over", "mean_under", "sigma_over", "sigma_under")}

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
