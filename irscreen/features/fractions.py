"""The ``fractions`` preset: an ElemNet-style vector of atomic fractions.

One column per element H..Pu (Z = 1..94), labelled ``frac_H`` .. ``frac_Pu`` in
atomic-number order; each value is the element's amount divided by the formula's total,
so a row sums to 1.

Why Z = 1..94: ElemNet (Jha et al. 2018) feeds the fractions of the 86 elements that
occur in OQMD, all of them between H and Pu.  Keeping the full H..Pu range (adding He,
Ne, Ar, Po, At, Rn, Fr, Ra, which ElemNet dropped) lets every formula of the training
data be represented with rows that sum to 1, and keeps the column of each element at
``Z - 1``.  Elements after Pu (Am..Og) have no column: a formula containing one cannot
be represented, and its row is all NaN, like a formula that failed to parse.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MAX_Z", "LABELS", "featurize_batch"]

MAX_Z = 94  # Pu


def _labels() -> list[str]:
    from irscreen.composition import SYMBOLS

    return [f"frac_{SYMBOLS[z]}" for z in range(1, MAX_Z + 1)]


LABELS: list[str] = _labels()


def featurize_batch(batch) -> np.ndarray:
    """Atomic fractions of a ParsedBatch: (n, 94) float64; NaN rows for errors and for
    formulas with an element beyond Pu."""
    z = np.asarray(batch.elements).astype(np.intp)
    a = np.asarray(batch.amounts, dtype=np.float64)
    n = z.shape[0]
    out = np.zeros((n, MAX_Z), dtype=np.float64)
    if n == 0:
        return out
    real = z != 0
    total = a.sum(axis=1)
    bad = ~real.any(axis=1) | (z > MAX_Z).any(axis=1)
    errors = batch.errors
    if errors is not None and list(errors).count(None) != n:
        bad |= np.fromiter((e is not None for e in errors), dtype=bool, count=n)
    keep = real & ~bad[:, None]
    r, c = np.nonzero(keep)
    np.add.at(out, (r, z[r, c] - 1), a[r, c] / total[r])
    out[bad] = np.nan
    return out
