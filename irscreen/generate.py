"""Enumerate hypothetical compositions over a set of elements, for screening.

The space is every reduced integer formula over the given elements with between
``min_elements`` and ``max_elements`` distinct elements and at most ``max_atoms`` atoms:
amounts are positive integers whose greatest common divisor is 1, so each composition
appears exactly once (``Li2O2`` is not written, ``LiO`` is).  Formulas list their
elements in the order they were given (``--elements Li,Fe,O`` gives ``LiFeO2``, never
``FeLiO2``) and an amount of 1 is left out (``Li2FeO3``); every formula parses with
:func:`irscreen.composition.parse_formula` to exactly its integer amounts.

Output order: by number of elements, then by element subset (lexicographic in the
given order), then by total atoms, then by amounts.  Columns: ``formula`` (string),
``n_elements`` (int8) and ``n_atoms`` (int16, the atoms of the reduced formula).

Charge balance (``charge_balanced=True``) keeps a composition when some choice of one
oxidation state per element from pymatgen's ``Element.common_oxidation_states`` makes
the total charge zero: :func:`irscreen.chemistry.charge_balanced_outer`, the test of
the "compound possible" feature, so every charge-balanced composition written here has
"compound possible" = 1 and every one dropped has 0.  As in that feature, a single
element counts as balanced (possible only with ``min_elements=1``), and an element
without common oxidation states (He, Ne, Ar, Rn, Z >= 105) never takes part in a
balanced compound.  SMACT is not used.

Sampling (``limit``): a uniform random subset of exactly ``limit`` rows of the
(filtered) enumeration, chosen by Floyd's algorithm from ``seed``, written in
enumeration order.  Only the chosen row positions are held in memory (8 bytes each);
with ``charge_balanced`` the enumeration is walked twice, first to count the balanced
rows.  A ``limit`` at or above the size of the space writes the whole space.

Everything is vectorized with numpy: the stoichiometry vectors for k elements are
computed once, each block of element subsets is crossed with them (and tested for charge
balance against all of them at once), and the formula strings are assembled byte-wise
straight into an Arrow string array.
"""
from __future__ import annotations

import itertools
import math
import os
from functools import cache
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from irscreen.chemistry import charge_balanced_outer
from irscreen.composition import Z_OF
from irscreen.errors import IrscreenError

__all__ = ["SCHEMA", "count_compositions", "iter_compositions", "sample_formulas", "write_compositions"]

SCHEMA = pa.schema([("formula", pa.string()), ("n_elements", pa.int8()), ("n_atoms", pa.int16())])

DEFAULT_BATCH_ROWS = 200_000
# Stoichiometry vectors held per subset size: C(max_atoms, k) before the gcd filter.
MAX_STOICHIOMETRIES = 5_000_000
# Rows turned into strings at once (keeps each Arrow string array far below 2 GiB).
_STRING_PIECE_ROWS = 1 << 20


# --------------------------------------------------------------------------- validation


class _Space:
    """A validated enumeration space."""

    __slots__ = ("symbols", "k_min", "k_max", "max_atoms")

    def __init__(self, symbols: tuple[str, ...], k_min: int, k_max: int, max_atoms: int):
        self.symbols = symbols
        self.k_min = k_min
        self.k_max = k_max  # effective: at most len(symbols) and max_atoms
        self.max_atoms = max_atoms


def _positive(option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise IrscreenError(f"{option} must be a positive integer, got {value!r}")
    if value < 1:
        raise IrscreenError(f"{option} must be a positive integer, got {int(value)}")
    return int(value)


def _symbols(elements: str | Iterable[str]) -> tuple[str, ...]:
    items = elements.split(",") if isinstance(elements, str) else list(elements)
    symbols: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise IrscreenError(f"--elements must be element symbols, got {item!r}")
        sym = item.strip()
        if not sym:
            continue
        if sym not in Z_OF:
            raise IrscreenError(f"unknown element {sym!r} in --elements")
        if sym in symbols:
            raise IrscreenError(f"duplicate element {sym!r} in --elements")
        symbols.append(sym)
    return tuple(symbols)


def _space(elements, max_elements, max_atoms, min_elements) -> _Space:
    max_elements = _positive("--max-elements", max_elements)
    max_atoms = _positive("--max-atoms", max_atoms)
    min_elements = _positive("--min-elements", min_elements)
    symbols = _symbols(elements)
    if not symbols:
        raise IrscreenError("--elements is empty: give element symbols such as Li,Fe,O")
    if len(symbols) < min_elements:
        raise IrscreenError(
            f"--elements lists {len(symbols)} element{'s' if len(symbols) != 1 else ''} "
            f"but --min-elements is {min_elements}"
        )
    if max_elements < min_elements:
        raise IrscreenError(f"--max-elements ({max_elements}) is smaller than --min-elements ({min_elements})")
    if max_atoms < min_elements:
        raise IrscreenError(
            f"--max-atoms ({max_atoms}) is smaller than --min-elements ({min_elements}): "
            "every element needs at least one atom"
        )
    return _Space(symbols, min_elements, min(max_elements, len(symbols), max_atoms), max_atoms)


# --------------------------------------------------------------------------- counting


def _mobius(n: int) -> list[int]:
    """mu(0..n) by a linear sieve (mu(0) unused)."""
    mu = [1] * (n + 1)
    is_composite = [False] * (n + 1)
    primes: list[int] = []
    for i in range(2, n + 1):
        if not is_composite[i]:
            primes.append(i)
            mu[i] = -1
        for p in primes:
            if i * p > n:
                break
            is_composite[i * p] = True
            if i % p == 0:
                mu[i * p] = 0
                break
            mu[i * p] = -mu[i]
    return mu


def _n_stoichiometries(k: int, max_atoms: int, mu: list[int]) -> int:
    """Positive integer k-vectors with sum <= max_atoms and gcd 1 (Moebius inversion:
    the vectors whose entries are all multiples of d number C(floor(max_atoms / d), k))."""
    return sum(mu[d] * math.comb(max_atoms // d, k) for d in range(1, max_atoms // k + 1) if mu[d])


def _count(space: _Space) -> int:
    mu = _mobius(space.max_atoms)
    n = len(space.symbols)
    return sum(
        math.comb(n, k) * _n_stoichiometries(k, space.max_atoms, mu) for k in range(space.k_min, space.k_max + 1)
    )


def count_compositions(elements, max_elements: int = 4, max_atoms: int = 12, min_elements: int = 2) -> int:
    """Exact number of compositions in the space, before any charge-balance filter.

    Closed form (no enumeration), so it is instant for any space.
    """
    return _count(_space(elements, max_elements, max_atoms, min_elements))


def _check_size(space: _Space) -> None:
    """Refuse spaces whose stoichiometry table for one subset size would not fit."""
    for k in range(max(space.k_min, 2), space.k_max + 1):
        n = math.comb(space.max_atoms, k)
        if n > MAX_STOICHIOMETRIES:
            raise IrscreenError(
                f"--max-atoms {space.max_atoms} with {k} elements allows {n:,} amount vectors per element "
                f"subset (at most {MAX_STOICHIOMETRIES:,}); lower --max-atoms or --max-elements"
            )


# --------------------------------------------------------------------------- building blocks


@cache
def _stoichiometries(k: int, max_atoms: int) -> np.ndarray:
    """All positive integer k-vectors with sum <= max_atoms and gcd 1, (S, k) int16,
    sorted by total atoms, then by amounts; read-only."""
    if k == 1:
        out = np.ones((1, 1), dtype=np.int16)
    else:
        n = math.comb(max_atoms, k)
        # Positive vectors with sum <= A <-> strictly increasing partial sums in 1..A.
        cuts = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(1, max_atoms + 1), k)),
            dtype=np.int32,
            count=n * k,
        ).reshape(n, k)
        amounts = np.diff(cuts, axis=1, prepend=0)
        amounts = amounts[np.gcd.reduce(amounts, axis=1) == 1]
        order = np.lexsort(tuple(amounts[:, j] for j in range(k - 1, -1, -1)) + (amounts.sum(axis=1),))
        out = amounts[order].astype(np.int16)
    out.setflags(write=False)
    return out


def _subset_blocks(n: int, k: int, per_block: int) -> Iterator[np.ndarray]:
    """k-subsets of range(n) in lexicographic order, as (s, k) int32 blocks of <= per_block."""
    it = itertools.combinations(range(n), k)
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(it, per_block)), dtype=np.int32)
        if flat.size == 0:
            return
        yield flat.reshape(-1, k)


def _token_ids(subsets: np.ndarray, stoich: np.ndarray, max_atoms: int, k_max: int) -> np.ndarray:
    """(R, k_max) int32 token ids (see _Tokens) for rows (subsets[i], stoich[i])."""
    out = np.zeros((subsets.shape[0], k_max), dtype=np.int32)
    out[:, : subsets.shape[1]] = 1 + subsets * max_atoms + (stoich.astype(np.int32) - 1)
    return out


class _Tokens:
    """"<symbol><amount>" byte strings for every (element, amount), as a gather table.

    Token 0 is empty (padding for formulas with fewer than k_max elements); token
    1 + e * A + (a - 1) is element e with amount a.
    """

    def __init__(self, symbols: Sequence[str], max_atoms: int):
        self.max_atoms = max_atoms
        texts = [b""] + [
            (sym + (str(a) if a > 1 else "")).encode("ascii") for sym in symbols for a in range(1, max_atoms + 1)
        ]
        words = -(-max(len(t) for t in texts) // 8)
        table = np.zeros((len(texts), words * 8), dtype=np.uint8)
        for i, t in enumerate(texts):
            table[i, : len(t)] = np.frombuffer(t, dtype=np.uint8)
        self.table = table.view(np.uint64)  # (T, words): one gather moves 8 bytes
        self.lengths = np.array([len(t) for t in texts], dtype=np.int32)

    def strings(self, ids: np.ndarray) -> pa.Array | pa.ChunkedArray:
        pieces = [self._strings(ids[i : i + _STRING_PIECE_ROWS]) for i in range(0, ids.shape[0], _STRING_PIECE_ROWS)]
        if len(pieces) == 1:
            return pieces[0]
        return pa.chunked_array(pieces, type=pa.string())

    def _strings(self, ids: np.ndarray) -> pa.Array:
        n = ids.shape[0]
        raw = self.table[ids].view(np.uint8).reshape(n, -1)  # tokens side by side, NUL padded
        data = raw[raw != 0]  # row-major: each formula's bytes in order
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(self.lengths[ids].sum(axis=1, dtype=np.int64), out=offsets[1:])
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


# --------------------------------------------------------------------------- enumeration


def _blocks(space: _Space, charge_balanced: bool, rows_per_block: int):
    """Yield (subsets (s, k), stoich (S, k), mask (s, S) bool or None, n_rows) in
    enumeration order; mask None means every row is kept."""
    n = len(space.symbols)
    z = np.array([Z_OF[sym] for sym in space.symbols])
    for k in range(space.k_min, space.k_max + 1):
        stoich = _stoichiometries(k, space.max_atoms)
        per_block = max(1, rows_per_block // stoich.shape[0])
        for subsets in _subset_blocks(n, k, per_block):
            if not charge_balanced:
                yield subsets, stoich, None, subsets.shape[0] * stoich.shape[0]
            else:
                mask = charge_balanced_outer(z[subsets], stoich)
                yield subsets, stoich, mask, int(np.count_nonzero(mask))


def _rows(space: _Space, charge_balanced: bool, batch_rows: int, positions: np.ndarray | None):
    """Yield (ids (R, k_max) int32, n_elements (R,) int8, n_atoms (R,) int16) chunks;
    positions (sorted, in the filtered enumeration) selects rows when given."""
    seen = 0  # rows of the (filtered) enumeration before this block
    for subsets, stoich, mask, n_rows in _blocks(space, charge_balanced, batch_rows):
        start = seen
        seen += n_rows
        if n_rows == 0:
            continue
        n_stoich = stoich.shape[0]
        if positions is not None:
            lo, hi = np.searchsorted(positions, [start, seen])
            if lo == hi:
                continue
            local = positions[lo:hi] - start  # among this block's kept rows
            flat = local if mask is None else np.flatnonzero(mask.reshape(-1))[local]
        elif mask is None:
            flat = None
        else:
            flat = np.flatnonzero(mask.reshape(-1))
        if flat is None:
            sub = np.repeat(subsets, n_stoich, axis=0)
            st = np.tile(stoich, (subsets.shape[0], 1))
            atoms = np.tile(stoich.sum(axis=1, dtype=np.int16), subsets.shape[0])
        else:
            which_subset, which_stoich = np.divmod(flat, n_stoich)
            sub = subsets[which_subset]
            st = stoich[which_stoich]
            atoms = stoich.sum(axis=1, dtype=np.int16)[which_stoich]
        k = subsets.shape[1]
        yield _token_ids(sub, st, space.max_atoms, space.k_max), np.full(sub.shape[0], k, dtype=np.int8), atoms


def _tables(space: _Space, charge_balanced: bool, batch_rows: int, positions: np.ndarray | None = None):
    """Pyarrow tables of exactly batch_rows rows (the last one may be shorter)."""
    tokens = _Tokens(space.symbols, space.max_atoms)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_pending = 0

    def table(ids, n_el, n_at) -> pa.Table:
        return pa.Table.from_arrays([tokens.strings(ids), pa.array(n_el), pa.array(n_at)], schema=SCHEMA)

    for chunk in _rows(space, charge_balanced, batch_rows, positions):
        pending.append(chunk)
        n_pending += chunk[0].shape[0]
        if n_pending < batch_rows:
            continue
        ids, n_el, n_at = (np.concatenate(parts) for parts in zip(*pending))
        cut = n_pending - n_pending % batch_rows
        for i in range(0, cut, batch_rows):
            yield table(ids[i : i + batch_rows], n_el[i : i + batch_rows], n_at[i : i + batch_rows])
        pending = [(ids[cut:], n_el[cut:], n_at[cut:])] if cut < n_pending else []
        n_pending -= cut
    if n_pending:
        yield table(*(np.concatenate(parts) for parts in zip(*pending)))


def iter_compositions(
    elements,
    max_elements: int = 4,
    max_atoms: int = 12,
    min_elements: int = 2,
    charge_balanced: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.Table]:
    """The whole space as pyarrow tables of ``batch_rows`` rows (the last may be shorter),
    columns formula (string), n_elements (int8), n_atoms (int16).

    Arguments are checked here, before the first table is asked for.
    """
    space = _space(elements, max_elements, max_atoms, min_elements)
    batch_rows = _positive("batch_rows", batch_rows)
    _check_size(space)
    return _tables(space, bool(charge_balanced), batch_rows)


# --------------------------------------------------------------------------- sampling


def _floyd(total: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random size-subset of range(total) (Floyd's algorithm), sorted int64."""
    draws = rng.integers(0, np.arange(total - size + 1, total + 1, dtype=np.int64))  # t_j uniform in 0..j
    chosen: set[int] = set()
    for j, t in zip(range(total - size, total), draws.tolist()):
        chosen.add(j if t in chosen else t)
    return np.sort(np.fromiter(chosen, dtype=np.int64, count=size))


def _sample_positions(total: int, limit: int, seed: int | None) -> np.ndarray:
    if total >= 2**63:
        raise IrscreenError(f"the space has {total:,} compositions, too many to sample from; narrow it")
    rng = np.random.default_rng(seed)
    if limit <= total // 2:
        return _floyd(total, limit, rng)
    # Mostly kept: draw the rows to leave out instead (total < 2 * limit here).
    keep = np.ones(total, dtype=bool)
    keep[_floyd(total, total - limit, rng)] = False
    return np.flatnonzero(keep).astype(np.int64)


# --------------------------------------------------------------------------- random candidates

#: Elements of random candidates by default: H..Bi without the noble gases, Tc and Pm
#: (the elements common in inorganic databases).
COMMON_ELEMENTS = tuple(z for z in range(1, 84) if z not in (2, 10, 18, 36, 54, 43, 61))


def sample_formulas(n: int, seed: int = 0, elements: Sequence[int] | None = None,
                    batch: int = 200_000) -> Iterator[list[str]]:
    """Random candidate formulas in lists of up to ``batch``: 2-5 distinct elements from
    ``elements`` (atomic numbers; default :data:`COMMON_ELEMENTS`), each amount an
    integer 1-8 or, for a quarter of them, a decimal 0.05-4 (two places). Nearly all
    distinct, like a real candidate pool; the same ``seed`` gives the same formulas.
    Unlike the enumeration above, they are not reduced (``Li2O2`` may appear)."""
    from irscreen.composition import SYMBOLS

    rng = np.random.default_rng(seed)
    pool = np.asarray(COMMON_ELEMENTS if elements is None else elements)
    if len(pool) < 5:
        raise IrscreenError(f"random candidates need at least 5 elements to draw from, got {len(pool)}")
    done = 0
    while done < n:
        m = min(batch, n - done)
        k = rng.integers(2, 6, size=m)
        ints = rng.integers(1, 9, size=(m, 5))
        fracs = np.round(rng.uniform(0.05, 4, size=(m, 5)), 2)
        use_frac = rng.random((m, 5)) < 0.25
        out = []
        for i in range(m):
            els = rng.choice(pool, size=k[i], replace=False)
            parts = []
            for j, z in enumerate(els):
                amt = fracs[i, j] if use_frac[i, j] else ints[i, j]
                parts.append(SYMBOLS[z] + ("" if amt == 1 else f"{amt:g}"))
            out.append("".join(parts))
        done += m
        yield out


# --------------------------------------------------------------------------- writing


def write_compositions(
    path: str | os.PathLike,
    elements,
    max_elements: int = 4,
    max_atoms: int = 12,
    min_elements: int = 2,
    charge_balanced: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    limit: int | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the space (or a seeded uniform sample of ``limit`` rows of it) to ``path``.

    Parquet (zstd) or CSV by the file's suffix (``.parquet``/``.pq``, ``.csv``/``.txt``).
    The file is written under a temporary name in the same directory and renamed into
    place at the end, so ``path`` never holds a partial file; an error (or an exception
    from ``progress``) leaves an existing file at ``path`` untouched.  ``progress`` is
    called with the number of rows written so far after each batch.  Returns the number
    of rows written.
    """
    from irscreen.io import AtomicWriter

    space = _space(elements, max_elements, max_atoms, min_elements)
    batch_rows = _positive("batch_rows", batch_rows)
    _check_size(space)
    if limit is not None:
        limit = _positive("--limit", limit)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise IrscreenError(f"--seed must be a non-negative integer, got {seed!r}")
    charge_balanced = bool(charge_balanced)

    positions = None
    if limit is not None and limit < _count(space):
        if charge_balanced:
            total = sum(n for *_, n in _blocks(space, True, batch_rows))
        else:
            total = _count(space)
        if limit < total:
            positions = _sample_positions(total, limit, seed)

    written = 0
    with AtomicWriter(path, SCHEMA, compression="zstd") as writer:
        for table in _tables(space, charge_balanced, batch_rows, positions):
            writer.write(table)
            written += table.num_rows
            if progress is not None:
                progress(written)
    return written
