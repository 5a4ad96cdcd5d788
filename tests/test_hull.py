"""Hull distance, known compounds and the shortlist's picture.

The hull energy is checked against pymatgen's PhaseDiagram built from the same phases
(binary, ternary and quaternary systems made here, with a candidate on a hull vertex, on
an edge, below the hull, a known stable compound, a system with no known compound, an
element no phase holds, single elements and rows of 5+ elements). ``screen --hull`` is
checked against sorting ``predict --hull`` output, like every other screen; a small
formation-energy bundle trained here carries its training rows as known phases.
"""
from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

import irscreen
from irscreen.composition import parse_batch
from irscreen.errors import IrscreenError
from irscreen.phases import KnownPhases, read_phases
from irscreen.screening import ScreenOptions, predict_file, screen_file
from irscreen.screening.hull import decomposition_text, hull_energy, known_columns

from test_screen import Killed, assert_one_line_error, kill_at, random_formulas, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------- the reference


def pymatgen_diagram(phases: dict[str, float], formula: str, without: str | None = None) -> PhaseDiagram:
    """pymatgen's phase diagram of ``formula``'s elements (at 0 eV/atom) and the ``phases``
    (reduced formula -> formation energy per atom) they hold, ``without`` one of them."""
    els = {e.symbol for e in Composition(formula).elements}
    entries = [PDEntry(Composition(e), 0.0) for e in els]
    for f, e in phases.items():
        c = Composition(f)
        if f != without and {x.symbol for x in c.elements} <= els:
            entries.append(PDEntry(c, e * c.num_atoms))
    return PhaseDiagram(entries)


def pymatgen_hull(phases: dict[str, float], formula: str, without: str | None = None) -> float:
    """pymatgen's lower-hull energy per atom at ``formula``."""
    return pymatgen_diagram(phases, formula, without).get_hull_energy_per_atom(Composition(formula))


def energies_of(formulas: list[str], phases: KnownPhases, exclude_known=False):
    b = parse_batch(formulas)
    els, fr = b.elements, b.fractions()
    return hull_energy(phases, els, fr, exclude=phases.lookup(els, fr) if exclude_known else None, decompose=True)


# Hand-made systems: energies in eV/atom.
HAND = {
    # binary Li-O: Li2O and Li2O2 on the hull, LiO3 above it
    "Li2O": -2.07, "Li2O2": -1.65, "LiO3": -0.40,
    # Fe-O and a ternary Li-Fe-O compound on the hull, one above it
    "FeO": -1.45, "Fe2O3": -1.70, "LiFeO2": -1.90, "Li5FeO4": -1.85,
    # quaternary Li-Fe-P-O, and a P-O binary
    "P2O5": -1.60, "LiFePO4": -2.15, "FePO4": -1.75,
}


@pytest.fixture(scope="module")
def hand_phases():
    return KnownPhases.from_formulas(list(HAND), list(HAND.values()), "hand-made")


def test_hand_systems_match_pymatgen(hand_phases):
    cases = [
        "Li2O",          # exactly a hull vertex
        "Li5O3",         # on the Li2O-Li2O2 tie line
        "LiO",           # = Li2O2, another spelling of a vertex
        "LiO2",          # between Li2O2 and O (LiO3 lies above that line)
        "Li2Fe2O4",      # = LiFeO2, another spelling
        "Li3FeO3",       # ternary, inside the Li2O-LiFeO2 region
        "Li2FePO5",      # quaternary
        "LiFePO4",       # a known quaternary vertex
        "Li", "O",       # single elements
        "NaCl",          # a system with no known compound: 0
        "LiXeO",         # Xe is in no phase
        "Li2FeP2O7Na",   # 5 elements
        "LiNaKFePO4Cl",  # 7 elements
    ]
    e, parts = energies_of(cases, hand_phases)
    for f, got, p in zip(cases, e, parts):
        assert abs(got - pymatgen_hull(HAND, f)) < 1e-6, f
        assert got <= 0
        assert abs(sum(w for _, w in p) - 1) < 1e-9
    assert e[cases.index("NaCl")] == 0 and e[cases.index("Li")] == 0
    assert e[cases.index("Li2O")] == pytest.approx(HAND["Li2O"], abs=1e-12)  # a vertex is its own hull
    assert parts[cases.index("NaCl")] == [("Cl", 0.5), ("Na", 0.5)]
    assert {n for n, _ in parts[cases.index("Li5O3")]} == {"Li2O", "Li2O2"}
    assert parts[cases.index("LiO")] == [("Li2O2", pytest.approx(1.0))]


def test_known_compound_is_measured_against_the_others(hand_phases):
    """Decomposition enthalpy: a stable known compound gets a negative hull distance."""
    known = ["Li2O", "LiFeO2", "LiFePO4", "Fe2O3", "LiO3"]
    e, parts = energies_of(known, hand_phases, exclude_known=True)
    for f, got, p in zip(known, e, parts):
        assert abs(got - pymatgen_hull(HAND, f, without=f)) < 1e-6, f
        assert f not in [n for n, _ in p]
    dist = np.array([HAND[f] for f in known]) - e
    assert (dist[:4] < 0).all()  # on the hull: stable against every other phase
    assert dist[4] > 0  # LiO3 is above the Li2O2-O tie line
    # pymatgen's own name for it: the decomposition (phase separation) energy of a stable entry
    pd_ = pymatgen_diagram(HAND, "LiFePO4")
    target = next(x for x in pd_.all_entries if x.composition.reduced_formula == "LiFeO2")
    _, e_sep = pd_.get_decomp_and_phase_separation_energy(target)
    assert dist[1] == pytest.approx(e_sep, abs=1e-6)


def test_hull_distance_of_predictions_above_and_below_the_hull(hand_phases):
    """A prediction below the hull gets a negative distance, one above a positive one:
    pymatgen's e_above_hull (allow_negative) for an entry with that energy."""
    from irscreen.screening.hull import hull_columns

    formulas = ["Li3FeO3", "Li3FeO3", "Li2FePO5", "FeO2", "NaCl"]
    pred = np.array([-2.5, -1.5, -1.0, -1.0, -0.2], dtype=np.float32)
    b = parse_batch(formulas)
    cols = hull_columns(hand_phases, b.elements, b.fractions(), pred, np.full(5, 0.1, np.float32),
                        np.full(5, -1))
    for f, p, hd in zip(formulas, pred, cols["hull_distance"]):
        c = Composition(f)
        _, ref = pymatgen_diagram(HAND, f).get_decomp_and_e_above_hull(PDEntry(c, float(p) * c.num_atoms),
                                                                        allow_negative=True)
        assert hd == pytest.approx(ref, abs=1e-6), f
    assert cols["hull_distance"][0] < 0 < cols["hull_distance"][1]
    assert cols["hull_distance"][4] == pred[4]  # no known compound in Na-Cl: the hull is the elements


def test_decomposition_matches_pymatgen(hand_phases):
    f = "Li3FeO3"
    (_,), (parts,) = energies_of([f], hand_phases)
    decomp = pymatgen_diagram(HAND, f).get_decomposition(Composition(f))
    ref = {e.composition.reduced_formula: a for e, a in decomp.items()}
    assert {n: pytest.approx(w, abs=1e-9) for n, w in parts} == ref
    text = decomposition_text(parts)
    assert text == " + ".join(f"{w:.4g} {n}" for n, w in parts) and " + " in text
    assert text.split(" ")[1] in ref


def random_phase_set(seed: int, elements: list[str], per_system=(0, 5)) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for k in (2, 3, 4):
        for system in itertools.combinations(elements, k):
            for _ in range(int(rng.integers(*per_system))):
                comp = Composition({e: int(a) for e, a in zip(system, rng.integers(1, 6, size=k))})
                out.setdefault(comp.reduced_formula, float(rng.uniform(-2.5, 0.5)))
    return out


def test_random_systems_match_pymatgen():
    """Binary to quaternary phases over 7 elements (two with no phase at all), candidates
    of 1 to 7 elements: every hull energy within 1e-6 eV/atom of pymatgen's."""
    phases = random_phase_set(1, ["Li", "Mn", "Fe", "P", "O"])
    kp = KnownPhases.from_formulas(list(phases), list(phases.values()))
    rng = np.random.default_rng(2)
    pool = ["Li", "Mn", "Fe", "P", "O", "Na", "Cl"]
    cands = []
    for _ in range(300):
        k = int(rng.integers(1, 8))
        cands.append("".join(f"{e}{int(a)}" for e, a in zip(rng.choice(pool, k, replace=False), rng.integers(1, 9, k))))
    cands += list(phases)[:40]  # vertices (and points above the hull) exactly
    e, _ = energies_of(cands, kp)
    ref = np.array([pymatgen_hull(phases, f) for f in cands])
    np.testing.assert_allclose(e, ref, atol=1e-6, rtol=0)
    assert (e < -0.1).sum() > 100  # a real test: most candidates are below 0
    e_ex, _ = energies_of(cands[-40:], kp, exclude_known=True)
    ref_ex = [pymatgen_hull(phases, f, without=Composition(f).reduced_formula) for f in cands[-40:]]
    np.testing.assert_allclose(e_ex, ref_ex, atol=1e-6, rtol=0)


def test_phases_keep_the_lowest_per_reduced_formula():
    kp = KnownPhases.from_formulas(["Fe2O3", "Fe4O6", "O3Fe2", "FeO", "Fe", "O2"], [-1.0, -1.5, -1.2, -1.3, 0.2, 0.0])
    assert len(kp) == 2  # Fe2O3 (three spellings) and FeO; elements are at 0 by definition
    b = parse_batch(["Fe2O3", "Fe8O12", "FeO", "Fe3O4", "Fe", "O"])
    cols, idx = known_columns(kp, b.elements, b.fractions())
    assert cols["known"].tolist() == [True, True, True, False, True, True]
    assert cols["known_value"][:3].tolist() == [-1.5, -1.5, -1.3] and np.isnan(cols["known_value"][3])
    assert cols["known_value"][4:].tolist() == [0.0, 0.0]
    assert KnownPhases.from_formulas(["Fe4O6", "FeO"], [-1.5, -1.3]).sha256 == kp.sha256


# --------------------------------------------------------------------------- a formation-energy bundle


FE_ELEMENTS = ["Li", "Na", "Mg", "Al", "Si", "Fe", "Ni", "O", "S", "F"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("hull")


@pytest.fixture(scope="module")
def fe_model(work):
    """A 2-member 32-wide bundle trained with `irscreen train` on a column named
    formation_energy (eV/atom): its training rows become its known phases."""
    from typer.testing import CliRunner

    from irscreen import cli
    from irscreen import data as data_mod

    rng = np.random.default_rng(11)
    formulas = []
    for _ in range(400):
        k = int(rng.integers(2, 4))
        formulas.append("".join(f"{e}{int(a)}" for e, a in zip(rng.choice(FE_ELEMENTS, k, replace=False),
                                                                 rng.integers(1, 5, k))))
    feats = irscreen.featurize(formulas).to_numpy(np.float64)
    y = -1.0 + 0.02 * feats[:, 0] - 0.3 * feats[:, 40] / (1 + np.abs(feats[:, 40]))
    path = work / "fe-train.parquet"
    pq.write_table(pa.table({"formula": formulas, "formation_energy": y}), path)
    out = work / "fe-bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_mod, "CACHE_DIR", work / "feature-cache")
        r = CliRunner().invoke(cli.app, [
            "train", str(path), "--target", "formation_energy", "--units", "eV/atom", "-o", str(out),
            "--name", "tiny-fe", "--arch", "32BARx2-1", "--epochs", "3", "--batch-size", "64", "--device", "cpu", "--precision", "fp32",
            "--ensemble", "2", "--storage", "float32", "--jobs", "1", "--checkpoint-dir", str(work / "ckpt")])
    assert r.exit_code == 0, r.output
    return {"path": out, "formulas": formulas, "y": y}


@pytest.fixture(scope="module")
def fe_candidates(work, fe_model):
    """Random candidates over the model's elements plus Ca/Cl (in no phase), its own
    training compositions (known), single elements and bad rows."""
    rng = np.random.default_rng(5)
    pool = FE_ELEMENTS + ["Ca", "Cl"]
    formulas = []
    for _ in range(1500):
        k = int(rng.integers(1, 6))
        els, amounts = rng.choice(pool, k, replace=False), rng.integers(1, 7, k)
        formulas.append("".join(f"{e}{int(a)}" for e, a in zip(els, amounts)))
    known = fe_model["formulas"][:40]
    formulas[100:140] = known
    formulas[7], formulas[900] = "Fe2O3)", None
    path = work / "fe-candidates.parquet"
    pq.write_table(pa.table({"formula": pa.array(formulas, pa.string()), "id": np.arange(len(formulas))}), path)
    return {"path": path, "formulas": formulas, "known": known}


@pytest.fixture(scope="module")
def fe_predicted(work, fe_model, fe_candidates):
    out = work / "fe-predicted.parquet"
    s = predict_file(fe_candidates["path"], out, model=fe_model["path"], device="cpu", jobs=1, hull=True)
    assert s.rows_read == len(fe_candidates["formulas"]) and s.rows_rejected == 2
    return pq.read_table(out).to_pandas()


def test_bundle_carries_its_training_rows_as_phases(fe_model):
    m = irscreen.load_model(fe_model["path"])
    entry = m.manifest["phases"]
    assert entry["file"] == "phases.parquet" and entry["rows"] == len(m.phases)
    stored = pq.read_table(fe_model["path"] / "phases.parquet")
    assert stored.column_names == ["formula", "formation_energy_per_atom"]
    ref = KnownPhases.from_formulas(fe_model["formulas"], fe_model["y"])
    assert m.phases.sha256 == ref.sha256  # every training and validation composition, lowest kept
    assert "## Known phases" in (fe_model["path"] / "README.md").read_text()


def test_predict_hull_columns(fe_model, fe_candidates, fe_predicted):
    df = fe_predicted
    assert list(df.columns)[-7:] == ["prediction", "uncertainty", "extrapolation", "known", "known_value",
                                     "hull_distance", "hull_uncertainty"]
    phases = irscreen.load_model(fe_model["path"]).phases
    ref_phases = {phases.name(i): float(e) for i, e in enumerate(phases.energies)}
    b = parse_batch(df["formula"].tolist())
    idx = phases.lookup(b.elements, b.fractions())
    for i in np.random.default_rng(0).choice(len(df), 40, replace=False):
        f = df["formula"].iat[i]
        own = phases.name(int(idx[i])) if idx[i] >= 0 else None
        hull = pymatgen_hull(ref_phases, f, without=own)
        assert abs(float(df["prediction"].iat[i]) - hull - df["hull_distance"].iat[i]) < 2e-6, f
    np.testing.assert_array_equal(df["hull_uncertainty"], df["uncertainty"])
    assert (df["hull_distance"] >= df["prediction"]).all()  # the hull energy is never above 0
    known_rows = df["formula"].isin(fe_candidates["known"])
    assert df.loc[known_rows, "known"].all() and df.loc[known_rows, "known_value"].notna().all()
    single = df["formula"].str.fullmatch(r"[A-Z][a-z]?\d*")
    assert df.loc[single, "known"].all() and (df.loc[single, "known_value"] == 0).all()
    assert df.loc[~df["known"], "known_value"].isna().all()
    assert (df["hull_distance"] < 0).any()  # some predictions beat every known phase


@pytest.mark.parametrize("opts", [dict(top=50), dict(top=10**6), dict(top=40, kappa=1.0),
                                  dict(top=30, max_per_system=1, include_elements=["O"])])
def test_screen_hull_is_a_sort_of_predict_hull(work, fe_model, fe_candidates, fe_predicted, opts):
    out = work / "fe-top.parquet"
    res = screen_file(fe_candidates["path"], out, ScreenOptions(hull=True, **opts), model=fe_model["path"],
                      device="cpu", jobs=1, batch_rows=200)
    got = pq.read_table(out).to_pandas()
    df = fe_predicted
    score = df["hull_distance"].astype(np.float64) + opts.get("kappa", 0.0) * df["hull_uncertainty"].astype(np.float64)
    order = np.lexsort((df["id"].to_numpy(), score.to_numpy()))
    if "include_elements" in opts:
        systems = ["-".join(sorted(Composition(f).as_dict())) for f in df["formula"]]
        taken, seen = [], set()
        for i in order:
            if "O" in systems[i].split("-") and systems[i] not in seen:
                seen.add(systems[i])
                taken.append(i)
        order = np.array(taken)
    exp = df.iloc[order[: opts["top"]]].reset_index(drop=True)
    assert got["id"].tolist() == exp["id"].tolist()
    for c in ("prediction", "hull_distance", "known_value"):
        np.testing.assert_array_equal(got[c].to_numpy(), exp[c].to_numpy())
    assert got["decomposition"].str.len().gt(0).all()
    if opts["top"] < 100:
        assert 0 < res.hull_rows < len(df)  # rows already past the cutoff got no hull


def test_decomposition_column(work, fe_model, fe_candidates):
    out = work / "fe-decomp.parquet"
    screen_file(fe_candidates["path"], out, ScreenOptions(top=25, hull=True), model=fe_model["path"], device="cpu",
                jobs=1)
    got = pq.read_table(out).to_pandas()
    phases = irscreen.load_model(fe_model["path"]).phases
    ref_phases = {phases.name(i): float(e) for i, e in enumerate(phases.energies)}
    for f, text, hd, pred in got[["formula", "decomposition", "hull_distance", "prediction"]].itertuples(index=False):
        parts = [(p.split(" ", 1)[1], float(p.split(" ", 1)[0])) for p in text.split(" + ")]
        assert abs(sum(w for _, w in parts) - 1) < 1e-3, text
        # the energy of the decomposition is the hull energy the distance is measured from
        energy = sum(w * ref_phases.get(n, 0.0) for n, w in parts)
        assert abs((pred - energy) - hd) < 1e-3, (f, text)


def test_exclude_known(capsys, work, fe_model, fe_candidates, fe_predicted):
    out = work / "fe-new.parquet"
    code, _, err = run_cli(capsys, "screen", fe_candidates["path"], "--top", "100000", "-m", fe_model["path"],
                           "--hull", "--exclude-known", "-j", "1", "--device", "cpu", "-o", out)
    assert code == 0, err
    got = pq.read_table(out).to_pandas()
    n_known = int(fe_predicted["known"].sum())
    assert n_known >= 40 and not got["known"].any()
    assert len(got) == len(fe_predicted) - n_known
    assert f"left out {n_known:,} screened rows that are known phases" in " ".join(err.split())


def test_phases_file_with_bad_rows(capsys, work, fe_model, fe_candidates):
    csv = work / "my-phases.csv"
    csv.write_text("formula,formation_energy_per_atom\n"
                   "LiFeO2,-1.9\nFe2O3,-1.7\nNaN,-0.5\nXx2O,-1.0\nFeO,\nLi2O,abc\nMgO,inf\n,-1.0\nFe4O6,-1.8\n")
    ph, rejects = read_phases(csv)
    assert len(ph) == 3  # LiFeO2, Fe2O3 (the lower of two spellings), NaN (sodium nitride)
    assert rejects.column("row").to_pylist() == [3, 4, 5, 6, 7]
    errors = rejects.column("error").to_pylist()
    assert "unknown element 'Xx'" in errors[0] and errors[1] == "missing formation energy"
    assert "not a number" in errors[2] and "not a finite number" in errors[3] and "empty formula" in errors[4]

    out = work / "fe-myphases.parquet"
    code, _, err = run_cli(capsys, "predict", fe_candidates["path"], "-o", out, "-m", fe_model["path"], "--hull",
                           "--phases", csv, "-j", "1", "--device", "cpu")
    assert code == 0, err
    rej = pq.read_table(work / "fe-myphases.phases-rejects.parquet")
    assert rej.equals(rejects) and "5 rows rejected" in err
    df = pq.read_table(out).to_pandas()
    mine = {"LiFeO2": -1.9, "Fe2O3": -1.8, "NaN": -0.5}
    reduced = [Composition(f).reduced_formula for f in df["formula"]]
    single = df["formula"].str.fullmatch(r"[A-Z][a-z]?\d*")
    assert df["known"].tolist() == [r in mine or s for r, s in zip(reduced, single)]
    for row in np.flatnonzero(~df["known"].to_numpy())[:30]:
        ref = pymatgen_hull(mine, df["formula"].iat[row])
        assert df["hull_distance"].iat[row] == pytest.approx(df["prediction"].iat[row] - ref, abs=2e-6)

    for text, needle in [("formula,energy_above_hull\nFeO,0.1\n", "no formation-energy column"),
                         ("formula,formation_energy_per_atom\nXx,1\nFeO,\n", "no usable phases")]:
        bad = work / "bad-phases.csv"
        bad.write_text(text)
        code, _, err = run_cli(capsys, "screen", fe_candidates["path"], "--top", "5", "-m", fe_model["path"],
                               "--hull", "--phases", bad, "-j", "1", "--device", "cpu", "-o", work / "never.parquet")
        assert_one_line_error(code, err, "bad-phases.csv", needle)
    code, _, err = run_cli(capsys, "predict", fe_candidates["path"], "-o", work / "never.parquet", "-m",
                           fe_model["path"], "--phases", work / "missing.csv")
    assert_one_line_error(code, err, "missing.csv", "no such file")
    assert not (work / "never.parquet").exists()


def test_bundle_without_phases(capsys, work, fe_model, fe_candidates):
    bare = work / "bare-bundle"
    shutil.copytree(fe_model["path"], bare, dirs_exist_ok=True)
    m = json.loads((bare / "manifest.json").read_text())
    del m["phases"]
    (bare / "manifest.json").write_text(json.dumps(m))
    (bare / "phases.parquet").unlink()
    assert irscreen.load_model(bare).phases is None
    out = work / "bare.parquet"
    predict_file(fe_candidates["path"], out, model=bare, device="cpu", jobs=1)
    assert not {"known", "known_value"} & set(pq.read_table(out).column_names)  # absent, not null
    for args in (["screen", fe_candidates["path"], "--top", "5", "--hull"],
                 ["predict", fe_candidates["path"], "--hull"],
                 ["screen", fe_candidates["path"], "--top", "5", "--exclude-known"]):
        code, _, err = run_cli(capsys, *args, "-m", bare, "-j", "1", "--device", "cpu", "-o", work / "never.parquet")
        assert_one_line_error(code, err, "has no known phases", "--phases")


def test_tampered_phases_are_refused(capsys, work, fe_model, fe_candidates):
    bad = work / "tampered-bundle"
    shutil.copytree(fe_model["path"], bad, dirs_exist_ok=True)
    t = pq.read_table(bad / "phases.parquet")
    pq.write_table(t.slice(1), bad / "phases.parquet")
    code, _, err = run_cli(capsys, "predict", fe_candidates["path"], "-o", work / "never.parquet", "-m", bad)
    assert_one_line_error(code, err, "phases.parquet", "sha256")


def test_hull_refuses_other_objectives(capsys, work, fe_model, fe_candidates):
    code, _, err = run_cli(capsys, "screen", fe_candidates["path"], "--top", "5", "--hull", "--maximize", "-m",
                           fe_model["path"], "-o", work / "never.parquet")
    assert_one_line_error(code, err, "--hull", "--maximize")


RESUME = dict(top=40, hull=True, kappa=0.5, exclude_known=True, plot=True)


@pytest.fixture(scope="module")
def hull_resume_reference(work, fe_model, fe_candidates):
    ref = work / "fe-resume-ref.parquet"
    screen_file(fe_candidates["path"], ref, ScreenOptions(**RESUME), model=fe_model["path"], device="cpu", jobs=1,
                batch_rows=300)
    return pq.read_table(ref)


@pytest.mark.parametrize("batch,point", [(2, "top"), (3, "commit"), (None, "final-rename-0")])
def test_resume_with_hull(work, fe_model, fe_candidates, hull_resume_reference, batch, point):
    kw = dict(model=fe_model["path"], device="cpu", jobs=1, batch_rows=300)
    opts = RESUME
    out = work / f"fe-resume-{batch}-{point}.parquet"
    with pytest.raises(Killed):
        screen_file(fe_candidates["path"], out, ScreenOptions(**opts), _kill=kill_at(batch, point), **kw)
    screen_file(fe_candidates["path"], out, ScreenOptions(**opts), resume=True, **kw)
    assert pq.read_table(out).equals(hull_resume_reference, check_metadata=True)  # pool statistics included


def test_resume_refuses_other_phases(work, fe_model, fe_candidates):
    kw = dict(model=fe_model["path"], device="cpu", jobs=1, batch_rows=300)
    out = work / "fe-resume-phases.parquet"
    with pytest.raises(Killed):
        screen_file(fe_candidates["path"], out, ScreenOptions(top=10, hull=True), _kill=kill_at(2, "commit"), **kw)
    mine = work / "resume-phases.csv"
    mine.write_text("formula,formation_energy_per_atom\nFeO,-1.4\n")
    with pytest.raises(IrscreenError, match="other input, model or options"):
        screen_file(fe_candidates["path"], out, ScreenOptions(top=10, hull=True), resume=True, phases=mine, **kw)


def test_python_api_hull(fe_model, fe_candidates, fe_predicted):
    formulas = [f for f in fe_candidates["formulas"] if f][:300]
    top = irscreen.screen(formulas, top=5, model=fe_model["path"], hull=True, exclude_known=True, device="cpu")
    assert {"hull_distance", "hull_uncertainty", "known", "known_value", "decomposition"} <= set(top.columns)
    assert top["hull_distance"].is_monotonic_increasing and not top["known"].any()
    ref = fe_predicted.set_index("formula")["hull_distance"]
    assert top["hull_distance"].tolist() == [ref[f].iloc[0] if hasattr(ref[f], "iloc") else ref[f]
                                             for f in top["formula"]]


# --------------------------------------------------------------------------- the picture


def test_screen_plot_and_plot_command(capsys, work, fe_model, fe_candidates):
    import matplotlib.image

    out = work / "fe-plot.parquet"
    code, _, err = run_cli(capsys, "screen", fe_candidates["path"], "--top", "30", "-m", fe_model["path"], "--hull",
                           "--plot", "-j", "1", "--device", "cpu", "-o", out)
    assert code == 0, err
    png = work / "fe-plot.png"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 500 and img.shape[1] > 800
    meta = json.loads(pq.read_schema(out).metadata[b"irscreen.screen"])
    pool = meta["pool"]
    assert pool["rows"] == len(fe_candidates["formulas"]) - 2  # every screened row, pictured
    assert sum(pool["hist"]) + sum(pool["hist_known"]) == pool["rows"]
    png.unlink()
    code, _, err = run_cli(capsys, "plot", out)
    assert code == 0, err
    assert matplotlib.image.imread(png).ndim == 3
    csv = work / "fe-plot.csv"
    pd.read_parquet(out).to_csv(csv, index=False)
    code, _, err = run_cli(capsys, "plot", csv, "-o", work / "from-csv.png")
    assert code == 0 and "no pool statistics" in err
    assert matplotlib.image.imread(work / "from-csv.png").ndim == 3


def test_plain_screen_plot(work, fe_model, fe_candidates):
    import matplotlib.image

    out = work / "fe-plain-plot.parquet"
    res = screen_file(fe_candidates["path"], out, ScreenOptions(top=20, kappa=1.0, plot=True), model=fe_model["path"],
                      device="cpu", jobs=1)
    assert res.plot.endswith("fe-plain-plot.png")
    assert matplotlib.image.imread(res.plot).ndim == 3
    assert "hull_distance" not in res.shortlist.column_names


# --------------------------------------------------------------------------- the shipped bundle


def test_shipped_bundle_has_its_oqmd_phases(tmp_path):
    m = irscreen.load_model("formation-enthalpy")
    assert m.phases is not None and len(m.phases) == m.manifest["phases"]["rows"] > 90_000
    assert "Fe2O3" in m.manifest["phases"]["common_missing"]
    pq.write_table(pa.table({"formula": ["MgO", "Mg2O2", "Fe2O3", "LiFeO2", "Li3FeN2"]}), tmp_path / "c.parquet")
    predict_file(tmp_path / "c.parquet", tmp_path / "p.parquet", device="cpu", jobs=1, hull=True)
    df = pq.read_table(tmp_path / "p.parquet").to_pandas()
    assert df["known"].tolist()[:3] == [True, True, False]
    assert df["known_value"].iat[0] == df["known_value"].iat[1] < -2.5  # OQMD's MgO, about -3 eV/atom
    assert (df["hull_distance"] >= df["prediction"]).all()


def test_highs_fallback_agrees_with_the_batched_simplex():
    """Rows the batched simplex cannot certify are re-solved by HiGHS: both give one optimum."""
    from irscreen.screening.hull import _highs, simplex

    rng = np.random.default_rng(3)
    n, d, m = 60, 4, 12
    C = rng.random((n, d, m))
    C /= C.sum(1, keepdims=True)
    E = rng.uniform(-2.0, 0.5, (n, m))
    E[:, -3:] = np.inf  # padding columns
    x = rng.random((n, d))
    x /= x.sum(1, keepdims=True)
    e1, b1, w1 = simplex(x, C, E)
    e2, b2, w2 = _highs(x, C, E)
    np.testing.assert_allclose(e1, e2, atol=1e-7)
    assert (e1 < 0).all() and (w1 > -1e-12).all() and (w2 > -1e-9).all()
