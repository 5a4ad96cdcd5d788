"""Reference engine: the real matminer featurizers, one formula at a time.

Slow (about 2 ms per formula) but it *is* matminer, so it is the yardstick for the
vectorized engine in :mod:`irscreen.features.magpie`.  Formulas are parsed by
:func:`irscreen.composition.parse_formula` (so unknown elements, isotopes and the other
deliberate parser differences are handled the irscreen way) and the pymatgen
``Composition`` is built from that result.

Rows whose formula does not parse are all NaN.  If a matminer featurizer raises for a
formula, that featurizer's columns are NaN (matminer's ``ignore_errors=True``).
"""
from __future__ import annotations

import warnings
from functools import cache

import numpy as np

__all__ = ["featurize_matminer", "matminer_featurizer"]


@cache
def matminer_featurizer():
    """The matminer MultipleFeaturizer whose 145 columns the magpie preset reproduces."""
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.composition import (
        ElementProperty,
        IonProperty,
        Stoichiometry,
        ValenceOrbital,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultipleFeaturizer(
            [
                Stoichiometry(),
                ElementProperty.from_preset("magpie"),
                ValenceOrbital(props=["frac"]),
                IonProperty(fast=True),
            ]
        )


def _featurize_chunk(formulas: list) -> np.ndarray:
    from pymatgen.core import Composition

    from irscreen.composition import FormulaError, parse_formula

    mf = matminer_featurizer()
    sizes = [len(f.feature_labels()) for f in mf.featurizers]
    out = np.full((len(formulas), sum(sizes)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, formula in enumerate(formulas):
            try:
                comp = Composition(parse_formula(formula))
            except FormulaError:
                continue
            col = 0
            for featurizer, size in zip(mf.featurizers, sizes):
                try:
                    values = featurizer.featurize(comp)
                except Exception:  # noqa: BLE001 - matminer's ignore_errors=True
                    values = None
                if values is not None:
                    out[i, col : col + size] = [float(v) for v in values]
                col += size
    return out


def featurize_matminer(formulas, n_jobs: int = 1) -> np.ndarray:
    """Magpie features of ``formulas`` computed by matminer itself: (n, 145) float64.

    ``n_jobs`` > 1 splits the formulas into chunks featurized by joblib worker
    processes (each builds its own featurizers once).
    """
    formulas = list(formulas)
    n = len(formulas)
    n_labels = len(matminer_featurizer().feature_labels())
    if n == 0:
        return np.empty((0, n_labels))
    n_jobs = max(1, int(n_jobs))
    if n_jobs == 1 or n < 2 * n_jobs:
        return _featurize_chunk(formulas)
    from joblib import Parallel, delayed

    n_chunks = min(n, 4 * n_jobs)
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_featurize_chunk)(formulas[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo
    )
    return np.concatenate(parts, axis=0)
