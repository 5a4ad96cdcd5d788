"""screen's cascade: a cheap student on every row, the ensemble only where it matters.

A top-1000 out of a million needs the accurate ensemble on a few percent of the rows at
most: the rest score so far from the cutoff that they cannot make the shortlist. Each
bundle may carry a student (:mod:`irscreen.models.student`) with a bound ``d`` on its
disagreement with the ensemble, for the mean and for sigma. Every objective's score
(:mod:`irscreen.screening.objectives`) moves by at most 1 when the mean moves by 1 and by
at most ``|kappa|`` when sigma does, so::

    ensemble score >= student score - (d_mean + |kappa| * d_sigma)   (the row's lower bound)

How far above its ensemble score a row's student score may lie (the slack) comes from
the student's bounds (:meth:`Student.bound`): its largest over- and underestimates of the
mean and of sigma, measured by region of the ensemble mean. For kappa >= 0 only rows
whose ensemble mean lies in a known region can score at or below a cutoff c (minimize:
mean <= c; maximize: mean >= -c; target V: |mean - V| <= c; a hull distance is never below
its prediction), so the bound of that region is enough, and only the side that matters:
rows the student *over*rates (for minimize) cannot be missed. A row whose student score
minus the slack is above the running cutoff (the K-th best exact score) cannot enter the
shortlist. The cascade walks a batch's rows from the lowest student score up, runs the
ensemble on a chunk at a time, offers the exact rows to the top-K (which lowers the
cutoff, and with it the slack), and stops where the next row is out of reach. Every
number in the shortlist comes from the ensemble; a row's numbers do not depend on which
rows share its inference call (:meth:`Model.predict_members`), so the shortlist equals the
one the ensemble on every row gives, for as long as the bounds hold. Conditions
(``--where``) work the same way with the condition model's student: a row whose condition
fails by more than the bound is dropped, any other is decided by the ensemble.

Rows flagged as extrapolation (an element the bundle rarely saw) always go to the ensemble:
the student is least trustworthy exactly there. ``--exact`` turns the cascade off.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Rows per ensemble chunk: big enough for whole 512-row inference calls, small enough
#: that the cutoff tightens quickly within a batch.
CHUNK_ROWS = 2048


def _kappa_term(b: dict, kappa: float) -> float:
    """kappa x the sigma bound on the side that raises the student's score above the
    ensemble's: kappa > 0 is hurt by an overestimated sigma, kappa < 0 by an underestimated one."""
    return kappa * b["sigma_over"] if kappa >= 0 else -kappa * b["sigma_under"]


def score_slack(student, objective: str, kappa: float, value, precision: str, cutoff: float) -> float:
    """How far below its student score the ensemble score of a row that can still score
    <= ``cutoff`` may lie."""
    lo, hi = -np.inf, np.inf
    if kappa >= 0 and np.isfinite(cutoff):  # the region of means such a row can have
        if objective == "minimize":
            hi = cutoff
        elif objective == "maximize":
            lo = -cutoff
        else:
            lo, hi = value - cutoff, value + cutoff
    b = student.bound(precision, lo, hi)
    if objective == "minimize":  # score = mean + kappa sigma
        return b["mean_over"] + _kappa_term(b, kappa)
    if objective == "maximize":  # score = -mean + kappa sigma
        return b["mean_under"] + _kappa_term(b, kappa)
    # target: | |s - V| - |e - V| | <= |s - e|
    return max(b["mean_over"], b["mean_under"]) + _kappa_term(b, kappa)


def condition_slack(student, cond, kappa: float, precision: str) -> float:
    """How far the tested value (mean -/+ kappa sigma) of a row that meets ``cond`` may lie
    on the passing side of its student's guess."""
    if cond.op in (">", ">="):  # tested: mean - kappa sigma; a passing row has mean >= value (kappa >= 0)
        b = student.bound(precision, lo=cond.value if kappa >= 0 else -np.inf)
        return b["mean_under"] + _kappa_term(b, kappa)
    b = student.bound(precision, hi=cond.value if kappa >= 0 else np.inf)  # mean + kappa sigma; mean <= value
    return b["mean_over"] + _kappa_term(b, kappa)


def walk(guess: np.ndarray, slack: Callable[[float], float], evaluate: Callable[[np.ndarray], None],
         cutoff: Callable[[], float], chunk: int = CHUNK_ROWS) -> int:
    """Evaluate rows (indices into ``guess``, the student scores; -inf: always) a chunk at
    a time, lowest first, while the next one is within ``slack(cutoff())`` of the cutoff;
    returns how many rows were evaluated. ``evaluate(rows)`` runs the ensemble on them and
    offers them to the top-K (so the cutoff, and the slack with it, can only fall)."""
    order = np.argsort(guess, kind="stable")
    done = evaluated = 0
    while done < len(order):
        c = cutoff()
        take = order[done : done + chunk]
        take = take[guess[take] - slack(c) <= c]  # sorted: a prefix of the chunk is still in reach
        if len(take):
            evaluate(np.sort(take))  # input order within a call: ties are broken by row number anyway
            evaluated += len(take)
        if len(take) < chunk:
            break
        done += chunk
    return evaluated
