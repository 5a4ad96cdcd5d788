"""Distance to the convex hull of the known phases, for many rows at once.

The lower-hull formation energy at a composition x (atomic fractions over the row's
elements S) is the optimum of a small linear program over the known phases whose elements
all lie in S, the elements themselves included at 0 eV/atom:

    minimize  sum_i w_i E_i   subject to  sum_i w_i c_i = x,  w >= 0

(c_i: phase i's atomic fractions over S). The elements alone are a feasible answer, so
the optimum is never above 0, and the optimal w is the decomposition: the fraction of the
row's atoms in each phase (as pymatgen's PhaseDiagram.get_decomposition gives it). The
hull distance of a prediction is ``prediction - E_hull(x)``; a row whose reduced
composition is itself a known phase is measured against the *other* phases, its
decomposition enthalpy (Bartel et al., npj Comput. Mater. 6, 97 (2020)), so a known
stable compound gets a negative value rather than 0.

Random candidate pools put nearly every row in a chemical system of its own, so hulls
are not cached per system: each row gets its own tiny LP (d elements, the few dozen
phases of its subsystems), and all of them are solved together by a revised simplex in
numpy. Rows are grouped by d and by their number of phases (padded to a power of two);
every pivot is one batched step over the whole group: duals (the elements' chemical
potentials) from the basis, reduced costs of all phases, the most negative enters, the
ratio test picks the leaving column. A row needs about d pivots. Rows the simplex cannot
certify (a cycle, an ill-conditioned basis) are solved again by scipy's HiGHS.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from irscreen.composition import SYMBOLS
from irscreen.phases import KnownPhases, is_element, row_hash, sort_by_element, unique_hash_seed

#: A reduced cost below -TOL still improves the hull energy (eV/atom).
TOL = 1e-10
#: Weights below this are degenerate zeros, not part of a decomposition.
MIN_WEIGHT = 1e-9


class _Systems:
    """The chemical systems of a phase table: each one's elements and its range of phases
    (the table is ordered by system), found from a subset of a row's elements by hash."""

    def __init__(self, phases: KnownPhases):
        z = phases.elements  # ordered by chemical system: each system's phases are one run
        self.start = np.flatnonzero(np.r_[True, (z[1:] != z[:-1]).any(1)]) if len(z) else np.zeros(0, np.int64)
        self.count = np.diff(np.r_[self.start, len(z)])
        self.z = z[self.start]
        self.k = (self.z > 0).sum(1)
        self.max_k = int(self.k.max(initial=0))
        self.seed = unique_hash_seed(self.z)
        h = row_hash(self.z, self.seed)
        self.order = np.argsort(h)
        self.sorted_hash = h[self.order]

    def find(self, sub: np.ndarray) -> np.ndarray:
        """Per row of sorted atomic numbers (n, s): the system with exactly those elements, or -1."""
        if not len(self.z):
            return np.full(len(sub), -1)
        h = row_hash(sub, self.seed)
        pos = np.minimum(np.searchsorted(self.sorted_hash, h), len(self.z) - 1)
        i = self.order[pos]
        s = sub.shape[1]
        hit = (self.sorted_hash[pos] == h) & (self.k[i] == s) & (self.z[i, :s] == sub).all(1)
        return np.where(hit, i, -1)


@lru_cache(maxsize=4)  # built once per phase table (a screen offers it every batch)
def _systems(phases: KnownPhases) -> _Systems:
    return _Systems(phases)


def hull_energy(phases: KnownPhases, elements: np.ndarray, fractions: np.ndarray, exclude: np.ndarray | None = None,
                decompose: bool = False):
    """Lower-hull formation energy (eV/atom, <= 0) of ``phases`` at each row's composition.

    ``elements``/``fractions``: (n, k) atomic numbers (0 = padding) and atomic fractions.
    ``exclude``: per row, a phase index to leave out (-1: none), for decomposition enthalpies.
    With ``decompose``, also returns per row the decomposition [(formula, fraction), ...],
    largest first."""
    z, x = sort_by_element(np.asarray(elements), np.asarray(fractions, dtype=np.float64))
    n = len(z)
    d_of = (z > 0).sum(1)
    exclude = np.full(n, -1) if exclude is None else np.asarray(exclude)
    energy = np.zeros(n)
    parts: list = [None] * n if decompose else None
    for d in np.unique(d_of[d_of > 0]):
        rows = np.flatnonzero(d_of == d)
        zd, xd = z[rows, :d], x[rows, :d] / x[rows, :d].sum(1, keepdims=True)
        e, basis_parts = _solve_group(phases, zd, xd, exclude[rows], decompose)
        energy[rows] = e
        if decompose:
            for r, p in zip(rows, basis_parts):
                parts[r] = p
    energy = np.minimum(energy, 0.0)  # the elements bound it; rounding may not lift it above
    return (energy, parts) if decompose else energy


def _pairs(systems: _Systems, phases: KnownPhases, z: np.ndarray, exclude: np.ndarray):
    """Every (row, phase) with the phase's elements a subset of the row's (2+ elements),
    and the phase's fractions in the row's coordinates: (rows, phase ids, (P, d) compositions)."""
    n, d = z.shape
    rows_l, ph_l, comp_l = [], [], []
    for s in range(2, min(d, systems.max_k) + 1):
        for pos in combinations(range(d), s):
            sys = systems.find(z[:, pos])
            hit = np.flatnonzero(sys >= 0)
            if not len(hit):
                continue
            cnt = systems.count[sys[hit]]
            rows = np.repeat(hit, cnt)
            first = np.repeat(systems.start[sys[hit]], cnt)
            ph = first + np.arange(len(rows)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            comp = np.zeros((len(rows), d))
            comp[:, list(pos)] = phases.fractions[ph, :s]
            rows_l.append(rows), ph_l.append(ph), comp_l.append(comp)
    if not rows_l:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, d))
    rows, ph, comp = np.concatenate(rows_l), np.concatenate(ph_l), np.concatenate(comp_l)
    keep = ph != exclude[rows]
    return rows[keep], ph[keep], comp[keep]


def _solve_group(phases: KnownPhases, z: np.ndarray, x: np.ndarray, exclude: np.ndarray, decompose: bool):
    """Rows with the same number of elements d: hull energies and, optionally, decompositions."""
    n, d = z.shape
    energy = np.zeros(n)
    basis_of = np.tile(np.arange(d), (n, 1))  # no phases: the elements are the decomposition
    weights = x.copy()
    phase_of = np.full((n, 0), -1)
    if d >= 2 and len(phases):
        rows, ph, comp = _pairs(_systems(phases), phases, z, exclude)
        m = np.bincount(rows, minlength=n)
        order = np.argsort(rows, kind="stable")
        rows, ph, comp = rows[order], ph[order], comp[order]
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(m) - m, m)
        size = np.where(m > 0, 1 << np.ceil(np.log2(np.maximum(m, 1))).astype(int), 0)
        phase_of = np.full((n, int(size.max(initial=0))), -1)
        phase_of[rows, slot] = ph
        for M in np.unique(size[size > 0]):
            b = np.flatnonzero(size == M)
            local = np.full(n, -1)
            local[b] = np.arange(len(b))
            sel = local[rows] >= 0
            C = np.zeros((len(b), d, M))
            E = np.full((len(b), M), np.inf)  # padding never enters the basis
            C[local[rows[sel]], :, slot[sel]] = comp[sel]
            E[local[rows[sel]], slot[sel]] = phases.energies[ph[sel]]
            energy[b], basis_of[b], weights[b] = simplex(x[b], C, E)
    parts = None
    if decompose:
        parts = []
        for r in range(n):
            items = []
            for col, w in zip(basis_of[r], weights[r]):
                if w > MIN_WEIGHT:
                    name = SYMBOLS[z[r, col]] if col < d else phases.name(int(phase_of[r, col - d]))
                    items.append((name, float(w)))
            parts.append(sorted(items, key=lambda t: (-t[1], t[0])))
    return energy, parts


def simplex(x: np.ndarray, C: np.ndarray, E: np.ndarray):
    """min E.w s.t. [I C] w = x, w >= 0, for n independent rows at once.

    x: (n, d) targets (positive, summing to 1); C: (n, d, M) phase columns (each sums to
    1); E: (n, M) their energies (inf: padding). The identity columns are the elements at
    0. Returns (optimal energies (n,), basis column indices (n, d), basis weights (n, d))."""
    n, d, M = C.shape
    A = np.concatenate([np.broadcast_to(np.eye(d), (n, d, d)), C], axis=2)
    cost = np.concatenate([np.zeros((n, d)), E], axis=1)
    basis = np.tile(np.arange(d), (n, 1))
    todo = np.arange(n)
    bland_after, max_iter = 4 * (d + M), 40 * (d + M)  # Bland's rule cannot cycle
    for it in range(max_iter):
        if not len(todo):
            break
        At, bt = A[todo], basis[todo]
        B = np.take_along_axis(At, bt[:, None, :], axis=2)
        mu = np.linalg.solve(np.swapaxes(B, 1, 2), np.take_along_axis(cost[todo], bt, 1)[..., None])[..., 0]
        red = cost[todo] - np.einsum("td,tdm->tm", mu, At)
        j = red.argmin(1) if it < bland_after else (red < -TOL).argmax(1)
        go = red[np.arange(len(todo)), j] < -TOL
        todo, B, j, bt = todo[go], B[go], j[go], bt[go]
        if not len(todo):
            break
        w = np.linalg.solve(B, x[todo][..., None])[..., 0]
        u = np.linalg.solve(B, A[todo, :, j][..., None])[..., 0]
        ratio = np.where(u > 1e-12, np.maximum(w, 0.0) / np.where(u > 1e-12, u, 1.0), np.inf)
        ties = ratio <= ratio.min(1, keepdims=True)
        leave = np.where(ties, bt, np.iinfo(np.int64).max).argmin(1)  # smallest column among ties
        basis[todo, leave] = j
    energy, weights = _evaluate(A, cost, basis, x)
    bad = np.flatnonzero(_uncertified(A, cost, basis, weights))
    if len(bad):
        energy[bad], basis[bad], weights[bad] = _highs(x[bad], C[bad], E[bad])
    return energy, basis, weights


def _evaluate(A, cost, basis, x):
    B = np.take_along_axis(A, basis[:, None, :], axis=2)
    w = np.linalg.solve(B, x[..., None])[..., 0]
    return (np.take_along_axis(cost, basis, 1) * w).sum(1), w


def _uncertified(A, cost, basis, w) -> np.ndarray:
    """Rows whose final basis is not provably optimal and feasible (to rounding)."""
    B = np.take_along_axis(A, basis[:, None, :], axis=2)
    mu = np.linalg.solve(np.swapaxes(B, 1, 2), np.take_along_axis(cost, basis, 1)[..., None])[..., 0]
    red = cost - np.einsum("nd,ndm->nm", mu, A)
    return (red.min(1) < -1e3 * TOL) | (w.min(1) < -1e-9) | ~np.isfinite(w).all(1)


def _highs(x, C, E):
    """The same LPs one by one with scipy's HiGHS (rows the batched simplex left uncertified)."""
    from scipy.optimize import linprog

    n, d, M = C.shape
    energy, basis, weights = np.zeros(n), np.tile(np.arange(d), (n, 1)), x.copy()
    for r in range(n):
        real = np.flatnonzero(np.isfinite(E[r]))
        A = np.concatenate([np.eye(d), C[r][:, real]], axis=1)
        c = np.concatenate([np.zeros(d), E[r, real]])
        res = linprog(c, A_eq=A, b_eq=x[r], bounds=(0, None), method="highs")
        cols = np.argsort(-res.x)[:d]  # at most d nonzero weights at a vertex
        energy[r] = float(res.fun)
        basis[r] = np.where(cols < d, cols, real[np.maximum(cols - d, 0)] + d)
        weights[r] = res.x[cols]
    return energy, basis, weights


def decomposition_text(parts: list[tuple[str, float]]) -> str:
    """'0.5 Li2O + 0.5 FeO': each phase with the fraction of the row's atoms in it."""
    return " + ".join(f"{w:.4g} {name}" for name, w in parts)


# --------------------------------------------------------------------------- output columns


def known_columns(phases: KnownPhases, elements: np.ndarray, fractions: np.ndarray) -> tuple[dict, np.ndarray]:
    """``known`` (the row's reduced composition is a known phase; a pure element always is,
    at 0 eV/atom) and ``known_value`` (its DFT formation energy, NaN -> null otherwise),
    plus the phase index per row (-1: none) for :func:`hull_columns`."""
    idx = phases.lookup(elements, fractions)
    element = is_element(elements)
    value = np.where(idx >= 0, phases.energies[np.maximum(idx, 0)] if len(phases) else np.nan, np.nan)
    value[element] = 0.0
    return {"known": (idx >= 0) | element, "known_value": value}, idx


def hull_columns(phases: KnownPhases, elements, fractions, prediction, uncertainty, known_idx) -> dict:
    """``hull_distance`` (float32 prediction minus the hull energy, rounded to float32 so that
    ranking agrees with sorting the output) and ``hull_uncertainty`` (the prediction's:
    the known phases are data)."""
    e = hull_energy(phases, elements, fractions, exclude=known_idx)
    pred = np.asarray(prediction, dtype=np.float32).astype(np.float64)
    return {"hull_distance": (pred - e).astype(np.float32), "hull_uncertainty": np.asarray(uncertainty, np.float32)}
