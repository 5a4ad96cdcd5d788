"""What a screen ranks by: one scoring rule per objective, lower is better.

    minimize        mean + kappa * sigma
    maximize        -(mean - kappa * sigma)
    target value V  |mean - V| + kappa * sigma

kappa > 0 is conservative (an uncertain row must be better by kappa sigmas to rank as
high), kappa < 0 optimistic. sigma is the bundle's calibrated uncertainty. Ties are
broken by input order (the running top-K does that). Adding an objective means adding
one entry here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray, np.ndarray, float, "float | None"], np.ndarray]

OBJECTIVES: dict[str, ScoreFn] = {
    "minimize": lambda mean, sigma, kappa, value: mean + kappa * sigma,
    "maximize": lambda mean, sigma, kappa, value: -(mean - kappa * sigma),
    "target": lambda mean, sigma, kappa, value: np.abs(mean - value) + kappa * sigma,
}

#: Objectives that need a value (``--target-value``).
NEEDS_VALUE = frozenset({"target"})


def score(objective: str, mean: np.ndarray, sigma: np.ndarray, kappa: float = 0.0,
          value: float | None = None) -> np.ndarray:
    """float64 scores, lower is better."""
    mean = np.asarray(mean, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.asarray(OBJECTIVES[objective](mean, sigma, kappa, value), dtype=np.float64)
