"""screen's cascade: a cheap student on every row, the ensemble only where it matters.

A top-1000 out of a million needs the accurate ensemble on a few percent of the rows at
most: the rest score so far from the cutoff that they cannot make the shortlist. Each
bundle may carry a student (:mod:`irscreen.models.student`) with a bound ``d`` on its
disagreement with the ensemble, for the mean and for sigma. Every objective's score
(:mod:`irscreen.screening.objectives`) moves by at most 1 when the mean moves by 1 and by
at most ``|kappa|`` when sigma does, so::

    ensemble score >= student score - (d_mean + |kappa| * d_sigma)   (the row's lower bound)

A row whose lower bound is above the running cutoff (the K-th best exact score) cannot
enter the shortlist. The cascade walks a batch's rows from the lowest lower bound up, runs
the ensemble on a chunk at a time, offers the exact rows to the top-K (which lowers the
cutoff), and stops where the next lower bound is above the cutoff. Every number in the
shortlist comes from the ensemble; a row's numbers do not depend on which rows share its
inference call (:meth:`Model.predict_members`), so the shortlist equals the one the
ensemble on every row gives, for as long as the bound holds. Conditions (``--where``)
work the same way with the condition model's student: a row whose condition fails by more
than the bound is dropped, any other is decided by the ensemble.

Rows flagged as extrapolation (an element the bundle rarely saw) always go to the ensemble:
the student is least trustworthy exactly there. ``--exact`` turns the cascade off.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Rows per ensemble chunk: big enough for whole 512-row inference calls, small enough
#: that the cutoff tightens quickly within a batch.
CHUNK_ROWS = 2048


def slack(student, precision: str, kappa: float) -> float:
    """How much better than its student score a row's ensemble score can be."""
    d_mean, d_sigma = student.bound(precision)
    return d_mean + abs(kappa) * d_sigma


def walk(lower: np.ndarray, evaluate: Callable[[np.ndarray], None], cutoff: Callable[[], float],
         chunk: int = CHUNK_ROWS) -> int:
    """Evaluate rows (indices into ``lower``) a chunk at a time, lowest lower bound first,
    while the next row's lower bound is at or below ``cutoff()``; returns how many rows
    were evaluated. ``evaluate(rows)`` runs the ensemble on them and offers them to the
    top-K (so ``cutoff()`` can only fall between calls)."""
    order = np.argsort(lower, kind="stable")
    done = evaluated = 0
    while done < len(order):
        take = order[done : done + chunk]
        take = take[lower[take] <= cutoff()]  # sorted: a prefix of the chunk is still in reach
        if len(take):
            evaluate(np.sort(take))  # input order within a call: ties are broken by row number anyway
            evaluated += len(take)
        if len(take) < chunk:
            break
        done += chunk
    return evaluated
