"""Feature engines: parity of the vectorized magpie engine with matminer, the fractions
preset, the preset registry and error handling."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pytest

from irscreen.composition import SYMBOLS, FormulaError, ParsedBatch, parse_batch, parse_formula
from irscreen.features import (
    PRESETS,
    feature_labels,
    featurize,
    featurize_parsed,
)
from irscreen.features import elemdata
from irscreen.features.magpie import featurize_batch
from irscreen.features.reference import featurize_matminer, matminer_featurizer

PARITY_FILES = ("oqmd_dhf", "mp_ehull", "bartel_ef", "jarvis_ef", "expt_gap", "aflow_egap")
PER_FILE = 1000

EDGE_CASES = [
    "Fe",  # single element
    "O",
    "La0.7Sr0.3MnO3",  # fractional amounts
    "Li0.333333333Fe0.333333333O0.666666667",  # charge sum within 1e-8 of zero
    "NaCl0.99999999",
    "XeF2",  # noble gas compounds (Xe has common oxidation states, He/Ne/Ar do not)
    "KrF2",
    "XeO3",
    "HeAr",
    "Ne",
    "Rn",
    "Lr",  # missing Magpie data (imputed)
    "Md2O3",
    "NoCl2",
    "Og",
    "LrMdNoOg",
    "Ts2Nh",
    "PuO2",
    "Fe1000000O1500000",  # large stoichiometry
    "H1e200O1e200",
    "H1e306O1e306",  # overflow: matminer gives inf/NaN, so must we
    "Fe1e307",
    "NaN",  # sodium nitride
    "C6H12O6",  # carbon has 9 common oxidation states
    "C9H9N9O9S9Cl9Br9I9P9",  # 9 elements, many oxidation-state combinations
    "Fe3O4",  # heterovalent: not charge-balanced with one state per element
    "Fe2O3",
    "CH3COOH",
    "(NH4)2SO4",
    "CuSO4·5H2O",
    "Fe0.5Ni0.5",  # tied amounts (mode)
    "AlCuFeNiCo",
    "Al1.00000001Cu",  # amounts np.isclose-tied for mode
    "He1e-8Fe",
    "Li1Be2B3O1F2Na3Mg1Al2K3Ca1Sc2Ti3V1Ni2Cu3Zn1Ga2",  # 17 elements
    "".join(f"{sym}{z % 7 + 1}" for z, sym in enumerate(SYMBOLS) if sym),  # all 118
]


# Parity tolerance: relative error (|ref| floored at 1) at most 1e-12.  Features are
# stored as float32 (~6e-8 relative), so matching matminer's summation order to the
# last bit buys nothing; 1e-12 still catches any wrong formula, weight or imputation.
RTOL = 1e-12


def _compare(mine: np.ndarray, ref: np.ndarray, names: list[str]) -> float:
    """Assert parity (values within RTOL, identical NaN and inf positions); return the
    max relative error."""
    assert mine.shape == ref.shape
    assert mine.dtype == np.float64
    labels = feature_labels("magpie")
    nan_m, nan_r = np.isnan(mine), np.isnan(ref)
    if (nan_m != nan_r).any():
        r, c = np.argwhere(nan_m != nan_r)[0]
        pytest.fail(f"NaN mismatch for {names[r]!r} {labels[c]!r}: {mine[r, c]} vs matminer {ref[r, c]}")
    inf_r = np.isinf(ref)
    assert (np.isinf(mine) == inf_r).all()
    assert (mine[inf_r] == ref[inf_r]).all()
    fin = np.isfinite(ref)
    rel = np.zeros_like(ref)
    rel[fin] = np.abs(mine[fin] - ref[fin]) / np.maximum(1.0, np.abs(ref[fin]))
    worst = float(rel.max()) if rel.size else 0.0
    if worst > RTOL:
        r, c = np.unravel_index(np.argmax(rel), rel.shape)
        pytest.fail(f"{names[r]!r} {labels[c]!r}: {mine[r, c]!r} vs matminer {ref[r, c]!r}")
    return worst


@pytest.fixture(scope="module")
def parity_formulas(shared_data) -> list[str]:
    rng = np.random.default_rng(20240611)
    formulas: list[str] = []
    for name in PARITY_FILES:
        col = pl.read_parquet(shared_data(f"{name}.parquet"), columns=["formula"])["formula"]
        take = rng.choice(len(col), size=min(PER_FILE, len(col)), replace=False)
        formulas.extend(col.gather(np.sort(take)).to_list())
    unique = list(dict.fromkeys(f for f in formulas if f is not None))
    assert len(unique) >= 5000
    return unique


@pytest.fixture(scope="module")
def matminer_reference(parity_formulas) -> dict[str, np.ndarray]:
    """matminer's features of the parity set and the edge cases, computed once."""
    everything = parity_formulas + EDGE_CASES
    values = featurize_matminer(everything, n_jobs=2)
    return dict(zip(everything, values))


# ---------------------------------------------------------------------------------
# magpie: parity with matminer
# ---------------------------------------------------------------------------------


def test_magpie_labels_match_matminer():
    labels = matminer_featurizer().feature_labels()
    assert feature_labels("magpie") == labels
    assert len(labels) == 145


def test_element_tables_match_matminer():
    from pymatgen.core.periodic_table import Element

    mf = matminer_featurizer()
    magpie_source = mf.featurizers[1].data_source  # MagpieData(impute_nan=True)
    ion_source = mf.featurizers[3].data_source  # PymatgenData(impute_nan=True)
    table = elemdata.magpie_table()
    x = elemdata.pymatgen_electronegativity()
    states, counts = elemdata.common_oxidation_states()
    for z in range(1, 119):
        el = Element.from_Z(z)
        for j, prop in enumerate(elemdata.MAGPIE_PROPERTIES):
            assert table[z, j] == magpie_source.get_elemental_property(el, prop), (el, prop)
        assert x[z] == ion_source.get_elemental_property(el, "X"), el
        assert tuple(states[z, : counts[z]]) == tuple(ion_source.get_oxidation_states(el)), el
    assert np.isnan(table[0]).all()
    assert not np.isnan(table[1:]).any()
    # Imputed entries are the mean over the elements that have data (Lr has no
    # Magpie electronegativity; Og not even an atomic number in the tables).
    col = elemdata.MAGPIE_PROPERTIES.index
    assert table[103, col("Electronegativity")] == pytest.approx(1.7151, abs=1e-4)
    assert table[118, col("Number")] == 56.5  # mean of 1..112


def test_magpie_parity_real_formulas(parity_formulas, matminer_reference):
    mine = featurize_parsed(parse_batch(parity_formulas), "magpie")
    ref = np.array([matminer_reference[f] for f in parity_formulas])
    assert not np.isnan(ref).any()
    worst = _compare(mine, ref, parity_formulas)
    print(f"max relative error over {len(parity_formulas)} formulas: {worst:.3g}")


def test_magpie_parity_edge_cases(matminer_reference):
    mine = featurize_parsed(parse_batch(EDGE_CASES), "magpie")
    ref = np.array([matminer_reference[f] for f in EDGE_CASES])
    _compare(mine, ref, EDGE_CASES)
    labels = feature_labels("magpie")
    cpd = dict(zip(EDGE_CASES, mine[:, labels.index("compound possible")]))
    assert cpd["Fe"] == 1.0 and cpd["Og"] == 1.0  # single elements
    assert cpd["Fe2O3"] == 1.0 and cpd["Fe3O4"] == 0.0
    assert cpd["HeAr"] == 0.0 and cpd["XeF2"] == 1.0
    assert cpd["Li0.333333333Fe0.333333333O0.666666667"] == 1.0


def test_magpie_parity_each_edge_case_alone(matminer_reference):
    """One-row batches (every block width) give the same values as the mixed batch."""
    for formula in EDGE_CASES:
        mine = featurize_parsed(parse_batch([formula]), "magpie")
        _compare(mine, matminer_reference[formula][None, :], [formula])


def test_magpie_rows_independent_of_batch(parity_formulas):
    formulas = parity_formulas[:400] + EDGE_CASES
    full = featurize_parsed(parse_batch(formulas))
    order = np.random.default_rng(1).permutation(len(formulas))
    shuffled = featurize_parsed(parse_batch([formulas[i] for i in order]))
    np.testing.assert_array_equal(shuffled, full[order])
    # A batch where every row has the same number of elements (the contiguous path).
    binaries = [f for f in formulas if len(parse_formula(f)) == 2]
    idx = [formulas.index(f) for f in binaries]
    np.testing.assert_array_equal(featurize_parsed(parse_batch(binaries)), full[idx])
    # Formulas of 9 elements alone and together: numpy sums the elements of a one-row
    # block in another order than those of a bigger block, and that must not show.
    pair = ["C9H9N9O9S9Cl9Br9I9P9", "Li0.1Be0.7B0.3O0.11F0.13Na0.17Mg0.19Al0.23K0.29"]
    together = featurize_parsed(parse_batch(pair))
    for i, f in enumerate(pair):
        np.testing.assert_array_equal(featurize_parsed(parse_batch([f]))[0], together[i], err_msg=f)


def test_magpie_hand_built_batch_not_left_packed():
    """A ParsedBatch built by hand with padding between elements (and duplicate-free)."""
    from pymatgen.core import Composition

    comps = [Composition("Fe2O3"), Composition("La0.7Sr0.3MnO3")]
    elements = np.zeros((2, 6), dtype=np.int16)
    amounts = np.zeros((2, 6))
    for i, comp in enumerate(comps):
        for j, (el, amt) in enumerate(comp.items()):
            elements[i, 2 * j if i == 0 else j] = el.Z
            amounts[i, 2 * j if i == 0 else j] = amt
    batch = ParsedBatch(elements=elements, amounts=amounts, errors=[None, None])
    expected = featurize_parsed(parse_batch(["Fe2O3", "La0.7Sr0.3MnO3"]))
    np.testing.assert_array_equal(featurize_batch(batch), expected)


def test_magpie_invalid_rows_are_nan():
    formulas = ["Fe2O3", "Xx2O", "", "NaCl", None, "Fe0", "Fe(O"]
    batch = parse_batch(formulas)
    out = featurize_parsed(batch)
    assert out.shape == (len(formulas), 145)
    bad = [e is not None for e in batch.errors]
    assert bad == [False, True, True, False, True, True, True]
    assert np.isnan(out[bad]).all()
    assert not np.isnan(out[[0, 3]]).any()
    np.testing.assert_array_equal(out[[0, 3]], featurize_parsed(parse_batch(["Fe2O3", "NaCl"])))


def test_magpie_empty_batch():
    assert featurize_parsed(parse_batch([])).shape == (0, 145)
    assert featurize(["Xx"], errors="coerce").isna().all().all()


# ---------------------------------------------------------------------------------
# fractions preset
# ---------------------------------------------------------------------------------


def test_fractions_labels():
    labels = feature_labels("fractions")
    assert labels == [f"frac_{SYMBOLS[z]}" for z in range(1, 95)]
    assert labels[0] == "frac_H" and labels[-1] == "frac_Pu" and len(labels) == 94


def test_fractions_values(parity_formulas):
    formulas = parity_formulas[:2000] + ["Fe2O3", "NaN", "La0.7Sr0.3MnO3", "He", "Pu", "Am2O3", "Xx"]
    df = featurize(formulas, preset="fractions", errors="coerce")
    assert list(df.columns) == feature_labels("fractions")
    values = df.to_numpy()
    valid = ~np.isnan(values).any(axis=1)
    np.testing.assert_allclose(values[valid].sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert not valid[-1] and not valid[-2]  # parse error; Am is beyond Pu
    assert valid[:-2].all()
    row = df.iloc[formulas.index("Fe2O3")]
    assert row["frac_Fe"] == pytest.approx(0.4) and row["frac_O"] == pytest.approx(0.6)
    assert (row.drop(["frac_Fe", "frac_O"]) == 0).all()
    row = df.iloc[formulas.index("NaN")]
    assert row["frac_Na"] == 0.5 and row["frac_N"] == 0.5
    assert df.iloc[formulas.index("Pu")]["frac_Pu"] == 1.0


# ---------------------------------------------------------------------------------
# registry and public API
# ---------------------------------------------------------------------------------


def test_presets_registry():
    assert set(PRESETS) == {"magpie", "fractions", "magpie-fractions"}
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.labels_hash == hashlib.sha256("\n".join(preset.labels).encode()).hexdigest()
        assert preset.citations
        assert feature_labels(name) == preset.labels
        assert feature_labels(name) is not preset.labels
    assert any("16028" in c for c in PRESETS["magpie"].citations)
    assert any("152" in c and "60" in c for c in PRESETS["magpie"].citations)
    assert any("ElemNet" in c for c in PRESETS["fractions"].citations)
    assert feature_labels() == PRESETS["magpie"].labels
    with pytest.raises(ValueError, match="unknown feature preset"):
        feature_labels("nope")


def test_featurize_dataframe_and_errors():
    df = featurize(["Fe2O3", "NaN", "LiFePO4"])
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == feature_labels()
    assert isinstance(df.index, pd.RangeIndex) and list(df.index) == [0, 1, 2]
    assert df.dtypes.eq(np.float64).all()
    assert featurize("Fe2O3").shape == (1, 145)

    with pytest.raises(FormulaError, match="Xx2O3"):
        featurize(["Fe2O3", "Xx2O3", "Fe(O"], errors="raise")
    with pytest.raises(FormulaError, match="Xx2O3"):
        featurize(pd.Series(["Fe2O3", "Xx2O3"], index=[10, 20]))
    coerced = featurize(["Fe2O3", "Xx2O3", "LiFePO4"], errors="coerce")
    assert coerced.iloc[1].isna().all()
    np.testing.assert_array_equal(coerced.iloc[[0, 2]].to_numpy(), featurize(["Fe2O3", "LiFePO4"]).to_numpy())
    with pytest.raises(ValueError):
        featurize(["Fe2O3"], errors="ignore")
    with pytest.raises(ValueError):
        featurize(["Fe2O3"], engine="gpu")
    with pytest.raises(ValueError):
        featurize(["Fe2O3"], preset="fractions", engine="matminer")


def test_featurize_matminer_engine(matminer_reference):
    formulas = ["Fe2O3", "Xx", "La0.7Sr0.3MnO3"]
    ref = featurize(formulas, engine="matminer", errors="coerce")
    fast = featurize(formulas, errors="coerce")
    assert list(ref.columns) == list(fast.columns)
    assert ref.iloc[1].isna().all()
    np.testing.assert_allclose(ref.to_numpy(), fast.to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ref.iloc[2].to_numpy(), matminer_reference["La0.7Sr0.3MnO3"])


def test_features_do_not_import_torch():
    code = "import sys, irscreen.features as f; f.featurize(['Fe2O3']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_magpie_fractions_is_both_presets_side_by_side():
    import irscreen

    formulas = ["Fe2O3", "NaCl", "Li3FeO4", "Ba0.5Sr0.5TiO3"]
    both = irscreen.featurize(formulas, "magpie-fractions")
    assert list(both.columns) == irscreen.feature_labels("magpie") + irscreen.feature_labels("fractions")
    np.testing.assert_array_equal(both.iloc[:, :145].to_numpy(), irscreen.featurize(formulas).to_numpy())
    np.testing.assert_array_equal(both.iloc[:, 145:].to_numpy(), irscreen.featurize(formulas, "fractions").to_numpy())
    # an element beyond Pu has no fraction column: the whole row is unusable, not half-filled
    row = irscreen.featurize(["AmO2"], "magpie-fractions", errors="coerce").to_numpy()
    assert np.isnan(row).all()
