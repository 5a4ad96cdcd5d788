"""Row filters and grouping keys of a screen: element rules before inference (a filtered
row costs no model time), chemical systems and reduced compositions for the caps."""
from __future__ import annotations

import numpy as np

from irscreen.composition import SYMBOLS, Z_OF


def element_filter(elements: np.ndarray, include=(), exclude=(), max_elements: int | None = None) -> np.ndarray:
    """Mask over rows of atomic numbers (n, k; 0 = padding): rows holding every element of
    ``include``, none of ``exclude``, and at most ``max_elements`` distinct elements."""
    keep = np.ones(len(elements), dtype=bool)
    for el in include:
        keep &= (elements == Z_OF[el]).any(axis=1)
    if exclude:
        bad = np.array([Z_OF[e] for e in exclude], dtype=elements.dtype)
        keep &= ~np.isin(elements, bad).any(axis=1)
    if max_elements is not None:
        keep &= (elements != 0).sum(axis=1) <= max_elements
    return keep


def system_and_composition(elements: np.ndarray, fractions: np.ndarray) -> tuple[list[str], list[str]]:
    """Per row: the chemical system ('Fe-Li-O', alphabetical) and the reduced composition
    (system plus atomic fractions to 8 significant digits, so Fe2O3 and Fe4O6 share one)."""
    systems, comps = [], []
    for zs, fs in zip(elements, fractions):
        pairs = sorted((SYMBOLS[z], f) for z, f in zip(zs, fs) if z)
        systems.append("-".join(s for s, _ in pairs))
        comps.append(" ".join(f"{s}{f:.8g}" for s, f in pairs))
    return systems, comps
