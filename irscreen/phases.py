"""Known phases: the compositions and DFT formation energies a hull is built from.

A table of reduced compositions with their formation energy per atom (eV/atom), the
lowest kept where a reduced composition repeats (polymorphs: the ground state is the one
that competes). Elements are at 0 eV/atom, the definition of a formation energy, so they
are not stored: a row for a pure element in a phases file leaves the hull unchanged.

Two compositions are the same when their atomic fractions agree to 2^-32 (Fe2O3 and
Fe4O6 are one). Lookups go through a 64-bit hash of those quantized fractions and are
then checked element by element, so a hash collision can never make a wrong match.

Sources: a formation-energy bundle carries the phases of its training data (written by
``irscreen.train.finalize_bundle``, read through :mod:`irscreen.models.bundle`), or a
user's own file (``--phases FILE``: Parquet/CSV with a formula column and a formation
energy per atom), whose unusable rows are rejects like those of any input.
"""
from __future__ import annotations

import hashlib
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from irscreen.composition import SYMBOLS, parse_batch
from irscreen.errors import IrscreenError

#: Columns of the stored phases table (inside a bundle).
FORMULA, ENERGY = "formula", "formation_energy_per_atom"
#: Names a formation-energy column goes by in a phases file, in order of preference.
ENERGY_COLUMNS = (ENERGY, "formation_energy", "formation_enthalpy", "e_form", "delta_e", "energy", "target")

_Q = float(2**32)  # atomic fractions are compared on this grid
_SEED = 0x9E3779B97F4A7C15


def sort_by_element(elements: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's elements in increasing atomic number, padding (0) last: the canonical
    order that compositions, chemical systems and hull coordinates all use."""
    order = np.argsort(np.where(elements == 0, 1 << 10, elements), axis=1, kind="stable")
    return np.take_along_axis(elements, order, 1).astype(np.int64), np.take_along_axis(fractions, order, 1)


def composition_codes(z_sorted: np.ndarray, f_sorted: np.ndarray) -> np.ndarray:
    """One int64 per (element, quantized fraction), 0 for padding: equal rows are the same
    reduced composition."""
    q = np.rint(f_sorted * _Q).astype(np.int64)
    return np.where(z_sorted > 0, (z_sorted << 34) | q, 0)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hash(values: np.ndarray, seed: int = _SEED) -> np.ndarray:
    """64-bit hash of each row's nonzero values, in order (padding does not count)."""
    h = np.full(len(values), seed, dtype=np.uint64)
    for col in np.asarray(values, dtype=np.int64).T.astype(np.uint64):
        h = np.where(col != 0, _mix(h ^ col), h)
    return h


def unique_hash_seed(*keys: np.ndarray) -> int:
    """A hash seed under which every row of each key table hashes differently (the first
    one nearly always): then a hash hit names one candidate, checked exactly afterwards."""
    for seed in range(_SEED, _SEED + 64):
        if all(len(np.unique(row_hash(k, seed))) == len(k) for k in keys):
            return seed
    raise IrscreenError("known phases: no collision-free hash seed found")  # never in practice


def _row_groups(a: np.ndarray) -> np.ndarray:
    """A group number per row: equal rows share one, numbered in the rows' lexicographic order."""
    if not len(a):
        return np.zeros(0, np.int64)
    order = np.lexsort(a.T[::-1])
    new = np.r_[True, (a[order][1:] != a[order][:-1]).any(1)]
    group = np.empty(len(a), np.int64)
    group[order] = np.cumsum(new) - 1
    return group


class KnownPhases:
    """Compound phases (two or more elements): ``formulas``, ``energies`` (eV/atom),
    ``elements``/``fractions`` sorted by atomic number, in a canonical order (by chemical
    system), so equal content gives an equal :attr:`sha256`."""

    def __init__(self, formulas, energies, elements, fractions, source: str = ""):
        self.source = source
        z, f = sort_by_element(np.asarray(elements), np.asarray(fractions, dtype=np.float64))
        codes = composition_codes(z, f)
        energies = np.asarray(energies, dtype=np.float64)
        # the lowest energy per reduced composition: sort by (composition, energy), keep the first
        group = _row_groups(codes)
        order = np.lexsort((energies, group))
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        first = first[(z[first] > 0).sum(1) >= 2]  # elements are at 0 by definition
        # canonical order: by chemical system, then composition
        first = first[np.lexsort((group[first], _row_groups(z[first])))]
        width = max(1, int((z[first] > 0).sum(1).max(initial=1)))
        self.formulas = np.asarray([str(x) for x in np.asarray(formulas, dtype=object)[first]], dtype=object)
        self.energies = energies[first]
        self.elements, self.fractions = z[first, :width], f[first, :width]
        self.codes = codes[first, :width]
        self.seed = unique_hash_seed(self.codes)
        h = row_hash(self.codes, self.seed)
        self._order = np.argsort(h)
        self._sorted_hash = h[self._order]
        self._names: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.energies)

    def __repr__(self) -> str:
        return f"KnownPhases({len(self):,} compounds from {self.source or 'memory'})"

    @classmethod
    def from_formulas(cls, formulas, energies, source: str = "") -> "KnownPhases":
        """From formula strings that all parse (a bundle's own table, training data)."""
        batch = parse_batch(list(formulas))
        bad = [e for e in batch.errors if e]
        if bad:
            raise IrscreenError(f"{source or 'known phases'}: {bad[0]}")
        return cls(formulas, energies, batch.elements, batch.fractions(), source)

    @cached_property
    def sha256(self) -> str:
        """Content hash (compositions and energies in canonical order): part of a screen's
        resume identity; the same for a bundle's table and the data it was made from."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.codes).tobytes())
        h.update(np.ascontiguousarray(self.energies).tobytes())
        return h.hexdigest()

    def to_table(self) -> pa.Table:
        """The stored form: reduced formula and formation energy per atom."""
        return pa.table({FORMULA: pa.array([self.name(i) for i in range(len(self))], pa.string()),
                         ENERGY: pa.array(self.energies, pa.float64())})

    def name(self, i: int) -> str:
        """Phase i's reduced formula as pymatgen writes it (Fe2O3, LiCoO2), for people."""
        if i not in self._names:
            from pymatgen.core import Composition

            els = self.elements[i]
            comp = {SYMBOLS[z]: float(a) for z, a in zip(els, self.fractions[i]) if z}
            self._names[i] = Composition(comp).get_integer_formula_and_factor()[0]
        return self._names[i]

    def lookup(self, elements: np.ndarray, fractions: np.ndarray) -> np.ndarray:
        """Per row (atomic numbers and fractions, any order): the index of the phase with
        the same reduced composition, -1 where there is none (a pure element is -1 here;
        callers treat elements as known at 0 eV/atom)."""
        z, f = sort_by_element(np.asarray(elements), np.asarray(fractions, dtype=np.float64))
        codes = composition_codes(z, f)
        out = np.full(len(codes), -1, dtype=np.int64)
        if not len(self) or not len(codes):
            return out
        h = row_hash(codes, self.seed)
        pos = np.minimum(np.searchsorted(self._sorted_hash, h), len(self) - 1)
        cand = self._order[pos]
        w = self.codes.shape[1]
        fits = (codes[:, w:] == 0).all(1) if codes.shape[1] > w else np.ones(len(codes), bool)
        mine = codes[:, :w] if codes.shape[1] >= w else np.pad(codes, ((0, 0), (0, w - codes.shape[1])))
        hit = (self._sorted_hash[pos] == h) & fits & (self.codes[cand] == mine).all(1)
        out[hit] = cand[hit]
        return out


def is_element(elements: np.ndarray) -> np.ndarray:
    return (np.asarray(elements) != 0).sum(1) == 1


# --------------------------------------------------------------------------- reading a user's file


def energy_column(columns: list[str], path) -> str:
    folded = {c.casefold(): c for c in columns}
    for name in ENERGY_COLUMNS:
        if name in folded:
            return folded[name]
    raise IrscreenError(
        f"{path}: no formation-energy column (looked for {', '.join(ENERGY_COLUMNS)}; columns: {', '.join(columns)}); "
        f"name it {ENERGY} (eV/atom)"
    )


def _energies(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """float64 values and a per-row error (None when usable): missing, not a number, not finite."""
    values = col.to_pylist()
    out = np.full(len(values), np.nan)
    errors: list[str | None] = [None] * len(values)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            errors[i] = "missing formation energy"
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            errors[i] = f"formation energy {v!r} is not a number"
            continue
        if not np.isfinite(out[i]):
            errors[i] = f"formation energy {v!r} is not a finite number"
    return out, errors


def read_phases(path) -> tuple[KnownPhases, pa.Table]:
    """A user's phases file -> (KnownPhases, rejects (row, formula, error)). Every row is
    either used or rejected; a file with no usable row is an error."""
    from irscreen.io import REJECTS_SCHEMA, open_table

    table = open_table(path)
    fcol = table.formula_column()
    ecol = energy_column(table.columns, table.path)
    batches = list(table.batches(1 << 20, string_columns=(fcol,)))
    data = pa.Table.from_batches(batches) if batches else pa.table({fcol: pa.array([], pa.string()), ecol: []})
    formulas = data.column(fcol)
    if not (pa.types.is_string(formulas.type) or pa.types.is_large_string(formulas.type)):
        raise IrscreenError(f"{table.path}: column {fcol!r} holds {formulas.type}, not formula strings")
    batch = parse_batch(formulas.combine_chunks())
    energies, energy_errors = _energies(data.column(ecol))
    errors = [fe or ee for fe, ee in zip(batch.errors, energy_errors)]
    bad = np.array([e is not None for e in errors], dtype=bool)
    idx = np.flatnonzero(bad)
    texts = formulas.to_pylist()
    rejects = pa.table({"row": pa.array(idx, pa.int64()),
                        "formula": pa.array([texts[i] for i in idx], pa.string()),
                        "error": pa.array([errors[i] for i in idx], pa.string())}, schema=REJECTS_SCHEMA)
    good = np.flatnonzero(~bad)
    if not len(good):
        first = errors[0] if len(idx) else "the file has no rows"
        raise IrscreenError(f"{table.path}: no usable phases ({len(idx):,} rows, all rejected; first: {first})")
    phases = KnownPhases([texts[i] for i in good], energies[good], batch.elements[good], batch.fractions()[good],
                         source=str(table.path))
    return phases, rejects


def read_bundle_phases(path: Path) -> KnownPhases:
    """The phases table inside a bundle (its sha256 already checked by the bundle loader)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return KnownPhases.from_formulas(t.column(FORMULA).to_pylist(), t.column(ENERGY).to_numpy(), source=str(path))


# --------------------------------------------------------------------------- bundles


def is_formation_energy(target: str, units: str) -> bool:
    """Does a bundle predict a formation energy per atom (so its training data are known phases)?"""
    named = re.search(r"formation|e_?form|delta_?e|dhf", target or "", re.I) is not None
    return named and units.replace(" ", "") == "eV/atom"


#: Familiar compounds whose absence from a phase set a user should hear about (model card).
COMMON = ("Li2O", "Na2O", "MgO", "CaO", "Al2O3", "SiO2", "TiO2", "ZnO", "FeO", "Fe2O3", "Fe3O4", "NiO", "CuO",
          "LiF", "NaCl", "KCl", "CaF2", "GaAs", "GaN", "AlN", "SiC", "MoS2", "Li3N", "LiCoO2", "LiFePO4", "BaTiO3",
          "SrTiO3", "MgAl2O4")


def missing_common(phases: KnownPhases) -> tuple[list[str], list[str]]:
    """(present, missing) among COMMON."""
    batch = parse_batch(list(COMMON))
    found = phases.lookup(batch.elements, batch.fractions()) >= 0
    return [c for c, f in zip(COMMON, found) if f], [c for c, f in zip(COMMON, found) if not f]


def write_training_phases(bundle: Path, manifest: dict, td) -> dict:
    """Store a formation-energy bundle's training data (training and validation rows of
    :class:`irscreen.data.TrainingData`) as its known phases."""
    rows = np.union1d(td.train_idx, td.val_idx)
    return add_phases(bundle, manifest, [td.formulas[i] for i in rows], td.y[rows],
                      f"{td.path.name}: the training and validation rows, lowest value per reduced formula")


def add_phases(bundle: Path, manifest: dict, formulas, energies, source: str) -> dict:
    """Write ``formulas``/``energies`` (eV/atom) into ``bundle`` as its known phases and
    list them in ``manifest`` (also how the shipped bundle got its phases)."""
    from irscreen.models.bundle import write_phases

    phases = KnownPhases.from_formulas(formulas, energies, source)
    present, missing = missing_common(phases)
    return write_phases(bundle, manifest, phases.to_table(), {
        "source": source, "rows_in": len(energies), "common_present": present, "common_missing": missing})


def phases_note(manifest: dict) -> str:
    """The model card's section on the known phases, from the manifest's ``phases`` entry."""
    info = manifest["phases"]
    missing, present = info.get("common_missing") or [], info.get("common_present") or []
    source = manifest.get("data", {}).get("source", "")
    return "\n".join([
        "## Known phases (`--hull`)",
        "",
        f"`{info['file']}` holds {info.get('rows', 0):,} compounds ({info.get('source', '')}; elements are at "
        "0 eV/atom). `predict` and `screen` mark rows whose reduced formula is one of them (`known`, "
        "`known_value`), and `--hull` measures each prediction against the lower convex hull they span "
        "(`hull_distance`, negative: predicted stable against every one of them).",
        "",
        "They are only this model's training data" + (f" ({source})" if source else "") + ", a part of the "
        "database, not every known compound"
        + (f": familiar compounds missing from them include {', '.join(missing)}" if missing else "")
        + (f" (present: {', '.join(present)})" if present else "")
        + ". A hull built on an incomplete set sits above the true one, so candidates look more stable than "
        "they are. Pass `--phases FILE` (formula, formation energy per atom in eV) with a fuller set on the "
        "same energy scale as the model, such as your own DFT results or a database export.",
    ])
