"""Tests for irscreen.composition: formula parsing, scalar and batch."""
from __future__ import annotations

import math
import pickle

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition

from irscreen.composition import (
    SYMBOLS,
    Z_OF,
    FormulaError,
    ParsedBatch,
    parse_batch,
    parse_formula,
)


def pymatgen_amounts(formula: str) -> list[tuple[str, float]]:
    return list(Composition(formula).get_el_amt_dict().items())


def batch_rows(batch: ParsedBatch) -> list[dict[str, float] | str]:
    """Each row of a batch as {symbol: amount} (valid) or its error message."""
    rows: list[dict[str, float] | str] = []
    for i in range(batch.n_rows):
        if batch.errors[i] is not None:
            rows.append(batch.errors[i])
        else:
            width = int((batch.elements[i] != 0).sum())
            rows.append({SYMBOLS[z]: float(a) for z, a in zip(batch.elements[i, :width], batch.amounts[i, :width])})
    return rows


def scalar_rows(formulas) -> list[dict[str, float] | str]:
    rows: list[dict[str, float] | str] = []
    for f in formulas:
        try:
            rows.append(parse_formula(f))
        except FormulaError as exc:
            rows.append(str(exc))
    return rows


def assert_same_rows(batch_result, scalar_result):
    """Equal values, keys in the same order (dict == ignores order)."""
    assert len(batch_result) == len(scalar_result)
    for b, s in zip(batch_result, scalar_result):
        assert b == s
        if isinstance(b, dict):
            assert list(b) == list(s)


# --------------------------------------------------------------------------- symbols


def test_symbols_table():
    assert len(SYMBOLS) == 119
    assert SYMBOLS[0] == ""
    assert (SYMBOLS[1], SYMBOLS[8], SYMBOLS[26], SYMBOLS[118]) == ("H", "O", "Fe", "Og")
    assert all(Z_OF[s] == z for z, s in enumerate(SYMBOLS) if z)
    assert len(Z_OF) == 118


# --------------------------------------------------------------------------- pymatgen agreement

PYMATGEN_EXAMPLES = [
    "Fe2O3",
    "Ca3(PO4)2",
    "(Li0.5Na0.5)2O",
    "Mg(OH)2",
    "K4[Fe(CN)6]",
    "[Cu(NH3)4]SO4",
    "Al2(SO4)3",
    "((CH3)3Si)2O",
    "La0.7Sr0.3MnO3",
    "Li2Fe0.5Mn0.5PO4",
    "Fe.5O",
    "Fe2.O3",
    "C100H3815Br21I279N2185Pb100",
    "CH3COOH",
    "CH3NH3PbI3",
    "NaN",
    "  Li2O\t",
    "Li1 Fe1 P1 O4",
    "Fe 2 O 3",
    "(OH) 2Mg",
    "CuSO4.5H2O",
    "Y3N@C80",
    "{Fe}2O3",
    "H1e-3O",
    "(Al0.1Ga0.9)2O3",
    "Fe1e-9O",  # Fe below tolerance: dropped
    "Og2Ts",
    "SiO2(H2O)0.5",
    "HO(HO)2(OH(HO)3)1.5",
]


@pytest.mark.parametrize("formula", PYMATGEN_EXAMPLES)
def test_matches_pymatgen(formula):
    expected = pymatgen_amounts(formula)
    assert list(parse_formula(formula).items()) == expected
    assert batch_rows(parse_batch([formula])) == [dict(expected)]


def test_documented_values():
    assert parse_formula("Ca3(PO4)2") == {"Ca": 3.0, "P": 2.0, "O": 8.0}
    assert list(parse_formula("CH3COOH").items()) == [("C", 2.0), ("H", 4.0), ("O", 2.0)]
    assert parse_formula("NaN") == {"Na": 1.0, "N": 1.0}
    assert parse_formula("CuSO4.5H2O") == {"Cu": 1.0, "S": 1.0, "O": 5.5, "H": 2.0}
    assert parse_formula("Fe1e-9O") == {"O": 1.0}


@pytest.mark.parametrize(
    ("hydrate", "same_as"),
    [
        ("CuSO4·5H2O", "CuSO4(H2O)5"),
        ("CuSO4•5H2O", "CuSO4(H2O)5"),
        ("CuSO4∙5H2O", "CuSO4(H2O)5"),
        ("CuSO4⋅5H2O", "CuSO4(H2O)5"),
        ("CuSO4*5H2O", "CuSO4(H2O)5"),
        ("CuSO4 · 5 H2O", "CuSO4(H2O)5"),
        ("CaSO4·0.5H2O", "CaSO4(H2O)0.5"),
        ("MgSO4·H2O", "MgSO4H2O"),
        ("Al2(SO4)3·18H2O", "Al2(SO4)3(H2O)18"),
        ("Na2CO3·NaHCO3·2H2O", "Na2CO3NaHCO3(H2O)2"),
        ("Na2SO4·10H2O", "Na2SO4(H2O)10"),
    ],
)
def test_hydrates(hydrate, same_as):
    expected = pymatgen_amounts(same_as)
    assert list(parse_formula(hydrate).items()) == expected
    assert batch_rows(parse_batch([hydrate])) == [dict(expected)]


# --------------------------------------------------------------------------- errors

ERRORS = [
    ("Xx2O3", "unknown element 'Xx'"),
    ("D2O", "unknown element 'D'"),
    ("Fex2", "unknown element 'Fex'"),
    ("FeO3Abc", "unknown element 'Abc'"),
    ("Ca3(PO4", "unbalanced parenthesis"),
    ("Ca3PO4)2", "unbalanced parenthesis"),
    ("(Fe]2", "unbalanced parenthesis"),
    ("((Fe)", "unbalanced parenthesis"),
    ("Fe()2", "empty parentheses"),
    ("", "empty formula"),
    (" \t ", "empty formula"),
    ("Fe-2O3", "negative amount"),
    ("(OH)-2", "negative amount"),
    ("CuSO4·-5H2O", "negative amount"),
    ("NaC$l", "unexpected character '$' at position 3"),
    ("fe2o3", "unexpected character 'f' at position 0"),
    ("abc", "unexpected character 'a' at position 0"),
    ("Fe2O3x", "unexpected character 'x' at position 5"),
    ("Fe2e", "unexpected character 'e' at position 3"),
    ("Fe-O", "unexpected character '-' at position 2"),
    ("Fe.", "unexpected character '.' at position 2"),
    ("Fe1.2.3", "unexpected number at position 5"),
    ("Fe2O3\n!", "unexpected character '!' at position 6"),
    ("·H2O", "unexpected character '·' at position 0"),
    ("(CuSO4·5H2O)", "unexpected character '·' at position 6"),
    ("@Fe", "unexpected character '@' at position 0"),
    ("Fe@", "unexpected character '@' at position 2"),
    ("Fe3٣", "unexpected character '٣' at position 3"),
    ("123", "unexpected number at position 0"),
    ("2Fe", "unexpected number at position 0"),
    (".5Fe", "unexpected number at position 0"),
    ("Fe2 3", "unexpected number at position 4"),
    ("CuSO4·", "nothing after '·' at position 5"),
    ("CuSO4·5", "nothing after '·' at position 5"),
    ("CuSO4··H2O", "nothing after '·' at position 5"),
    ("Fe0", "total amount is zero"),
    ("Fe0O0", "total amount is zero"),
    ("H1e-9", "total amount is zero"),
    ("H1e400", "amount too large"),
    ("(H1e400)0", "amount too large"),
    ("H1e308O1e308", "amount too large"),
]


@pytest.mark.parametrize(("formula", "reason"), ERRORS)
def test_error_messages(formula, reason):
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    assert info.value.formula == formula
    assert info.value.reason == reason
    assert str(info.value) == f"invalid formula {formula!r}: {reason}"
    batch = parse_batch([formula])
    assert batch.errors == [str(info.value)]
    assert not batch.ok[0]
    assert not batch.elements.any() and not batch.amounts.any()


@pytest.mark.parametrize(
    ("value", "reason"),
    [(None, "missing formula"), (float("nan"), "missing formula"), (5, "expected a string, got int")],
)
def test_non_string(value, reason):
    with pytest.raises(FormulaError) as info:
        parse_formula(value)
    assert info.value.reason == reason
    assert parse_batch([value, "H2O"]).errors == [str(info.value), None]


def test_formula_error_is_value_error_and_picklable():
    err = FormulaError("Xx", "unknown element 'Xx'")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.formula, again.reason, str(again)) == (err.formula, err.reason, str(err))


def test_pymatgen_accepts_what_irscreen_rejects():
    """The stated differences: dummy species and zero totals are errors here."""
    assert Composition("Xx2O3").get_el_amt_dict() == {"Xx": 2.0, "O": 3.0}
    assert Composition("Fe0").get_el_amt_dict() == {}
    for formula in ("Xx2O3", "Fe0"):
        with pytest.raises(FormulaError):
            parse_formula(formula)


# --------------------------------------------------------------------------- batch


MIXED = [
    "Li2Fe0.5Mn0.5PO4",
    "Ca3(PO4)2",
    "CuSO4·5H2O",
    None,
    "Xx2O3",
    "CH3NH3PbI3",
    "",
    "NaN",
    " Fe2O3 ",
    "Fe0O1e-9",
    "Fe0O",
    "C100H3815Br21I279N2185Pb100",
    "fe",
    "H1e400",
    "Li9",
]


def test_batch_matches_scalar_on_mixed_list():
    batch = parse_batch(MIXED)
    assert batch.n_rows == len(MIXED)
    assert batch.elements.dtype == np.int16 and batch.amounts.dtype == np.float64
    assert batch.elements.shape == batch.amounts.shape == (len(MIXED), 6)  # C100H3815Br21I279N2185Pb100 has 6
    assert_same_rows(batch_rows(batch), scalar_rows(MIXED))
    assert batch.ok.tolist() == [e is None for e in batch.errors]
    # padding: zeros after the last element of each row
    counts = (batch.elements != 0).sum(axis=1)
    for row, count in enumerate(counts):
        assert (batch.elements[row, :count] != 0).all()
        assert not batch.elements[row, count:].any() and not batch.amounts[row, count:].any()
    assert batch.elements[0].tolist() == [3, 26, 25, 15, 8, 0]
    assert batch.amounts[0].tolist() == [2.0, 0.5, 0.5, 1.0, 4.0, 0.0]
    assert batch.elements[10].tolist() == [8, 0, 0, 0, 0, 0]


def test_fractions():
    batch = parse_batch(["Li2Fe0.5Mn0.5PO4", None, "H2O"])
    frac = batch.fractions()
    np.testing.assert_allclose(frac[0], [0.25, 0.0625, 0.0625, 0.125, 0.5])
    assert not frac[1].any()
    np.testing.assert_allclose(frac[2], [2 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(frac[batch.ok].sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "make",
    [
        list,
        tuple,
        lambda xs: np.array(xs, dtype=object),
        lambda xs: pl.Series(xs, dtype=pl.String),
        lambda xs: pa.array(xs, type=pa.string()),
        lambda xs: pa.chunked_array([pa.array(xs[:3], pa.large_string()), pa.array(xs[3:], pa.large_string())]),
        lambda xs: iter(xs),
    ],
)
def test_batch_input_types(make):
    formulas = ["H2O", None, "Ca3(PO4)2", "Xx", "LiFePO4"]
    assert batch_rows(parse_batch(make(formulas))) == scalar_rows(formulas)


def test_batch_numpy_unicode_and_categorical():
    formulas = ["H2O", "Ca3(PO4)2", "Xx"]
    expected = scalar_rows(formulas)
    assert batch_rows(parse_batch(np.array(formulas))) == expected
    assert batch_rows(parse_batch(pl.Series(formulas, dtype=pl.Categorical))) == expected


def test_batch_null_column_and_wrong_type():
    batch = parse_batch(pl.Series([None, None]))
    assert batch.errors == ["invalid formula None: missing formula"] * 2
    with pytest.raises(TypeError):
        parse_batch(pl.Series([1, 2]))


@pytest.mark.parametrize("empty", [[], np.array([], dtype=str), pl.Series([], dtype=pl.String)])
def test_batch_empty(empty):
    batch = parse_batch(empty)
    assert batch.n_rows == 0
    assert batch.elements.shape == batch.amounts.shape == (0, 1)
    assert batch.errors == [] and batch.ok.shape == (0,) and batch.fractions().shape == (0, 1)


def test_batch_width_counts_valid_rows_only():
    assert parse_batch(["H2O", "XxHOCNFe", "HOCNFeNaCl(", "H" * 40]).elements.shape == (4, 2)
    assert parse_batch(["HO" * 20]).elements.tolist() == [[1, 8]]


def test_batch_all_invalid_has_width_one():
    batch = parse_batch(["", None, "Q"])
    assert batch.elements.shape == (3, 1)
    assert not batch.ok.any()


# --------------------------------------------------------------------------- hypothesis

ELEMENTS = st.sampled_from(SYMBOLS[1:])


@st.composite
def amounts(draw):
    """(text, value) of an optional amount: '', integers, decimals in several spellings."""
    kind = draw(st.sampled_from(["none", "int", "dec", "lead", "trail"]))
    if kind == "none":
        return "", 1.0
    if kind == "int":
        n = draw(st.integers(1, 5000))
        return str(n), float(n)
    if kind == "trail":
        n = draw(st.integers(1, 99))
        return f"{n}.", float(n)
    digits = draw(st.integers(1, 99999))
    places = draw(st.integers(1, 4))
    text = f"{digits / 10**places:.{places}f}"
    if kind == "lead" and text.startswith("0."):
        text = text[1:]
    return text, float(text)


@st.composite
def groups(draw, depth: int):
    """(text, [(symbol, amount)...] flattened with multipliers applied, uses brackets)."""
    parts: list[str] = []
    tokens: list[tuple[str, float]] = []
    for _ in range(draw(st.integers(1, 4))):
        if depth > 0 and draw(st.integers(0, 3)) == 0:
            text, inner = draw(groups(depth - 1))
            mult_text, mult = draw(amounts())
            opener, closer = draw(st.sampled_from(["()", "[]", "{}"]))
            parts.append(f"{opener}{text}{closer}{mult_text}")
            tokens.extend((sym, amt * mult) for sym, amt in inner)
        else:
            sym = draw(ELEMENTS)
            amt_text, amt = draw(amounts())
            parts.append(sym + amt_text)
            tokens.append((sym, amt))
    return "".join(parts), tokens


def expected_amounts(tokens: list[tuple[str, float]]) -> dict[str, float]:
    """Sum per element in order of first appearance, dropping totals below 1e-8."""
    totals: dict[str, float] = {}
    for sym, amt in tokens:
        totals[sym] = totals.get(sym, 0.0) + amt
    assume(not any(0.5e-8 < v < 2e-8 for v in totals.values()))  # too close to call
    return {sym: v for sym, v in totals.items() if v >= 1e-8}


def assert_close_amounts(got: dict[str, float], want: dict[str, float]):
    assert list(got) == list(want)  # order of first appearance
    for sym in want:
        assert math.isclose(got[sym], want[sym], rel_tol=1e-12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups(depth=2))
def test_random_valid_formulas(case):
    text, tokens = case
    want = expected_amounts(tokens)
    if not want:  # everything below the tolerance
        with pytest.raises(FormulaError, match="total amount is zero"):
            parse_formula(text)
        return
    got = parse_formula(text)
    assert_close_amounts(got, want)
    # fractions
    batch = parse_batch([text])
    total = sum(want.values())
    width = len(want)
    np.testing.assert_allclose(batch.fractions()[0, :width], [v / total for v in want.values()], rtol=1e-12)
    assert batch.elements[0, :width].tolist() == [Z_OF[s] for s in want]
    # pymatgen reads the same formula identically (bit for bit)
    assert list(got.items()) == pymatgen_amounts(text)


@settings(max_examples=150, deadline=None)
@given(groups(depth=1), st.lists(st.tuples(amounts(), groups(depth=1)), min_size=1, max_size=2))
def test_random_hydrates(first, rest):
    text, tokens = first
    for (mult_text, mult), (part_text, part_tokens) in rest:
        text += "·" + mult_text + part_text
        tokens = tokens + [(s, a * mult) for s, a in part_tokens]
    want = expected_amounts(tokens)
    assume(want)
    assert_close_amounts(parse_formula(text), want)


# Plain formulas, which take the vectorized path: duplicates, zeros, tiny and huge amounts,
# unknown two-letter symbols, surrounding whitespace.
PLAIN_SYMBOLS = st.sampled_from(["H", "O", "C", "N", "Fe", "Na", "Xx", "Q", "Og", "D"])
PLAIN_AMOUNTS = st.sampled_from(["", "0", "1", "2", "0.5", ".25", "3.", "12", "0.00000001", "0.000000001",
                                 "1" + "0" * 300, "9" * 320, "0.1", "0.2", "0.7",
                                 "0." + "0" * 350 + "1", "1.00000000000000011102230246251565404"])


@st.composite
def plain_formulas(draw):
    body = "".join(draw(PLAIN_SYMBOLS) + draw(PLAIN_AMOUNTS) for _ in range(draw(st.integers(1, 20))))
    return draw(st.sampled_from(["", " ", "\t"])) + body + draw(st.sampled_from(["", " ", "\n"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(plain_formulas(), groups(depth=1).map(lambda c: c[0]), st.none()), max_size=30))
def test_batch_paths_agree(formulas):
    assert_same_rows(batch_rows(parse_batch(formulas)), scalar_rows(formulas))


FORMULA_ALPHABET = "HOCNFeaXxD()[]{}0123456789.·*•@ -e\t"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=FORMULA_ALPHABET)))
def test_junk_only_raises_formula_error(text):
    try:
        result = parse_formula(text)
    except FormulaError as exc:
        assert exc.formula == text
        return
    assert result and all(v >= 1e-8 and math.isfinite(v) for v in result.values())
    assert all(sym in Z_OF for sym in result)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(), st.text(alphabet=FORMULA_ALPHABET), st.none()), max_size=20))
def test_junk_batch_never_raises(texts):
    batch = parse_batch(texts)
    assert batch.n_rows == len(texts)
    assert_same_rows(batch_rows(batch), scalar_rows(texts))


# --------------------------------------------------------------------------- real data

DATA_FILES = [
    "oqmd_gap.parquet",
    "oqmd_dhf.parquet",
    "mp_ehull.parquet",
    "bartel_ef.parquet",
    "aflow_egap.parquet",
    "aflow_epa.parquet",
    "mp_bulk.parquet",
    "mp_shear.parquet",
    "jarvis_ef.parquet",
    "expt_gap.parquet",
]


@pytest.mark.parametrize("name", DATA_FILES)
def test_training_data_formulas(shared_data, name):
    formulas = pl.read_parquet(shared_data(name), columns=["formula"])["formula"]
    batch = parse_batch(formulas)
    assert [e for e in batch.errors if e is not None] == []
    # agreement with pymatgen on a sample, and with the scalar parser
    sample = formulas.sample(n=min(len(formulas), 400), seed=0).to_list()
    sample_batch = batch_rows(parse_batch(sample))
    assert_same_rows(sample_batch, scalar_rows(sample))
    for formula, row in zip(sample, sample_batch):
        assert list(row.items()) == pymatgen_amounts(formula), formula
