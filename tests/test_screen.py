"""predict and screen: the shortlist is exactly a full sort of ``predict`` output by the
documented score (ties by input order), filters and caps behave as documented, every
row is accounted for, a killed screen resumes to the identical result, and bad input is
one clear error.

Most tests use a tiny bundle trained here on a synthetic target (seconds, runs anywhere);
the shipped 'formation-enthalpy' model is used where its behaviour matters (API, and
predict == screen with real-sized GEMMs).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import irscreen
from irscreen import cli
from irscreen.errors import IrscreenError
from irscreen.io import default_rejects_path
from irscreen.screening import ScreenOptions, TopK, predict_file, screen_file

ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Al", "Si", "Ti", "Fe", "Ni", "O", "S"]
N_RANDOM = 3000
BIG_K = 10**6  # more than any input here has rows
INVALID = {  # row -> bad formula, spread over several batches of 500
    3: "Xx2",
    640: "",
    1290: None,
    2015: "Fe2O3)",
    None: "Qq",  # last row
}
TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def random_formulas(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 5))
        els = rng.choice(ELEMENTS, size=k, replace=False)
        out.append("".join(f"{e}{int(rng.integers(1, 7))}" for e in els))
    return out


def composition(formula: str) -> dict[str, int]:
    """Element -> integer amount, for the integer formulas built here (independent of irscreen's parser)."""
    comp: dict[str, int] = {}
    for el, n in TOKEN.findall(formula):
        comp[el] = comp.get(el, 0) + (int(n) if n else 1)
    return comp


def system_key(formula: str) -> str:
    return "-".join(sorted(composition(formula)))


def reduced_key(formula: str) -> tuple:
    comp = composition(formula)
    g = reduce(math.gcd, comp.values())
    return tuple(sorted((el, n // g) for el, n in comp.items()))


def build_candidates() -> tuple[list, list[int]]:
    """~3000 random formulas, exact duplicates (ties), Fe2O3/Fe4O6, invalid rows."""
    rng = np.random.default_rng(7)
    formulas: list = random_formulas(N_RANDOM, seed=3)
    for src in rng.choice(N_RANDOM, size=60, replace=False):  # exact duplicates -> tied predictions
        formulas.insert(int(rng.integers(src + 1, len(formulas) + 1)), formulas[src])
    # one reduced composition, several spellings (Fe2O3 == Fe4O6)
    formulas[10], formulas[11], formulas[12], formulas[2500] = "Fe2O3", "O3Fe2", "Fe2O3", "Fe4O6"
    invalid_rows = []
    for row, bad in INVALID.items():
        if row is None:
            formulas.append(bad)
            invalid_rows.append(len(formulas) - 1)
        else:
            formulas[row] = bad
            invalid_rows.append(row)
    return formulas, sorted(invalid_rows)


def candidates_table(formulas: list) -> pa.Table:
    n = len(formulas)
    return pa.table({
        "formula": pa.array(formulas, pa.string()),
        "id": pa.array(np.arange(n), pa.int64()),  # = input row number
        "tag": pa.array([f"cand-{i:05d}" for i in range(n)], pa.string()),
        "weight": pa.array(np.linspace(0.0, 1.0, n), pa.float64()),
    })


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screen")


@pytest.fixture(scope="session")
def candidates(work):
    formulas, invalid_rows = build_candidates()
    path = work / "candidates.parquet"
    pq.write_table(candidates_table(formulas), path)
    return {"path": path, "formulas": formulas, "invalid": invalid_rows, "n": len(formulas)}


@pytest.fixture(scope="session")
def tiny_model(work) -> Path:
    """A 2-member 32-wide bundle trained for 3 epochs on a target computed from the features."""
    from irscreen import data as data_mod
    from irscreen.config import TrainConfig
    from irscreen.train import train_bundle

    formulas = random_formulas(400, seed=11)
    feats = irscreen.featurize(formulas).to_numpy(np.float64)
    y = feats[:, 0] * 0.05 + feats[:, 20] * 0.01 - feats[:, 40] * 0.002
    data = work / "train.parquet"
    pq.write_table(pa.table({"formula": formulas, "y": y}), data)
    out = work / "tiny-bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_mod, "CACHE_DIR", work / "feature-cache")
        td = data_mod.load_training_data(data, "y", jobs=1, seed=0)
        cfg = TrainConfig(arch="32BARx2-1", epochs=3, batch_size=64, device="cpu", precision="fp32", seed=0,
                          ensemble=2, storage="float32")
        train_bundle(td, cfg, out, name="tiny", units="au", checkpoint_dir=work / "ckpt")
    return out


@pytest.fixture(scope="session")
def predicted(candidates, tiny_model, work) -> pd.DataFrame:
    """`predict` output for every candidate (the reference every screen is checked against)."""
    out = work / "predicted.parquet"
    s = predict_file(candidates["path"], out, model=tiny_model, device="cpu", jobs=1)
    assert s.rows_read == candidates["n"] and s.rows_rejected == len(candidates["invalid"])
    return pq.read_table(out).to_pandas()


def expected_shortlist(pred: pd.DataFrame, top: int, objective="minimize", target_value=None, kappa=0.0,
                       include=(), exclude=(), max_elements=None, max_per_system=None, unique=False) -> pd.DataFrame:
    """The documented result computed from `predict` output: sort everything by score
    (ties: input row), filter, then one greedy pass applying the per-group caps."""
    mean = pred["prediction"].to_numpy().astype(np.float64)
    std = pred["uncertainty"].to_numpy().astype(np.float64)
    if objective == "minimize":
        score = mean + kappa * std
    elif objective == "maximize":
        score = -(mean - kappa * std)
    else:
        score = np.abs(mean - target_value) + kappa * std
    order = np.lexsort((pred["id"].to_numpy(), score))
    taken, per_system, comps_taken = [], {}, set()
    for i in order:
        formula = pred["formula"].iat[i]
        els = set(composition(formula))
        if not set(include) <= els or els & set(exclude):
            continue
        if max_elements is not None and len(els) > max_elements:
            continue
        comp, system = reduced_key(formula), system_key(formula)
        if unique and comp in comps_taken:
            continue
        if max_per_system is not None and per_system.get(system, 0) >= max_per_system:
            continue
        comps_taken.add(comp)
        per_system[system] = per_system.get(system, 0) + 1
        taken.append(i)
        if len(taken) == top:
            break
    return pred.iloc[taken].reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame, exp: pd.DataFrame) -> None:
    assert got["rank"].tolist() == list(range(1, len(exp) + 1))
    assert got["id"].tolist() == exp["id"].tolist()
    assert got["formula"].tolist() == exp["formula"].tolist()
    # exact float equality: one numeric path for predict and screen
    np.testing.assert_array_equal(got["prediction"].to_numpy(), exp["prediction"].to_numpy())
    np.testing.assert_array_equal(got["uncertainty"].to_numpy(), exp["uncertainty"].to_numpy())


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the installed entry point (irscreen.cli.main) in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["irscreen", *map(str, args)])
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def screen_counts(err: str) -> tuple[int, int, int]:
    text = " ".join(err.split())
    m = re.search(r"([\d,]+) rows read = ([\d,]+) screened \+ ([\d,]+) rejected", text)
    assert m, err
    return tuple(int(g.replace(",", "")) for g in m.groups())


# --------------------------------------------------------------------------- ranking


def test_candidates_have_ties(predicted):
    """Guard for the tie tests: exact duplicate formulas give identical predictions."""
    dup = predicted[predicted.duplicated("formula", keep=False)]
    assert len(dup) >= 100
    for _, group in dup.groupby("formula"):
        assert group["prediction"].nunique() == 1 and group["uncertainty"].nunique() == 1


@pytest.mark.parametrize("kappa", [0.0, 1.5, -1.0])
@pytest.mark.parametrize("objective", ["minimize", "maximize", "target"])
def test_top_k_is_a_full_sort_of_predict(candidates, tiny_model, predicted, work, objective, kappa):
    target_value = float(np.median(predicted["prediction"])) if objective == "target" else None
    opts = dict(objective=objective, target_value=target_value, kappa=kappa)
    for top in (25, BIG_K):
        out = work / f"top-{objective}-{kappa}-{top}.parquet"
        res = screen_file(candidates["path"], out, ScreenOptions(top=top, **opts), model=tiny_model, device="cpu",
                          jobs=1, batch_rows=500)
        got = pq.read_table(out).to_pandas()
        exp = expected_shortlist(predicted, top, **opts)
        assert_same_rows(got, exp)
        assert res.shortlist.equals(pq.read_table(out))
        if top == BIG_K:  # K beyond the input: every valid row, ranked
            assert len(got) == len(predicted) == candidates["n"] - len(candidates["invalid"])
            assert list(got.columns) == ["rank", "formula", "id", "tag", "weight", "prediction", "uncertainty", "extrapolation"]


def test_ties_are_broken_by_input_order(candidates, tiny_model, predicted, work):
    out = work / "ties.parquet"
    screen_file(candidates["path"], out, ScreenOptions(top=BIG_K), model=tiny_model, device="cpu", jobs=1,
                batch_rows=333)
    got = pq.read_table(out).to_pandas()
    pred, ids = got["prediction"].to_numpy(), got["id"].to_numpy()
    assert np.all(np.diff(pred) >= 0)
    tied = np.flatnonzero(np.diff(pred) == 0)
    assert len(tied) >= 60  # the duplicates really tie
    assert np.all(ids[tied + 1] > ids[tied])
    for _, group in got[got.duplicated("formula", keep=False)].groupby("formula"):
        assert group["id"].is_monotonic_increasing and group["rank"].is_monotonic_increasing


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_top_must_be_positive(capsys, candidates, tiny_model, bad, work):
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", bad, "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "-o", work / "never.parquet")
    assert_one_line_error(code, err, "--top", bad)
    assert not (work / "never.parquet").exists()
    with pytest.raises(IrscreenError, match="--top"):
        screen_file(candidates["path"], work / "never.parquet", ScreenOptions(top=int(bad)), model=tiny_model)


# --------------------------------------------------------------------------- predict == screen


def test_predict_and_screen_agree_across_batch_rows_and_jobs(candidates, tiny_model, predicted, work):
    for batch_rows, jobs in ((7, 1), (65_536, 2), (500, 2)):
        out = work / f"pred-{batch_rows}-{jobs}.parquet"
        predict_file(candidates["path"], out, model=tiny_model, device="cpu", jobs=jobs, batch_rows=batch_rows)
        assert pq.read_table(out).equals(pq.read_table(work / "predicted.parquet"))
    for batch_rows, jobs in ((7, 1), (65_536, 2)):
        out = work / f"screen-{batch_rows}-{jobs}.parquet"
        # a filter makes inference calls of a few rows: still the same numbers
        opts = ScreenOptions(top=BIG_K, include_elements=["O"], kappa=0.5)
        screen_file(candidates["path"], out, opts, model=tiny_model, device="cpu", jobs=jobs, batch_rows=batch_rows)
        got = pq.read_table(out).to_pandas()
        assert_same_rows(got, expected_shortlist(predicted, BIG_K, include=["O"], kappa=0.5))


def test_shipped_model_predict_equals_screen_for_every_row(work):
    """Real-sized GEMMs: a row's prediction may not depend on how many rows share its
    inference call (single rows left by a filter or a batch boundary included)."""
    formulas = random_formulas(150, seed=5) + ["Fe2O3", "LiFeO2"]
    path = work / "shipped.parquet"
    pq.write_table(candidates_table(formulas), path)
    predict_file(path, work / "shipped.pred.parquet", device="cpu", jobs=1)
    pred = pq.read_table(work / "shipped.pred.parquet").to_pandas()
    opts = ScreenOptions(top=BIG_K, include_elements=["Fe"])
    screen_file(path, work / "shipped.top.parquet", opts, device="cpu", jobs=1, batch_rows=5)
    got = pq.read_table(work / "shipped.top.parquet").to_pandas()
    assert len(got) > 20
    assert_same_rows(got, expected_shortlist(pred, BIG_K, include=["Fe"]))


# --------------------------------------------------------------------------- filters and caps


@pytest.mark.parametrize("filters", [
    dict(include=["Fe", "O"]),
    dict(exclude=["O", "S"]),
    dict(max_elements=2),
    dict(include=["Li"], exclude=["Ni"], max_elements=3),
])
def test_element_filters(candidates, tiny_model, predicted, work, filters):
    opts = ScreenOptions(top=BIG_K, include_elements=list(filters.get("include", [])),
                         exclude_elements=list(filters.get("exclude", [])), max_elements=filters.get("max_elements"))
    out = work / "filtered.parquet"
    res = screen_file(candidates["path"], out, opts, model=tiny_model, device="cpu", jobs=1, batch_rows=700)
    got = pq.read_table(out).to_pandas()
    assert 0 < len(got) < len(predicted)
    for formula in got["formula"]:
        els = set(composition(formula))
        assert set(filters.get("include", [])) <= els
        assert not els & set(filters.get("exclude", []))
        assert len(els) <= filters.get("max_elements", 99)
    assert_same_rows(got, expected_shortlist(predicted, BIG_K, **filters))
    assert res.filtered == len(predicted) - len(got)


@pytest.mark.parametrize("cap", [1, 3])
@pytest.mark.parametrize("top", [40, BIG_K])
def test_max_per_system(candidates, tiny_model, predicted, work, cap, top):
    out = work / "capped.parquet"
    screen_file(candidates["path"], out, ScreenOptions(top=top, max_per_system=cap), model=tiny_model,
                device="cpu", jobs=1, batch_rows=450)
    got = pq.read_table(out).to_pandas()
    counts = got["formula"].map(system_key).value_counts()
    assert counts.max() <= cap
    if top == BIG_K:
        assert counts.max() == cap  # some system has more candidates than the cap
    assert_same_rows(got, expected_shortlist(predicted, top, max_per_system=cap))


def test_unique_keeps_best_row_per_reduced_composition(candidates, tiny_model, predicted, work):
    out = work / "unique.parquet"
    screen_file(candidates["path"], out, ScreenOptions(top=BIG_K, unique=True), model=tiny_model, device="cpu",
                jobs=1, batch_rows=400)
    got = pq.read_table(out).to_pandas()
    keys = got["formula"].map(reduced_key)
    assert keys.is_unique
    assert set(keys) == set(predicted["formula"].map(reduced_key))
    # Fe2O3 (row 10), O3Fe2 (11), Fe2O3 (12) and Fe4O6 (2500) are one composition with one
    # prediction: the earliest row is kept
    fe_rows = predicted[predicted["formula"].map(reduced_key) == (("Fe", 2), ("O", 3))]
    assert set(fe_rows["id"]) >= {10, 11, 12, 2500}
    assert fe_rows["prediction"].nunique() == 1 and fe_rows["uncertainty"].nunique() == 1
    assert got.loc[keys == (("Fe", 2), ("O", 3)), "id"].tolist() == [fe_rows["id"].min()]
    assert_same_rows(got, expected_shortlist(predicted, BIG_K, unique=True))
    # with a short list too (the running top-K drops the duplicates as it goes)
    short = screen_file(candidates["path"], work / "unique10.parquet", ScreenOptions(top=10, unique=True),
                        model=tiny_model, device="cpu", jobs=1, batch_rows=400)
    assert_same_rows(short.to_pandas(), expected_shortlist(predicted, 10, unique=True))


def test_unique_and_max_per_system_apply_together(candidates, tiny_model, predicted, work):
    out = work / "unique-cap.parquet"
    res = screen_file(candidates["path"], out, ScreenOptions(top=40, unique=True, max_per_system=2),
                      model=tiny_model, device="cpu", jobs=1, batch_rows=400)
    got = res.to_pandas()
    assert got["formula"].map(reduced_key).is_unique
    assert got["formula"].map(system_key).value_counts().max() <= 2
    assert_same_rows(got, expected_shortlist(predicted, 40, unique=True, max_per_system=2))


def test_filters_and_unique_through_cli(capsys, candidates, tiny_model, predicted, work):
    out = work / "cli-filters.parquet"
    code, stdout, err = run_cli(capsys, "screen", candidates["path"], "--top", "30", "-m", tiny_model, "-j", "1",
                                "--device", "cpu", "--maximize", "--kappa", "1.5", "--include-elements", "O",
                                "--exclude-elements", "S,Ni", "--max-elements", "3", "--max-per-system", "2",
                                "-o", out)
    assert code == 0, err
    got = pq.read_table(out).to_pandas()
    exp = expected_shortlist(predicted, 30, objective="maximize", kappa=1.5, include=["O"], exclude=["S", "Ni"],
                             max_elements=3, max_per_system=2)
    assert_same_rows(got, exp)
    assert exp["formula"].iat[0] in stdout


# --------------------------------------------------------------------------- accounting and rejects


def test_rows_are_accounted_for(capsys, candidates, tiny_model, predicted, work):
    out = work / "counted.parquet"
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "10", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--batch-rows", "600", "-o", out)
    assert code == 0, err
    read, screened, rejected = screen_counts(err)
    assert read == screened + rejected == candidates["n"]
    assert screened == len(predicted)
    rejects = pq.read_table(work / "counted.rejects.parquet").to_pandas()
    assert rejected == len(rejects) == len(candidates["invalid"])
    assert rejects["row"].tolist() == candidates["invalid"]
    assert rejects["formula"].tolist() == [candidates["formulas"][r] for r in candidates["invalid"]]
    assert rejects["error"].map(bool).all()
    # predict agrees on the split
    code, _, err = run_cli(capsys, "predict", candidates["path"], "-m", tiny_model, "-j", "1", "--device", "cpu",
                           "-o", work / "counted.pred.parquet")
    assert code == 0, err
    assert pq.read_table(work / "counted.pred.rejects.parquet").equals(pq.read_table(work / "counted.rejects.parquet"))
    assert pq.read_metadata(work / "counted.pred.parquet").num_rows + len(rejects) == candidates["n"]


@pytest.mark.parametrize("command", ["screen", "predict"])
def test_all_rejected_exits_1_with_rejects(capsys, tiny_model, work, command):
    path = work / "all-bad.parquet"
    pq.write_table(pa.table({"formula": ["Xx", "", None, "Fe2(O3"]}), path)
    out = work / f"all-bad.{command}.parquet"
    extra = ["--top", "5"] if command == "screen" else []
    code, _, err = run_cli(capsys, command, path, *extra, "-m", tiny_model, "-j", "1", "--device", "cpu", "-o", out)
    assert code == 1, err
    assert "Traceback" not in err and "rejected" in err
    rejects = pq.read_table(work / f"all-bad.{command}.rejects.parquet").to_pandas()
    assert rejects["row"].tolist() == [0, 1, 2, 3]
    if command == "screen":
        read, screened, rejected = screen_counts(err)
        assert (read, screened, rejected) == (4, 0, 4)
        assert pq.read_metadata(out).num_rows == 0


# --------------------------------------------------------------------------- resume


class Killed(BaseException):
    """A simulated kill (BaseException: no `except Exception` handler gets to tidy up)."""


def kill_at(batch: int | None, point: str):
    """A screen_file ``_kill`` hook raising Killed at ``point`` of the batch-th batch
    (batch None: a point of the final write)."""
    seen = {"batch": 0}

    def hook(p):
        if p == "rejects":  # the first commit point of every batch
            seen["batch"] += 1
        if p == point and (batch is None or seen["batch"] == batch):
            raise Killed(p)

    return hook


RESUME_OPTS = dict(top=60, kappa=1.5, max_per_system=2, exclude_elements=["K"])


@pytest.fixture(scope="module")
def resume_reference(candidates, tiny_model, work):
    ref = work / "ref.parquet"
    screen_file(candidates["path"], ref, ScreenOptions(**RESUME_OPTS), model=tiny_model, device="cpu", jobs=1,
                batch_rows=450)
    return pq.read_table(ref), pq.read_table(work / "ref.rejects.parquet")


@pytest.mark.parametrize("batch,point", [(2, "rejects"), (2, "top"), (2, "commit"), (2, "cleanup"), (1, "top"),
                                         (None, "final-write"), (None, "final-rename-0")])
def test_resume_after_a_kill_at_any_commit_point(candidates, tiny_model, work, resume_reference, batch, point):
    """Wherever in a batch the kill lands, the resumed shortlist is the uninterrupted one:
    no row twice, none lost, the same rejects."""
    kw = dict(model=tiny_model, device="cpu", jobs=1, batch_rows=450)
    out = work / f"killed-{batch}-{point}.parquet"
    with pytest.raises(Killed):
        screen_file(candidates["path"], out, ScreenOptions(**RESUME_OPTS), _kill=kill_at(batch, point), **kw)
    state = out.with_name(out.name + ".screen-state")
    assert state.is_dir()
    if point != "final-rename-0":  # before the final commit: no output, no rejects
        assert not out.exists() and not default_rejects_path(out).exists()
    res = screen_file(candidates["path"], out, ScreenOptions(**RESUME_OPTS), resume=True, **kw)
    assert res.summary.rows_read == candidates["n"]
    ref, ref_rejects = resume_reference
    got = pq.read_table(out)
    assert got.column("id").to_pylist() == ref.column("id").to_pylist()
    assert len(set(got.column("id").to_pylist())) == got.num_rows  # no duplicates
    assert got.equals(ref, check_metadata=True)
    assert pq.read_table(default_rejects_path(out)).equals(ref_rejects)
    assert ref_rejects.num_rows == len(candidates["invalid"])
    assert not state.exists()


def test_resume_refuses_other_options(candidates, tiny_model, work):
    kw = dict(model=tiny_model, device="cpu", jobs=1, batch_rows=450)
    out = work / "killed-options.parquet"
    with pytest.raises(Killed):
        screen_file(candidates["path"], out, ScreenOptions(**RESUME_OPTS), _kill=kill_at(2, "cleanup"), **kw)
    state = out.with_name(out.name + ".screen-state")
    with pytest.raises(IrscreenError, match="other input, model or options"):
        screen_file(candidates["path"], out, ScreenOptions(**{**RESUME_OPTS, "kappa": 0.0}), resume=True, **kw)
    assert state.is_dir()  # a refused resume leaves the checkpoint alone


def test_top_k_refuses_a_row_it_holds():
    top = TopK(3)
    batch = pa.table({"_score": [0.3, 0.1, 0.2], "_row": [0, 1, 2]})
    top.offer(batch)
    top.offer(batch)  # the same batch again, as a replayed resume would offer it
    assert top.table.column("_row").to_pylist() == [1, 2, 0]


def test_resume_refused_through_cli(capsys, candidates, tiny_model, work):
    out = work / "cli-killed.parquet"
    kw = dict(model=tiny_model, device="cpu", jobs=1, batch_rows=1000)
    with pytest.raises(Killed):
        screen_file(candidates["path"], out, ScreenOptions(top=5), _kill=kill_at(1, "cleanup"), **kw)
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "6", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--batch-rows", "1000", "-o", out, "--resume")
    assert_one_line_error(code, err, "screen-state", "--resume")
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "5", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--batch-rows", "1000", "-o", out, "--resume")
    assert code == 0, err
    assert screen_counts(err)[0] == candidates["n"]
    assert not (work / "cli-killed.parquet.screen-state").exists()


# --------------------------------------------------------------------------- formats


def test_csv_in_csv_out(capsys, candidates, tiny_model, work):
    csv_in = work / "candidates.csv"
    pacsv.write_csv(pq.read_table(candidates["path"]), csv_in)
    out = work / "short.csv"
    code, _, err = run_cli(capsys, "screen", csv_in, "--top", "15", "-m", tiny_model, "-j", "1", "--device", "cpu",
                           "--batch-rows", "800", "-o", out)
    assert code == 0, err
    read, screened, rejected = screen_counts(err)
    assert read == candidates["n"] and rejected == len(candidates["invalid"])
    got = pacsv.read_csv(out).to_pandas()
    ref = work / "short-ref.parquet"
    screen_file(candidates["path"], ref, ScreenOptions(top=15), model=tiny_model, device="cpu", jobs=1)
    exp = pq.read_table(ref).to_pandas()
    assert list(got.columns) == list(exp.columns)
    assert got["id"].tolist() == exp["id"].tolist()
    assert got["formula"].tolist() == exp["formula"].tolist()
    np.testing.assert_allclose(got["prediction"], exp["prediction"], rtol=1e-6)
    assert (work / "short.rejects.parquet").exists()


def test_default_output_name_in_current_directory(capsys, candidates, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "7", "-m", tiny_model, "-j", "1",
                           "--device", "cpu")
    assert code == 0, err
    out = tmp_path / "candidates.top7.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates.top7.parquet", "candidates.top7.rejects.parquet"]
    assert pq.read_table(out).column("rank").to_pylist() == list(range(1, 8))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", ["screen", "predict"])
def test_bad_input_files(capsys, tiny_model, tmp_path, command):
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    empty_pq = tmp_path / "empty.parquet"
    empty_pq.write_bytes(b"")
    no_col = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"name": ["Fe2O3"], "x": [1.0]}), no_col)
    cases = [
        (tmp_path / "missing.parquet", ["no such file"]),
        (empty_csv, ["empty"]),
        (empty_pq, ["empty"]),
        (no_col, ["no formula column", "name", "--formula-column"]),
    ]
    extra = ["--top", "3"] if command == "screen" else []
    for path, needles in cases:
        out = tmp_path / "out.parquet"
        code, _, err = run_cli(capsys, command, path, *extra, "-m", tiny_model, "-j", "1", "--device", "cpu",
                               "-o", out)
        assert_one_line_error(code, err, str(path.name), *needles)
        assert not out.exists()
    code, _, err = run_cli(capsys, command, no_col, *extra, "-m", tiny_model, "-j", "1", "--device", "cpu",
                           "--formula-column", "formula", "-o", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "no column 'formula'")


@pytest.mark.parametrize("command", ["screen", "predict"])
def test_existing_output_column_is_an_error(capsys, tiny_model, tmp_path, command):
    path = tmp_path / "has-prediction.parquet"
    pq.write_table(pa.table({"formula": ["Fe2O3", "NaCl"], "prediction": [1.0, 2.0]}), path)
    extra = ["--top", "3"] if command == "screen" else []
    code, _, err = run_cli(capsys, command, path, *extra, "-m", tiny_model, "-j", "1", "--device", "cpu",
                           "-o", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "'prediction'")
    if command == "screen":
        pq.write_table(pa.table({"formula": ["Fe2O3"], "rank": [1]}), path)
        code, _, err = run_cli(capsys, command, path, *extra, "-m", tiny_model, "-j", "1", "--device", "cpu",
                               "-o", tmp_path / "out.parquet")
        assert_one_line_error(code, err, "'rank'")


@pytest.mark.parametrize("command", ["screen", "predict"])
def test_unknown_model_lists_shipped_names(capsys, candidates, tmp_path, command):
    extra = ["--top", "3"] if command == "screen" else []
    code, _, err = run_cli(capsys, command, candidates["path"], *extra, "-m", "no-such-model", "-j", "1",
                           "-o", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "no-such-model", "formation-enthalpy")


def test_bundle_with_other_features_is_refused(capsys, candidates, tiny_model, tmp_path):
    bundle = tmp_path / "tampered"
    shutil.copytree(tiny_model, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["features"]["labels_sha256"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for command, extra in (("screen", ["--top", "3"]), ("predict", [])):
        code, _, err = run_cli(capsys, command, candidates["path"], *extra, "-m", bundle, "-j", "1",
                               "--device", "cpu", "-o", tmp_path / "out.parquet")
        assert_one_line_error(code, err, "tampered", "feature label hash mismatch")
    with pytest.raises(IrscreenError, match="feature label hash"):
        irscreen.load_model(bundle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["screen", "predict"])
def test_cuda_without_gpu_is_an_error(capsys, candidates, tiny_model, tmp_path, command):
    extra = ["--top", "3"] if command == "screen" else []
    code, _, err = run_cli(capsys, command, candidates["path"], *extra, "-m", tiny_model, "-j", "1",
                           "--device", "cuda", "-o", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "--device cuda", "CUDA")


# --------------------------------------------------------------------------- Python API


def test_load_model_predict():
    model = irscreen.load_model("formation-enthalpy")
    df = model.predict(["Fe2O3", "LiFeO2", "NaCl", "Fe4O6"])
    assert isinstance(df, pd.DataFrame)
    assert {"formula", "prediction", "uncertainty"} <= set(df.columns)
    assert df["formula"].tolist() == ["Fe2O3", "LiFeO2", "NaCl", "Fe4O6"]
    assert np.isfinite(df["prediction"]).all() and (df["uncertainty"] >= 0).all()
    assert df["prediction"].iat[0] == df["prediction"].iat[3]  # same reduced composition, same features
    assert (df["prediction"] < 0).all()  # stable compounds: negative formation enthalpy (eV/atom)


def test_screen_api_list_and_dataframe(tmp_path):
    formulas = random_formulas(120, seed=21)
    assert callable(irscreen.screen)  # the function, also after `import irscreen.screening`
    top5 = irscreen.screen(formulas, top=5, device="cpu")
    assert isinstance(top5, pd.DataFrame) and len(top5) == 5
    assert top5["rank"].tolist() == [1, 2, 3, 4, 5]
    assert top5["prediction"].is_monotonic_increasing
    # the best 5 of `predict` on the same rows (same default precision)
    pq.write_table(pa.table({"formula": formulas}), tmp_path / "api.parquet")
    predict_file(tmp_path / "api.parquet", tmp_path / "api.pred.parquet", device="cpu", jobs=1)
    pred = pq.read_table(tmp_path / "api.pred.parquet").to_pandas()
    best = pred.sort_values("prediction", kind="stable").head(5)
    assert top5["formula"].tolist() == best["formula"].tolist()
    np.testing.assert_array_equal(top5["prediction"].to_numpy(), best["prediction"].to_numpy())

    frame = pd.DataFrame({"formula": formulas, "source": ["gen"] * len(formulas)})
    again = irscreen.screen(frame, top=5, device="cpu")
    assert again["formula"].tolist() == top5["formula"].tolist()
    assert "source" in again.columns
    np.testing.assert_array_equal(again["prediction"].to_numpy(), top5["prediction"].to_numpy())
    # a second call works too (the package attribute must stay callable)
    assert len(irscreen.screen(formulas[:10], top=20, device="cpu")) == 10
