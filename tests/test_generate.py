"""Tests for irscreen.generate: enumeration, charge balance, sampling, writing."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pymatgen.core.periodic_table import Element

import irscreen.generate as gen
from irscreen.composition import parse_formula
from irscreen.errors import IrscreenError
from irscreen.generate import SCHEMA, count_compositions, iter_compositions, write_compositions

LFMPO = ["Li", "Fe", "Mn", "P", "O"]


def brute_force(elements, max_elements, max_atoms, min_elements=2, charge_balanced=False):
    """Reduced compositions as frozensets of (symbol, amount), by plain itertools."""
    out = set()
    for k in range(min_elements, max_elements + 1):
        for subset in itertools.combinations(elements, k):
            for amounts in itertools.product(range(1, max_atoms + 1), repeat=k):
                if sum(amounts) > max_atoms or math.gcd(*amounts) != 1:
                    continue
                if charge_balanced and not pymatgen_balanced(subset, amounts):
                    continue
                out.add(frozenset(zip(subset, amounts)))
    return out


def pymatgen_balanced(symbols, amounts) -> bool:
    if len(symbols) == 1:
        return True  # IonProperty: an element on its own is a possible compound
    states = [Element(s).common_oxidation_states for s in symbols]
    return any(sum(a * ox for a, ox in zip(amounts, combo)) == 0 for combo in itertools.product(*states))


def generated(elements, **kw) -> pa.Table:
    tables = list(iter_compositions(elements, **kw))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def as_compositions(table: pa.Table) -> list[frozenset]:
    """Each formula parsed back; amounts must be whole numbers."""
    out = []
    for f in table["formula"].to_pylist():
        parsed = parse_formula(f)
        assert all(float(a).is_integer() for a in parsed.values()), f
        out.append(frozenset((s, int(a)) for s, a in parsed.items()))
    return out


# --------------------------------------------------------------------------- enumeration

CASES = [
    (["Li", "Fe", "O"], dict(max_elements=3, max_atoms=7)),
    (LFMPO, dict(max_elements=4, max_atoms=8)),
    (LFMPO, dict(max_elements=3, max_atoms=9, min_elements=3)),
    (["Na", "Cl", "He", "C", "O"], dict(max_elements=5, max_atoms=7, min_elements=1)),
    (["Ba", "Ti", "O"], dict(max_elements=9, max_atoms=6)),  # max_elements above len(elements)
    (["H", "N", "O", "S"], dict(max_elements=4, max_atoms=3)),  # max_atoms caps the element count
]


@pytest.mark.parametrize("charge_balanced", [False, True], ids=["all", "balanced"])
@pytest.mark.parametrize("elements,kw", CASES)
def test_matches_brute_force(elements, kw, charge_balanced):
    table = generated(elements, charge_balanced=charge_balanced, **kw)
    assert table.schema == SCHEMA
    comps = as_compositions(table)
    assert len(set(comps)) == len(comps), "duplicate compositions"
    expected = brute_force(elements, kw["max_elements"], kw["max_atoms"], kw.get("min_elements", 2), charge_balanced)
    assert set(comps) == expected
    if not charge_balanced:
        assert count_compositions(elements, **kw) == len(expected)
    # n_elements / n_atoms columns agree with the formulas
    assert table["n_elements"].to_pylist() == [len(c) for c in comps]
    assert table["n_atoms"].to_pylist() == [sum(a for _, a in c) for c in comps]


def test_formula_style_and_element_order():
    formulas = set(generated(["Li", "Fe", "O"], max_elements=3, max_atoms=6)["formula"].to_pylist())
    assert {"LiFeO2", "Li2FeO3", "LiO", "Li2O", "FeO", "Fe2O3", "LiFe"} <= formulas
    assert "Li2O2" not in formulas and "FeLiO2" not in formulas and "Li1FeO2" not in formulas
    # the order given is the order written
    formulas = set(generated(["O", "Li"], max_elements=2, max_atoms=3)["formula"].to_pylist())
    assert formulas == {"OLi", "OLi2", "O2Li"}


def test_two_digit_amounts_and_order_of_rows():
    table = generated(["Li", "O"], max_elements=2, max_atoms=14)
    formulas = table["formula"].to_pylist()
    assert "Li13O" in formulas and "LiO13" in formulas and "Li11O3" in formulas
    atoms = table["n_atoms"].to_pylist()
    assert atoms == sorted(atoms)  # within one element subset: by total atoms


def test_count_matches_enumeration_larger_space():
    elements = ["Li", "Na", "Mg", "Al", "Si", "Fe", "P", "S", "O"]
    kw = dict(max_elements=5, max_atoms=15, min_elements=1)
    rows = sum(t.num_rows for t in iter_compositions(elements, batch_rows=50_000, **kw))
    assert count_compositions(elements, **kw) == rows


def test_count_closed_form_large_space_is_instant():
    # 80 elements, up to 8 per formula, 40 atoms: far too many to enumerate
    elements = [Element.from_Z(z).symbol for z in range(1, 81)]
    n = count_compositions(elements, max_elements=8, max_atoms=40)
    assert n > 10**15
    # k = 2 alone: ordered coprime pairs with a + b <= A, times C(80, 2)
    pairs = sum(1 for a in range(1, 40) for b in range(1, 40 - a + 1) if math.gcd(a, b) == 1)
    assert count_compositions(elements, max_elements=2, max_atoms=40) == math.comb(80, 2) * pairs


def test_lfmpo_counts():
    kw = dict(max_elements=4, max_atoms=12)
    assert count_compositions(LFMPO, **kw) == len(brute_force(LFMPO, 4, 12))
    balanced = generated(LFMPO, charge_balanced=True, **kw)
    assert set(as_compositions(balanced)) == brute_force(LFMPO, 4, 12, charge_balanced=True)


def test_batches_are_exactly_batch_rows():
    tables = list(iter_compositions(LFMPO, max_elements=4, max_atoms=10, batch_rows=97))
    sizes = [t.num_rows for t in tables]
    assert all(s == 97 for s in sizes[:-1]) and 0 < sizes[-1] <= 97
    assert sum(sizes) == count_compositions(LFMPO, max_elements=4, max_atoms=10)
    balanced = list(iter_compositions(LFMPO, max_elements=4, max_atoms=10, charge_balanced=True, batch_rows=50))
    assert all(t.num_rows == 50 for t in balanced[:-1])
    # the batch size does not change the rows
    whole = generated(LFMPO, max_elements=4, max_atoms=10, charge_balanced=True, batch_rows=1_000_000)
    assert pa.concat_tables(balanced).equals(whole)


def test_no_balanced_compound_possible():
    # Li and Na are both only +1: nothing balances, He has no common states at all
    assert generated(["Li", "Na", "He"], max_elements=3, max_atoms=6, charge_balanced=True).num_rows == 0


def test_charge_balanced_is_compound_possible():
    """Rows kept by charge_balanced are exactly those with IonProperty 'compound possible' = 1."""
    from irscreen.features import featurize

    elements = ["Li", "C", "Mn", "Cl", "O", "Ar"]
    kw = dict(max_elements=3, max_atoms=8, min_elements=1)
    everything = generated(elements, **kw)["formula"].to_pylist()
    kept = set(generated(elements, charge_balanced=True, **kw)["formula"].to_pylist())
    possible = featurize(everything)["compound possible"].to_numpy()
    assert [f in kept for f in everything] == list(possible == 1.0)
    assert 0 < len(kept) < len(everything)


def test_charge_balance_outer_is_pairwise():
    """charge_balanced_outer (every subset x every stoichiometry, what generate uses) is
    charge_balanced (one amount vector per composition, what the feature uses) on every
    pair, and both are the brute-force definition; float amounts, padding and elements
    without states included."""
    from irscreen.chemistry import charge_balanced, charge_balanced_outer

    rng = np.random.default_rng(5)
    pool = np.array([0, 1, 3, 6, 7, 8, 9, 2, 16, 17, 25, 26, 53, 54, 83, 118])  # 0: padding, He, Og: no states
    z = rng.choice(pool, size=(60, 4))
    z[(z == 0).all(axis=1), 0] = 8  # no empty compositions
    z[:5] = [[1, 0, 0, 0], [2, 0, 0, 0], [0, 26, 0, 0], [0, 0, 0, 118], [8, 0, 0, 0]]  # single elements, He and Og too
    amounts = np.vstack([rng.integers(1, 7, size=(40, 4)), np.round(rng.uniform(0.1, 3, size=(20, 4)), 1)])
    outer = charge_balanced_outer(z, amounts)
    pairs = charge_balanced(np.repeat(z, len(amounts), axis=0), np.tile(amounts, (len(z), 1)))
    np.testing.assert_array_equal(outer, pairs.reshape(outer.shape))
    assert outer[:5].all() and 0 < outer.mean() < 1

    def brute(zs, amts) -> bool:  # matminer's IonProperty(fast=True) loop
        real = [(Element.from_Z(int(e)), a) for e, a in zip(zs, amts) if e]
        if len(real) == 1:
            return True
        states = [el.common_oxidation_states for el, _ in real]
        return any(np.isclose(np.dot(ox, [a for _, a in real]), 0) for ox in itertools.product(*states))

    for i in range(0, len(z), 3):
        for r in range(0, len(amounts), 7):
            assert outer[i, r] == brute(z[i], amounts[r]), (z[i], amounts[r])


# --------------------------------------------------------------------------- sampling


def test_sample_exact_distinct_deterministic(tmp_path):
    kw = dict(max_elements=4, max_atoms=10)
    full = generated(LFMPO, **kw)["formula"].to_pylist()
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    assert write_compositions(a, LFMPO, limit=500, seed=7, **kw) == 500
    assert write_compositions(b, LFMPO, limit=500, seed=7, batch_rows=33, **kw) == 500
    assert write_compositions(c, LFMPO, limit=500, seed=8, **kw) == 500
    fa = pq.read_table(a)["formula"].to_pylist()
    assert len(fa) == len(set(fa)) == 500
    assert pq.read_table(b)["formula"].to_pylist() == fa  # same seed, any batch size
    assert pq.read_table(c)["formula"].to_pylist() != fa
    # a subset of the enumeration, kept in enumeration order
    index = {f: i for i, f in enumerate(full)}
    positions = [index[f] for f in fa]
    assert positions == sorted(positions)


def test_sample_mostly_kept_and_whole_space(tmp_path):
    kw = dict(max_elements=3, max_atoms=8)
    total = count_compositions(LFMPO, **kw)
    out = tmp_path / "s.parquet"
    assert write_compositions(out, LFMPO, limit=total - 5, seed=1, **kw) == total - 5  # complement branch
    f = pq.read_table(out)["formula"].to_pylist()
    assert len(set(f)) == total - 5
    assert write_compositions(out, LFMPO, limit=total + 100, seed=1, **kw) == total
    assert pq.read_table(out)["formula"].to_pylist() == generated(LFMPO, **kw)["formula"].to_pylist()


def test_sample_charge_balanced(tmp_path):
    kw = dict(max_elements=4, max_atoms=12, charge_balanced=True)
    balanced = set(generated(LFMPO, **kw)["formula"].to_pylist())
    out = tmp_path / "s.parquet"
    assert write_compositions(out, LFMPO, limit=100, seed=3, **kw) == 100
    f = pq.read_table(out)["formula"].to_pylist()
    assert len(set(f)) == 100 and set(f) <= balanced
    # a limit between the balanced count and the unfiltered count writes every balanced row
    assert write_compositions(out, LFMPO, limit=len(balanced) + 1, seed=3, **kw) == len(balanced)


def test_sample_is_uniform():
    counts = Counter()
    for seed in range(400):
        counts.update(gen._sample_positions(20, 5, seed).tolist())
    # each position is chosen with probability 1/4: 100 expected of 400, sd ~ 8.7
    assert set(counts) == set(range(20))
    assert all(55 < c < 145 for c in counts.values()), counts
    p = gen._sample_positions(10**12, 1000, 0)
    assert len(np.unique(p)) == 1000 and p.min() >= 0 and p.max() < 10**12


# --------------------------------------------------------------------------- writing


def test_parquet_and_csv_output(tmp_path):
    kw = dict(max_elements=3, max_atoms=6)
    expected = generated(LFMPO, **kw)
    pq_path, csv_path = tmp_path / "g.parquet", tmp_path / "g.csv"
    seen = []
    assert write_compositions(pq_path, LFMPO, batch_rows=100, progress=seen.append, **kw) == expected.num_rows
    assert seen == sorted(seen) and seen[-1] == expected.num_rows and len(seen) > 1
    table = pq.read_table(pq_path)
    assert table.schema.remove_metadata() == SCHEMA and table.equals(expected)
    assert pq.ParquetFile(pq_path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert write_compositions(csv_path, LFMPO, **kw) == expected.num_rows
    back = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(column_types=SCHEMA))
    assert back.equals(expected)
    assert csv_path.read_text().splitlines()[:2] == ['"formula","n_elements","n_atoms"', '"LiFe",2,2']


def test_empty_result_still_writes_a_file(tmp_path):
    out = tmp_path / "none.parquet"
    assert write_compositions(out, ["Li", "Na"], charge_balanced=True) == 0
    assert pq.read_table(out).num_rows == 0


def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_atomic_when_progress_raises(tmp_path):
    out = tmp_path / "g.parquet"
    out.write_bytes(b"old contents")

    def boom(done):
        if done > 100:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        write_compositions(out, LFMPO, batch_rows=100, progress=boom)
    assert out.read_bytes() == b"old contents"
    assert _leftovers(tmp_path, {"g.parquet"}) == []


def test_atomic_when_writer_fails_midway(tmp_path, monkeypatch):
    calls = []
    real = gen._Tokens._strings

    def failing(self, ids):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, ids)

    monkeypatch.setattr(gen._Tokens, "_strings", failing)
    out = tmp_path / "g.csv"
    with pytest.raises(OSError, match="disk full"):
        write_compositions(out, LFMPO, batch_rows=50)
    assert not out.exists()
    assert _leftovers(tmp_path, set()) == []


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(elements="Li,Xx,O"), "unknown element 'Xx' in --elements"),
        (dict(elements=["Li", "fe"]), "unknown element 'fe' in --elements"),
        (dict(elements="Li,Fe,Li"), "duplicate element 'Li' in --elements"),
        (dict(elements=""), "--elements is empty: give element symbols such as Li,Fe,O"),
        (dict(elements=["Li", 3]), "--elements must be element symbols, got 3"),
        (dict(elements="Li"), "--elements lists 1 element but --min-elements is 2"),
        (dict(elements="Li,Fe", min_elements=3), "--elements lists 2 elements but --min-elements is 3"),
        (dict(elements=LFMPO, max_elements=2, min_elements=3), "--max-elements (2) is smaller than --min-elements (3)"),
        (
            dict(elements=LFMPO, max_atoms=2, min_elements=3),
            "--max-atoms (2) is smaller than --min-elements (3): every element needs at least one atom",
        ),
        (dict(elements=LFMPO, max_elements=0), "--max-elements must be a positive integer, got 0"),
        (dict(elements=LFMPO, max_atoms=-3), "--max-atoms must be a positive integer, got -3"),
        (dict(elements=LFMPO, min_elements=0), "--min-elements must be a positive integer, got 0"),
        (dict(elements=LFMPO, max_atoms=2.5), "--max-atoms must be a positive integer, got 2.5"),
    ],
)
def test_validation_messages(kw, message):
    elements = kw.pop("elements")
    for call in (count_compositions, iter_compositions):
        with pytest.raises(IrscreenError) as exc:
            call(elements, **kw)
        assert str(exc.value) == message


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(limit=0), "--limit must be a positive integer, got 0"),
        (dict(batch_rows=0), "batch_rows must be a positive integer, got 0"),
        (dict(limit=10, seed=-1), "--seed must be a non-negative integer, got -1"),
    ],
)
def test_write_validation_messages(tmp_path, kw, message):
    with pytest.raises(IrscreenError) as exc:
        write_compositions(tmp_path / "g.parquet", LFMPO, **kw)
    assert str(exc.value) == message
    assert list(tmp_path.iterdir()) == []


def test_too_many_stoichiometries(tmp_path):
    message = (
        "--max-atoms 200 with 4 elements allows 64,684,950 amount vectors per element subset"
        " (at most 5,000,000); lower --max-atoms or --max-elements"
    )
    with pytest.raises(IrscreenError) as exc:
        iter_compositions(LFMPO, max_elements=5, max_atoms=200)
    assert str(exc.value) == message
    with pytest.raises(IrscreenError) as exc:
        write_compositions(tmp_path / "g.parquet", LFMPO, max_elements=5, max_atoms=200)
    assert str(exc.value) == message
    assert count_compositions(LFMPO, max_elements=5, max_atoms=200) > 10**9  # counting has no such limit
