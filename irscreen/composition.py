"""Chemical formula parsing: formula strings -> element amounts.

Two entry points:

* :func:`parse_formula` parses one formula into ``{symbol: amount}``.
* :func:`parse_batch` parses many formulas into padded arrays of atomic numbers and
  amounts, the form the featurizer consumes.

The accepted syntax follows pymatgen's ``Composition(formula)``, and the amounts are the
same, bit for bit, wherever pymatgen accepts a formula, with these deliberate differences:

* Only real element symbols (H .. Og) are accepted.  pymatgen reads unknown capitalised
  words such as ``Xx`` as dummy species and maps the isotopes ``D`` and ``T`` to H; here
  all of those are errors ("unknown element 'Xx'").
* Hydrates: a middle dot ``·`` (or ``•``, ``∙``, ``⋅``, ``*``) at the top level separates
  parts, each part after a separator may start with a multiplier, and the parts add up:
  ``CuSO4·5H2O`` is ``CuSO4(H2O)5``.  pymatgen rejects all of these characters.  A plain
  ``.`` is always a decimal point, as in pymatgen: ``CuSO4.5H2O`` has 4.5 oxygen (+1).
* A formula whose amounts add up to zero (``Fe0``) is an error; pymatgen gives an empty
  composition.  Amounts that are not finite (``H1e400``) are errors too.
* Brackets must pair up with their own kind: ``(Fe]2`` is an error (pymatgen turns every
  bracket into a parenthesis first).
* ``@`` (as in ``Y3N@C80``) is accepted only between two parts of a formula; pymatgen
  deletes it wherever it is, so that it reads ``C@l`` as ``Cl``.
* Digits are ASCII only (pymatgen also reads other Unicode digits).

Otherwise, as in pymatgen: ``[]`` and ``{}`` work like parentheses and nest; amounts may
be written ``2``, ``2.``, ``0.5``, ``.5`` or ``1e-3``; whitespace may separate symbols,
amounts and brackets (``Li1 Fe1 P1 O4``); repeated elements add up (``CH3COOH`` is
C2 H4 O2); ``NaN`` is sodium nitride; elements whose total amount is below 1e-8 are
dropped.  Elements are listed in order of first appearance in the formula.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from pymatgen.core.periodic_table import Element

__all__ = ["SYMBOLS", "Z_OF", "FormulaError", "ParsedBatch", "parse_batch", "parse_formula"]

_MAX_Z = 118
SYMBOLS: tuple[str, ...] = ("",) + tuple(Element.from_Z(z).symbol for z in range(1, _MAX_Z + 1))
Z_OF: dict[str, int] = {sym: z for z, sym in enumerate(SYMBOLS) if sym}

# pymatgen's Composition.amount_tolerance: smaller amounts are dropped.
AMOUNT_TOLERANCE = 1e-8

HYDRATE_SEPARATORS = "·•∙⋅*"
_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}
_OPENERS = frozenset(_CLOSER_OF)
_CLOSERS = frozenset(_CLOSER_OF.values())

_SYMBOL_RE = re.compile(r"[A-Z][a-z]*")
# An amount: 2, 2., 2.5, .5, each optionally with an exponent (1e-3).  ASCII digits only.
_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?")


class FormulaError(ValueError):
    """A formula string that cannot be parsed.

    ``formula`` is the value as given, ``reason`` a short lowercase description.
    """

    def __init__(self, formula: Any, reason: str) -> None:
        self.formula = formula
        self.reason = reason
        super().__init__(f"invalid formula {formula!r}: {reason}")

    def __reduce__(self):  # keep it picklable (joblib workers) despite the 2-arg __init__
        return (type(self), (self.formula, self.reason))


# ----------------------------------------------------------------------------------
# Scalar parser
# ----------------------------------------------------------------------------------


def _collapse(tokens: list[tuple[str, float]], factor: float, out: list[tuple[str, float]]) -> None:
    """Merge repeated elements of one group, multiply by the group's factor, append to out.

    Each amount is multiplied before summing, in order, exactly as pymatgen does, so the
    floats come out identical to pymatgen's.
    """
    merged: dict[str, float] = {}
    for sym, amount in tokens:
        merged[sym] = merged.get(sym, 0.0) + amount * factor
    out.extend(merged.items())


def _skip_space(s: str, pos: int) -> int:
    n = len(s)
    while pos < n and s[pos].isspace():
        pos += 1
    return pos


def _read_amount(s: str, pos: int) -> tuple[float, int]:
    """Read an optional amount at pos (after optional whitespace): (amount, new pos)."""
    after_space = _skip_space(s, pos)
    m = _NUMBER_RE.match(s, after_space)
    if m:
        return float(m.group()), m.end()
    if after_space < len(s) and s[after_space] == "-" and _NUMBER_RE.match(s, after_space + 1):
        raise FormulaError(s, "negative amount")
    return 1.0, pos


def parse_formula(formula: str) -> dict[str, float]:
    """Parse one formula: element symbol -> amount (as written, not normalized).

    Elements are in order of first appearance.  Raises :class:`FormulaError` for anything
    that is not a valid formula (and for None: "missing formula").
    """
    if not isinstance(formula, str):
        if formula is None or (isinstance(formula, float) and math.isnan(formula)):
            raise FormulaError(formula, "missing formula")
        raise FormulaError(formula, f"expected a string, got {type(formula).__name__}")
    s = formula
    n = len(s)
    # stack[0] holds the top level; each open bracket (or hydrate part) pushes a list of
    # (symbol, amount) tokens that is collapsed into its parent when it closes.
    stack: list[list[tuple[str, float]]] = [[]]
    brackets: list[str] = []  # open bracket characters, innermost last
    hydrate: tuple[float, str, int] | None = None  # (multiplier, separator, position)
    pos = _skip_space(s, 0)
    if pos == n:
        raise FormulaError(s, "empty formula")
    while True:
        pos = _skip_space(s, pos)
        if pos == n:
            break
        c = s[pos]
        if "A" <= c <= "Z":
            m = _SYMBOL_RE.match(s, pos)
            sym = m.group()
            if sym not in Z_OF:
                raise FormulaError(s, f"unknown element {sym!r}")
            amount, pos = _read_amount(s, m.end())
            stack[-1].append((sym, amount))
        elif c in _OPENERS:
            brackets.append(c)
            stack.append([])
            pos += 1
        elif c in _CLOSERS:
            if not brackets or _CLOSER_OF[brackets[-1]] != c:
                raise FormulaError(s, "unbalanced parenthesis")
            brackets.pop()
            group = stack.pop()
            if not group:
                raise FormulaError(s, "empty parentheses")
            factor, pos = _read_amount(s, pos + 1)
            _collapse(group, factor, stack[-1])
        elif c in HYDRATE_SEPARATORS and not brackets and stack[0]:
            if hydrate is not None:
                part = stack.pop()
                if not part:
                    raise FormulaError(s, f"nothing after {hydrate[1]!r} at position {hydrate[2]}")
                _collapse(part, hydrate[0], stack[0])
            multiplier, after = _read_amount(s, pos + 1)
            hydrate = (multiplier, c, pos)
            pos = after
            stack.append([])
        elif c == "@" and stack[-1] and (nxt := _skip_space(s, pos + 1)) < n and (
            "A" <= s[nxt] <= "Z" or s[nxt] in _OPENERS
        ):
            pos = nxt
        elif c in "0123456789" or (c == "." and _NUMBER_RE.match(s, pos)):
            raise FormulaError(s, f"unexpected number at position {pos}")
        else:
            raise FormulaError(s, f"unexpected character {c!r} at position {pos}")
    if brackets:
        raise FormulaError(s, "unbalanced parenthesis")
    if hydrate is not None:
        part = stack.pop()
        if not part:
            raise FormulaError(s, f"nothing after {hydrate[1]!r} at position {hydrate[2]}")
        _collapse(part, hydrate[0], stack[0])
    totals: list[tuple[str, float]] = []
    _collapse(stack[0], 1.0, totals)
    return _finish(s, dict(totals))


def _finish(formula: str, amounts: dict[str, float]) -> dict[str, float]:
    """Final checks shared by every formula: finite, drop tiny amounts, nonzero total."""
    if not all(math.isfinite(a) for a in amounts.values()):
        raise FormulaError(formula, "amount too large")
    kept = {sym: a for sym, a in amounts.items() if a >= AMOUNT_TOLERANCE}
    if not kept:
        raise FormulaError(formula, "total amount is zero")
    if not math.isfinite(sum(kept.values())):
        raise FormulaError(formula, "amount too large")
    return kept


# ----------------------------------------------------------------------------------
# Batch parser
# ----------------------------------------------------------------------------------
#
# Screening parses millions of distinct formulas, so caching cannot help and a Python
# loop over parse_formula (a few microseconds per formula) would dominate the run time.
# Almost every real formula has the plain shape "symbol, optional amount, repeated"
# (Li2Fe0.5Mn0.5PO4); for those, polars' Rust string kernels split all formulas at once
# and numpy does the rest column-wise.  Everything else (brackets, hydrates, whitespace
# inside, exponents, and every error) goes through parse_formula, which stays the
# reference: the fast path only accepts strings on which both give identical results,
# and sends any row it is unsure of (unknown symbol, huge or vanishing amounts) back to
# parse_formula.

# Whole-string match of the plain shape (ASCII whitespace allowed only around it).
_FAST_PATTERN = r"^[ \t\r\n]*(?:[A-Z][a-z]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)?)+[ \t\r\n]*$"
# One "symbol + amount" token of a string that matched _FAST_PATTERN.
_TOKEN_PATTERN = r"[A-Z][a-z]?[0-9.]*"
_SYMBOL_ENUM = pl.Enum(list(SYMBOLS[1:]))  # physical index = Z - 1
# Amounts above this go to parse_formula, which decides whether their sum overflows.
_FAST_MAX_AMOUNT = 1e300
# Longer formulas go to parse_formula: the repeat search below is quadratic in the width.
_FAST_MAX_TOKENS = 16


@dataclass
class ParsedBatch:
    """Parsed formulas as padded arrays, one row per input formula.

    ``elements[i, j]`` is the atomic number of the j-th element of formula i (order of
    first appearance, 0 = padding), ``amounts[i, j]`` its amount as written (0.0 for
    padding).  Invalid rows are all padding and ``errors[i]`` holds the FormulaError
    message; it is None for valid rows.
    """

    elements: np.ndarray  # (n, k) int16
    amounts: np.ndarray  # (n, k) float64
    errors: list[str | None]

    @property
    def n_rows(self) -> int:
        return int(self.elements.shape[0])

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the valid rows (a valid row has at least one element)."""
        return self.elements[:, 0] != 0

    def fractions(self) -> np.ndarray:
        """Amounts divided by their row sums (atomic fractions); 0 for invalid rows."""
        totals = self.amounts.sum(axis=1, keepdims=True)
        out = np.zeros_like(self.amounts)
        np.divide(self.amounts, totals, out=out, where=totals > 0)
        return out


def _missing_message() -> str:
    return str(FormulaError(None, "missing formula"))


def _to_series(formulas: Any) -> tuple[pl.Series, dict[int, str]]:
    """Input -> (String Series, {row: error} for non-string items that became null)."""
    if type(formulas).__module__.startswith("pyarrow"):
        formulas = pl.Series(pl.from_arrow(formulas))
    elif isinstance(formulas, np.ndarray):
        if formulas.ndim != 1:
            raise ValueError(f"formulas must be one-dimensional, got shape {formulas.shape}")
        formulas = pl.Series(formulas) if formulas.dtype.kind == "U" else formulas.tolist()
    if isinstance(formulas, pl.Series):
        if formulas.dtype == pl.Null or isinstance(formulas.dtype, (pl.Categorical, pl.Enum)):
            formulas = formulas.cast(pl.String)
        if formulas.dtype != pl.String:
            raise TypeError(f"formulas must be strings, got a column of {formulas.dtype}")
        return formulas, {}
    values = formulas if isinstance(formulas, list) else list(formulas)
    try:
        return pl.Series(values, dtype=pl.String, strict=True), {}
    except (TypeError, ValueError, pl.exceptions.PolarsError):
        pass
    # Mixed content: each non-string item is an error row of its own.
    cleaned: list[str | None] = []
    pre_errors: dict[int, str] = {}
    for i, value in enumerate(values):
        if isinstance(value, str):
            cleaned.append(value)
            continue
        cleaned.append(None)
        try:
            parse_formula(value)
        except FormulaError as exc:
            pre_errors[i] = str(exc)
    return pl.Series(cleaned, dtype=pl.String), pre_errors


def _parse_fast(s: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized parse of strings that all match _FAST_PATTERN.

    Returns (elements (m, k) int16, amounts (m, k) float64, needs_scalar (m,) bool); rows
    flagged needs_scalar must be parsed by parse_formula instead (their array rows are
    meaningless).
    """
    m = len(s)
    tokens = s.str.extract_all(_TOKEN_PATTERN)
    lengths = tokens.list.len().to_numpy().astype(np.int64)
    flat = tokens.explode()
    too_long = lengths > _FAST_MAX_TOKENS
    if too_long.any():
        flat = flat.filter(pl.Series(np.repeat(~too_long, lengths)))
        lengths[too_long] = 0
    symbols = flat.str.strip_chars_end("0123456789.")
    # Unknown symbols ("Xx") become null, then Z = 0.
    z_flat = (symbols.cast(_SYMBOL_ENUM, strict=False).to_physical().cast(pl.Int16) + 1).fill_null(0).to_numpy()
    # The amount is what follows the symbol; "" (no amount) casts to null, i.e. 1.
    a_flat = (
        pl.select(pl.lit(flat).str.slice(pl.lit(symbols).str.len_bytes()))
        .to_series()
        .cast(pl.Float64, strict=False)
        .fill_null(1.0)
        .to_numpy()
    )

    # Scatter the tokens into (m, width) arrays, in formula order.
    width = max(int(lengths.max()), 1)
    starts = np.cumsum(lengths) - lengths
    flat_pos = np.arange(len(z_flat)) + np.repeat(np.arange(m) * width - starts, lengths)
    z = np.zeros((m, width), dtype=np.int16)
    a = np.zeros((m, width), dtype=np.float64)
    z.ravel()[flat_pos] = z_flat
    a.ravel()[flat_pos] = a_flat
    used = np.arange(width) < lengths[:, None]

    needs_scalar = too_long | ((z == 0) & used).any(axis=1) | (a > _FAST_MAX_AMOUNT).any(axis=1)

    # first[:, j] = column of the first occurrence of element z[:, j] in its row.
    cols = np.arange(width)
    first = np.broadcast_to(cols, (m, width)).copy()
    for j in range(1, width):
        for i in range(j - 1, -1, -1):  # descending, so the smallest i wins
            first[(z[:, i] == z[:, j]) & (z[:, j] != 0), j] = i
    has_repeats = bool((first != cols).any())
    has_tiny = bool(((a < AMOUNT_TOLERANCE) & used).any())
    if not (has_repeats or has_tiny):
        return z, a, needs_scalar

    # Sum repeated elements into their first column, left to right like parse_formula,
    # then drop tiny totals and close the gaps.
    rows = np.arange(m)
    summed = np.zeros_like(a)
    for j in range(width):
        summed[rows, first[:, j]] += a[:, j]
    keep = (first == cols) & used & (summed >= AMOUNT_TOLERANCE)
    needs_scalar |= ~keep.any(axis=1)  # nothing left: parse_formula gives the error
    new_col = np.cumsum(keep, axis=1) - 1
    r, c = np.nonzero(keep)
    k = max(int(new_col[:, -1].max()) + 1, 1)
    z2 = np.zeros((m, k), dtype=np.int16)
    a2 = np.zeros((m, k), dtype=np.float64)
    z2[r, new_col[r, c]] = z[r, c]
    a2[r, new_col[r, c]] = summed[r, c]
    return z2, a2, needs_scalar


def parse_batch(formulas: Any) -> ParsedBatch:
    """Parse many formulas (list, numpy array, polars Series or pyarrow array of str).

    Never raises for bad formulas: invalid rows (None included, "missing formula") get
    their message in ``errors`` and all-padding array rows.
    """
    s, pre_errors = _to_series(formulas)
    n = len(s)
    errors: list[str | None] = [None] * n

    is_fast = s.str.contains(_FAST_PATTERN).fill_null(False).to_numpy()
    fast_rows = np.flatnonzero(is_fast)
    if len(fast_rows):
        fz, fa, redo = _parse_fast(s.filter(pl.Series(is_fast)))
    else:
        fz, fa, redo = np.zeros((0, 1), np.int16), np.zeros((0, 1)), np.zeros(0, bool)

    scalar_rows = np.sort(np.concatenate([np.flatnonzero(~is_fast), fast_rows[redo]]))
    scalar_results: list[tuple[int, dict[str, float]]] = []
    missing = _missing_message()
    for row, value in zip(scalar_rows.tolist(), s.gather(scalar_rows).to_list()):
        if value is None:
            errors[row] = pre_errors.get(row, missing)
            continue
        try:
            scalar_results.append((row, parse_formula(value)))
        except FormulaError as exc:
            errors[row] = str(exc)

    good = ~redo
    fz, fa = fz[good], fa[good]
    fast_width = int(np.flatnonzero(fz.any(axis=0)).max(initial=-1)) + 1  # rows are left-packed
    k = max([1, fast_width] + [len(d) for _, d in scalar_results])
    elements = np.zeros((n, k), dtype=np.int16)
    amounts = np.zeros((n, k), dtype=np.float64)
    elements[fast_rows[good], :fast_width] = fz[:, :fast_width]
    amounts[fast_rows[good], :fast_width] = fa[:, :fast_width]
    for row, parsed in scalar_results:
        width = len(parsed)
        elements[row, :width] = [Z_OF[sym] for sym in parsed]
        amounts[row, :width] = list(parsed.values())
    return ParsedBatch(elements=elements, amounts=amounts, errors=errors)
