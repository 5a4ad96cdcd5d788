"""``screen --where "MODEL OP VALUE"``: conditions on another model's prediction.

A screen ranks by one model (``--model``) and may require others to agree: ``--where
"band-gap >= 1.0"`` keeps only rows whose band-gap prediction is at least 1.0. The
text, the comparison and the uncertainty rule live here, in one place, so that the
CLI, the Python API, the resume identity and the Dask workers read a condition the
same way, and the tests can state the rule once.

``kappa`` (the screen's ``--kappa``) applies to conditions as it does to the ranking:
for kappa > 0 a condition holds only when it holds ``kappa`` sigmas away from the mean,
on the side that makes it harder (``>=``: mean - kappa*sigma >= value; ``<=``: mean +
kappa*sigma <= value); kappa < 0 is the optimistic reading, the same formula. The mean
and sigma are the float32 values the output shows (widened to float64, as the ranking
score is), so a condition agrees with filtering the written columns.

A row failing a condition is left out of the shortlist and counted; it is not a reject
(rejects are input rows that cannot be featurized).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from irscreen.errors import IrscreenError

#: The comparisons a condition may use, longest first (so ``<=`` is not read as ``<``).
OPS = ("<=", ">=", "<", ">")
FORM = 'expected "MODEL OP VALUE" with OP one of <, <=, >, >= (e.g. --where "band-gap >= 1.0")'
_TEXT = re.compile(r"^\s*(?P<model>.*?)\s*(?P<op><=|>=|=<|=>|==|!=|<|>|=)\s*(?P<value>.*?)\s*$", re.S)


@dataclass(frozen=True)
class Condition:
    """``model op value``. ``model`` is the text the user gave (a shipped bundle's name or
    a bundle directory); ``column`` and ``sigma_column`` the output columns holding that
    model's prediction and uncertainty, set once a run has loaded its models (``bound``)."""

    model: str
    op: str
    value: float
    column: str = ""
    sigma_column: str = ""

    @classmethod
    def parse(cls, text: str) -> "Condition":
        """``"band-gap >= 1.0"`` (spaces optional) -> Condition; IrscreenError saying what is wrong."""
        if isinstance(text, Condition):
            return text
        text = str(text)
        bad = f"malformed --where {text!r}"
        m = _TEXT.match(text)
        if m is None:
            raise IrscreenError(f"{bad}: no comparison; {FORM}")
        model, op, value = m.group("model"), m.group("op"), m.group("value")
        if op not in OPS:
            raise IrscreenError(f"{bad}: {op!r} is not a comparison irscreen knows; {FORM}")
        if any(c in model + value for c in "<>=!"):
            raise IrscreenError(f"{bad}: one comparison per --where (give --where once per condition); {FORM}")
        if not model:
            raise IrscreenError(f"{bad}: no model before {op!r}; {FORM}")
        if not value:
            raise IrscreenError(f"{bad}: no value after {op!r}; {FORM}")
        try:
            number = float(value)
        except ValueError:
            raise IrscreenError(f"{bad}: {value!r} is not a number; {FORM}") from None
        if not math.isfinite(number):
            raise IrscreenError(f"{bad}: the value must be a finite number, not {value!r}; {FORM}")
        return cls(model, op, number)

    def __str__(self) -> str:
        return f"{self.model} {self.op} {self.value!r}"  # repr: the shortest text that reads back exactly

    def bound(self, column: str, sigma_column: str) -> "Condition":
        """This condition, tested on the output columns ``column`` (mean) and ``sigma_column``."""
        return Condition(self.model, self.op, self.value, column, sigma_column)

    def holds(self, mean: np.ndarray, sigma: np.ndarray, kappa: float = 0.0) -> np.ndarray:
        """Per row: does the condition hold ``kappa`` sigmas away from the mean (bool array)?"""
        mean = np.asarray(mean, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if self.op in (">", ">="):
            bound = mean - kappa * sigma  # a lower bound must clear the value
            return bound > self.value if self.op == ">" else bound >= self.value
        bound = mean + kappa * sigma  # an upper bound must stay under it
        return bound < self.value if self.op == "<" else bound <= self.value


    def cannot_hold(self, mean: np.ndarray, sigma: np.ndarray, kappa: float, slack: float) -> np.ndarray:
        """Per row: does the condition fail even if the tested value (mean -/+ kappa sigma)
        is ``slack`` further on the passing side? The cascade's test on a student's guess
        (:mod:`irscreen.screening.cascade`): such a row needs no ensemble."""
        mean = np.asarray(mean, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        slack = slack + 1e-6 * (1.0 + abs(self.value))  # and float32 rounding of the shown values
        if self.op in (">", ">="):
            best = mean - kappa * sigma + slack  # the highest the tested value can be
            return best <= self.value if self.op == ">" else best < self.value
        best = mean + kappa * sigma - slack  # the lowest it can be
        return best >= self.value if self.op == "<" else best > self.value


def parse_all(texts) -> list[Condition]:
    """Every condition of a run, parsed (a single string is one condition)."""
    if isinstance(texts, (str, Condition)):
        texts = [texts]
    return [Condition.parse(t) for t in texts or ()]


def all_hold(conditions, cols: dict[str, np.ndarray], kappa: float = 0.0) -> np.ndarray:
    """Per row of ``cols`` (output columns by name): does every (bound) condition hold?
    Tested on the float32 values the output shows."""
    ok = np.ones(len(next(iter(cols.values()))), dtype=bool)
    for c in conditions:
        mean = cols[c.column].astype(np.float32).astype(np.float64)
        sigma = cols[c.sigma_column].astype(np.float32).astype(np.float64)
        ok &= c.holds(mean, sigma, kappa)
    return ok
