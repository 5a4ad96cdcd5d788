"""Vectorized Magpie features: the 145 columns of matminer's

    MultipleFeaturizer([Stoichiometry(), ElementProperty.from_preset("magpie"),
                        ValenceOrbital(props=["frac"]), IonProperty(fast=True)])

computed on the padded arrays of a :class:`~irscreen.composition.ParsedBatch` with
whole-array numpy operations (no Python loop over formulas).  Values agree with
matminer 0.10 to 1e-12 relative (numpy may add the same terms in another order),
NaN positions included.

What matminer does, and how it is matched here:

* Weights are the amounts as written, not fractions: ``PropertyStats.mean`` is
  ``np.average(values, weights=amounts)`` = sum(w*x) / sum(w), computed in that order
  (so overflow with absurd amounts gives the same inf/NaN).
* ``mode`` takes every element whose amount ``np.isclose`` (rtol 1e-5, atol 1e-8) the
  largest amount and returns the smallest property value among them.
* ``avg_dev`` is the weighted mean of ``|x - weighted mean|``.
* Stoichiometry: the 0-norm counts elements, the p-norms use x_i = amount/total.
* ValenceOrbital ``frac``: weighted mean of N{s,p,d,f}Valence over the weighted mean of
  NValence (a ratio of means, not a mean of ratios).
* IonProperty(fast=True): "compound possible" is :func:`irscreen.chemistry.charge_balanced`
  (one element: possible; otherwise some choice of common oxidation states sums to
  within 1e-8 of zero on the unnormalized amounts).  "max ionic char" is the largest
  1 - exp(-(X_a - X_b)^2 / 4) over element pairs, "avg ionic char" the sum over pairs
  of x_a x_b (1 - exp(...)).
* Missing element data is imputed the way matminer does (see elemdata).

Rows are grouped by their number of elements k, so no block carries padding and every
sum over a formula's elements is one numpy reduction over an axis of length k.

Rows that failed to parse come back all NaN.
"""
from __future__ import annotations

import numpy as np

from irscreen.chemistry import charge_balanced
from irscreen.features import elemdata

__all__ = ["LABELS", "N_FEATURES", "featurize_batch"]

_P_LIST = (0, 2, 3, 5, 7, 10)
_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
_ORBITALS = ("s", "p", "d", "f")

LABELS: list[str] = (
    [f"{p}-norm" for p in _P_LIST]
    + [f"MagpieData {s} {p}" for p in elemdata.MAGPIE_PROPERTIES for s in _STATS]
    + [f"frac {o} valence electrons" for o in _ORBITALS]
    + ["compound possible", "max ionic char", "avg ionic char"]
)
N_FEATURES = len(LABELS)  # 145

_N_PROPS = len(elemdata.MAGPIE_PROPERTIES)
_EP0 = len(_P_LIST)  # first ElementProperty column
_VO0 = _EP0 + _N_PROPS * len(_STATS)  # first ValenceOrbital column
_ION0 = _VO0 + len(_ORBITALS)  # first IonProperty column
_VALENCE_COLS = [elemdata.MAGPIE_PROPERTIES.index(f"N{o}Valence") for o in _ORBITALS]
_NVALENCE_COL = elemdata.MAGPIE_PROPERTIES.index("NValence")

# np.isclose(w, wmax) defaults, for the mode's ties
_ATOL = 1e-8
_RTOL = 1e-5

# Rows per block: keeps a block's gathered (22, k, rows) values inside the CPU caches.
_CHUNK = 2048


def featurize_batch(batch, out: np.ndarray | None = None) -> np.ndarray:
    """All 145 Magpie features of a ParsedBatch: (n, 145) float64, NaN rows for errors.

    ``out``, if given, is a C-contiguous (n, 145) float64 array to fill (saves the page
    faults of a fresh allocation when featurizing many batches).
    """
    n = np.asarray(batch.elements).shape[0]
    if out is None:
        out = np.empty((n, N_FEATURES), dtype=np.float64)
    elif out.shape != (n, N_FEATURES) or out.dtype != np.float64:
        raise ValueError(f"out must be a float64 array of shape {(n, N_FEATURES)}")
    _compute(batch, out, columns=False)
    return out


def featurize_columns(batch, dtype=np.float32) -> np.ndarray:
    """The same features feature-major: (145, n) in ``dtype``.

    Computed in float64 exactly as :func:`featurize_batch` and cast once on the way
    out; this is the layout Parquet columns and the file pipeline want, and it skips
    the transpose (the engine works feature-major internally).
    """
    n = np.asarray(batch.elements).shape[0]
    out = np.empty((N_FEATURES, n), dtype=dtype)
    _compute(batch, out, columns=True)
    return out


def _compute(batch, out: np.ndarray, columns: bool) -> None:
    elements = np.asarray(batch.elements)
    amounts = np.asarray(batch.amounts, dtype=np.float64)
    n = elements.shape[0]
    if n == 0:
        return
    if elements.ndim != 2 or elements.shape[1] == 0:
        out[:] = np.nan
        return
    real = elements != 0
    if (real[:, 1:] & ~real[:, :-1]).any():  # not left-packed: move elements left
        order = np.argsort(~real, axis=1, kind="stable")
        elements = np.take_along_axis(elements, order, axis=1)
        amounts = np.take_along_axis(amounts, order, axis=1)
        real = elements != 0
    n_el = real.sum(axis=1)
    bad = n_el == 0
    errors = batch.errors
    if errors is not None and list(errors).count(None) != n:
        bad |= np.fromiter((e is not None for e in errors), dtype=bool, count=n)
    tables = _Tables.get()
    widths = np.bincount(n_el[~bad], minlength=1)
    buf = np.empty((N_FEATURES, min(_CHUNK, n)))
    rowbuf = None if columns else np.empty((min(_CHUNK, n), N_FEATURES))
    with np.errstate(all="ignore"):
        if widths[1:].max(initial=0) == n:  # one width, no errors: contiguous blocks
            k = int(np.flatnonzero(widths)[0])
            for start in range(0, n, _CHUNK):
                stop = min(start + _CHUNK, n)
                res = buf[:, : stop - start]
                _featurize_block(elements[start:stop, :k], amounts[start:stop, :k], res, tables)
                if columns:
                    out[:, start:stop] = res
                else:
                    _transpose_into(out[start:stop], res)
        else:
            # Rows grouped by their number of elements: no padding inside a block.
            for k in np.flatnonzero(widths)[::-1]:
                if k == 0:
                    continue
                rows = np.flatnonzero((n_el == k) & ~bad)
                for start in range(0, len(rows), _CHUNK):
                    idx = rows[start : start + _CHUNK]
                    res = buf[:, : len(idx)]
                    _featurize_block(elements[idx, :k], amounts[idx, :k], res, tables)
                    if columns:
                        out[:, idx] = res
                    else:
                        rows_out = rowbuf[: len(idx)]
                        _transpose_into(rows_out, res)
                        out[idx] = rows_out
    if bad.any():
        if columns:
            out[:, bad] = np.nan
        else:
            out[bad] = np.nan


def _transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src.T, a few features at a time (much faster than one strided copy)."""
    for c in range(0, src.shape[0], 8):
        np.copyto(dst[:, c : c + 8], src[c : c + 8].T)


class _Tables:
    _instance = None

    def __init__(self) -> None:
        # Property-major copy of the Magpie table, (22, 119): gathers give (22, k, m).
        self.magpie_t = np.ascontiguousarray(elemdata.magpie_table().T)
        self.x = elemdata.pymatgen_electronegativity()  # (119,)

    @classmethod
    def get(cls) -> "_Tables":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _featurize_block(z: np.ndarray, a: np.ndarray, res: np.ndarray, t: _Tables) -> None:
    """Features of m rows that all have exactly k elements (no padding).

    z (m, k) atomic numbers, a (m, k) amounts; fills res (145, m), feature-major.
    """
    m, k = z.shape
    if m == 1 and k >= 8:
        # numpy sums the k elements of a lone row pairwise, of any other block left to
        # right: featurize it as two rows so that its values do not depend on its batch.
        pair = np.empty((N_FEATURES, 2))
        _featurize_block(np.repeat(z, 2, axis=0), np.repeat(a, 2, axis=0), pair, t)
        res[:, 0] = pair[:, 0]
        return
    # Element-major working copies (k, m): reductions over the elements of a formula
    # become element-wise operations between contiguous rows.
    zt = np.ascontiguousarray(z.T).astype(np.intp)
    w = np.ascontiguousarray(a.T)
    total = w.sum(axis=0)
    frac = w / total  # (k, m), amount / total as matminer's Stoichiometry

    # ---- Stoichiometry ----------------------------------------------------------
    res[0] = k
    f2 = frac * frac
    f3 = f2 * frac
    f5 = f3 * f2
    f7 = f5 * f2
    f10 = f5 * f5
    np.sqrt(f2.sum(axis=0), out=res[1])
    np.power(f3.sum(axis=0), 1.0 / 3, out=res[2])
    np.power(f5.sum(axis=0), 1.0 / 5, out=res[3])
    np.power(f7.sum(axis=0), 1.0 / 7, out=res[4])
    np.power(f10.sum(axis=0), 1.0 / 10, out=res[5])

    # ---- ElementProperty (magpie) -----------------------------------------------
    g = np.take(t.magpie_t, zt, axis=1)  # (22, k, m)
    ep = res[_EP0:_VO0].reshape(_N_PROPS, len(_STATS), m)
    mn = ep[:, 0]
    mx = ep[:, 1]
    np.minimum.reduce(g, axis=1, out=mn)
    np.maximum.reduce(g, axis=1, out=mx)
    np.subtract(mx, mn, out=ep[:, 2])
    prod = g * w  # (22, k, m)
    mean = ep[:, 3]
    np.sum(prod, axis=1, out=mean)
    mean /= total
    np.subtract(g, mean[:, None, :], out=prod)
    np.abs(prod, out=prod)
    prod *= w
    dev = ep[:, 4]
    np.sum(prod, axis=1, out=dev)
    dev /= total
    # mode: smallest value among the elements whose amount is close to the largest.
    wmax = w.max(axis=0)
    tied = np.abs(w - wmax) <= _ATOL + _RTOL * np.abs(wmax)  # (k, m)
    if k == 1 or not (tied.sum(axis=0) > 1).any():
        first = np.argmax(tied, axis=0)
        ep[:, 5] = np.take_along_axis(g, first[None, None, :], axis=1)[:, 0, :]
    else:
        penalty = np.where(tied, 0.0, np.inf)  # g + inf = inf, g + 0 = g
        np.add(g, penalty, out=prod)
        np.minimum.reduce(prod, axis=1, out=ep[:, 5])

    # ---- ValenceOrbital(props=["frac"]) -------------------------------------------
    np.divide(mean[_VALENCE_COLS], mean[_NVALENCE_COL], out=res[_VO0:_ION0])

    # ---- IonProperty(fast=True) ---------------------------------------------------
    x = t.x[zt]  # (k, m)
    max_ic = res[_ION0 + 1]
    avg_ic = res[_ION0 + 2]
    max_ic[:] = 0.0
    avg_ic[:] = 0.0
    for i in range(k - 1):
        for j in range(i + 1, k):
            d = x[i] - x[j]
            d *= d
            d *= -0.25
            ic = np.exp(d, out=d)
            np.subtract(1.0, ic, out=ic)
            np.maximum(max_ic, ic, out=max_ic)
            ic *= frac[i] * frac[j]
            avg_ic += ic
    res[_ION0] = charge_balanced(zt.T, w.T)
