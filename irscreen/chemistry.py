"""Charge balance: can a composition be neutral with one common oxidation state per element?

This is the test behind matminer's ``IonProperty(fast=True)`` "compound possible"
feature, and ``irscreen generate --charge-balanced`` keeps exactly the compositions
that feature calls possible:

* A composition of one element is balanced.
* Otherwise it is balanced when some choice of one state per element from pymatgen's
  ``Element.common_oxidation_states`` makes ``np.isclose(dot(states, amounts), 0)``,
  i.e. ``|sum| <= 1e-8``, on the amounts as given, not normalized to fractions.
* An element without common states (He, Ne, Ar, Rn, Z >= 105) has no state to choose,
  so no composition of it with another element is balanced.

Two entry points, one test:

* :func:`charge_balanced` takes one amount vector per composition (the feature).  It
  walks the elements one at a time, left to right, keeping the partial charges that the
  remaining elements can still bring back to zero (the bounds prune most of the
  product of states).
* :func:`charge_balanced_outer` tests every row of elements against every amount
  vector, the shape of an enumeration (element subsets x stoichiometries, ``generate``).
  The distinct choices of states are found once and multiplied with all amount vectors
  in one matrix product.  With integer amounts every charge is exact and the two agree
  exactly; with fractional ones the product may round a charge differently in the last
  bit, which could only matter for a charge within an ulp of 1e-8.
"""
from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["ATOL", "charge_balanced", "charge_balanced_outer"]

ATOL = 1e-8  # np.isclose(charge, 0): |charge| <= atol (the rtol term vanishes at 0)


class _States:
    """Common oxidation states by atomic number (row 0, padding, holds the state 0)."""

    def __init__(self) -> None:
        from irscreen.features import elemdata  # here: importing irscreen.features imports this module

        self.states, self.counts = elemdata.common_oxidation_states()  # (119, s_max) NaN-padded, (119,)
        # Bounds, for pruning; NaN for an element without states (NaN fails every test).
        has = self.counts > 0
        known = ~np.isnan(self.states)
        self.lo = np.where(has, np.where(known, self.states, np.inf).min(axis=1), np.nan)
        self.hi = np.where(has, np.where(known, self.states, -np.inf).max(axis=1), np.nan)


@cache
def _table() -> _States:
    return _States()


def _n_elements(z: np.ndarray) -> np.ndarray:
    return np.count_nonzero(z, axis=1)  # 0 is padding


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry i repeated counts[i] times: (which entry, which of its states) for each copy."""
    owner = np.repeat(np.arange(counts.size), counts)
    pick = np.arange(owner.size) - (np.cumsum(counts) - counts)[owner]
    return owner, pick


def charge_balanced(elements, amounts) -> np.ndarray:
    """(n,) bool: composition i (atomic numbers ``elements[i]``, 0 for padding, with
    ``amounts[i]``) can be charge neutral; both arguments (n, k)."""
    z = np.asarray(elements, dtype=np.intp)
    w = np.asarray(amounts, dtype=np.float64)
    if z.ndim != 2 or z.shape != w.shape:
        raise ValueError(f"elements and amounts must be (n, k) arrays of one shape, got {z.shape} and {w.shape}")
    n, k = z.shape
    n_el = _n_elements(z)
    out = n_el == 1
    if k < 2:
        return out
    t = _table()
    zt = np.ascontiguousarray(z.T)  # element-major (k, n): each element's column is contiguous
    wt = np.ascontiguousarray(w.T)
    lo = t.lo[zt] * wt
    hi = t.hi[zt] * wt
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # a negative amount swaps the bounds
    # Suffix bounds: the least and most that elements j.. can still add.
    rest_lo = np.zeros((k + 1, n))
    rest_hi = np.zeros((k + 1, n))
    rest_lo[:k] = np.cumsum(lo[::-1], axis=0)[::-1]
    rest_hi[:k] = np.cumsum(hi[::-1], axis=0)[::-1]
    # Pruning must never drop a choice the final test would accept: give it slack for
    # the rounding of the bounds.
    slack = 2 * ATOL + 1e-12 * (np.abs(rest_lo[0]) + np.abs(rest_hi[0]))
    rows = np.flatnonzero((rest_lo[0] <= slack) & (rest_hi[0] >= -slack) & (n_el > 1))  # NaN bounds fail here
    partial = np.zeros(rows.size)
    for j in range(k):
        if rows.size == 0:
            return out
        zj = zt[j, rows]
        cj = t.counts[zj]
        if (cj == 1).all():
            partial = partial + t.states[zj, 0] * wt[j, rows]
        else:
            owner, pick = _expand(cj)
            rows = rows[owner]
            partial = partial[owner] + t.states[zj[owner], pick] * wt[j, rows]
        if j + 1 < k:
            s = slack[rows]
            keep = (partial + rest_lo[j + 1, rows] <= s) & (partial + rest_hi[j + 1, rows] >= -s)
            if not keep.all():
                rows = rows[keep]
                partial = partial[keep]
    out[rows[np.abs(partial) <= ATOL]] = True
    return out


def charge_balanced_outer(elements, amounts) -> np.ndarray:
    """(n, S) bool: ``charge_balanced`` of element row i (n, k) with amount vector r (S, k),
    for every pair, without building the n * S compositions."""
    z = np.asarray(elements, dtype=np.intp)
    w = np.asarray(amounts, dtype=np.float64)
    if z.ndim != 2 or w.ndim != 2 or z.shape[1] != w.shape[1]:
        raise ValueError(f"elements (n, k) and amounts (S, k) must have the same k, got {z.shape} and {w.shape}")
    n, k = z.shape
    n_amounts = w.shape[0]
    n_el = _n_elements(z)
    out = np.repeat((n_el == 1)[:, None], n_amounts, axis=1)
    t = _table()
    counts = t.counts[z]
    live = np.flatnonzero((counts > 0).all(axis=1) & (n_el > 1))
    if live.size == 0 or n_amounts == 0:
        return out
    # Every choice of one state per element, row by row (owner ascending).
    owner = np.arange(live.size)
    columns: list[np.ndarray] = []
    for j in range(k):
        rep, pick = _expand(counts[live[owner], j])
        owner = owner[rep]
        columns = [col[rep] for col in columns]
        columns.append(t.states[z[live[owner], j], pick])
    choices = np.column_stack(columns)
    # Rows share most of their choices (Li and Na are both +1): sum each distinct one once.
    distinct, inverse = np.unique(choices, axis=0, return_inverse=True)
    charge = distinct @ w.T  # (U, S)
    zero = np.abs(charge, out=charge) <= ATOL
    # Any choice of a row: OR the packed rows of its choices (8 amount vectors a byte).
    packed = np.packbits(zero, axis=1)[inverse.reshape(-1)]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    any_zero = np.bitwise_or.reduceat(packed, starts, axis=0)
    out[live[owner[starts]]] = np.unpackbits(any_zero, axis=1, count=n_amounts).astype(bool)
    return out
