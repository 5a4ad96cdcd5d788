"""Several models in one run: ``screen --where "MODEL OP VALUE"`` and ``--also MODEL``,
``predict -m A -m B``.

The shortlist with conditions is exactly the ``predict`` output of the models, filtered
by the documented condition rule (kappa conservative: ``>=`` holds when mean - kappa sigma
>= value, ``<=`` when mean + kappa sigma <= value) and sorted like every other screen; a
model's columns are named after it and hold the numbers a run of that model alone
gives; each feature preset is computed once per batch; bad conditions and clashing
names are one error line; a resume with other conditions is refused.

A second tiny bundle ("tiny-gap") is trained here on another preset (fractions), another
target and seed, with sulfur rare in its training data, so its extrapolation flag is not
the first bundle's.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import irscreen
from irscreen.errors import IrscreenError
from irscreen.screening import ScreenOptions, predict_file, screen_file
from irscreen.screening.conditions import Condition

from test_screen import (  # noqa: F401 (fixtures)
    BIG_K,
    Killed,
    assert_one_line_error,
    assert_same_rows,
    candidates,
    composition,
    expected_shortlist,
    kill_at,
    predicted,
    random_formulas,
    run_cli,
    screen_counts,
    tiny_model,
    work,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GAP = "tiny-gap"  # the second bundle's name: its columns' prefix
GAP_COLUMNS = [GAP, f"{GAP}_uncertainty", f"{GAP}_extrapolation"]
INPUT_COLUMNS = ["formula", "id", "tag", "weight"]
MAIN_COLUMNS = ["prediction", "uncertainty", "extrapolation"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gap_model(work) -> Path:
    """A 2-member bundle on the fractions preset, target from the composition, clipped at 0
    like a band gap; sulfur is in only 8 of its training compositions (rare: < 20)."""
    from irscreen import data as data_mod
    from irscreen.config import TrainConfig
    from irscreen.train import train_bundle

    pool = random_formulas(900, seed=12)
    with_s = [f for f in pool if "S" in composition(f)]
    formulas = [f for f in pool if "S" not in composition(f)][:392] + with_s[:8]

    def target(f: str) -> float:
        c = composition(f)
        n = sum(c.values())
        return 0.4 + 2.0 * c.get("O", 0) / n - 1.2 * c.get("Fe", 0) / n + 0.6 * c.get("Mg", 0) / n

    data = work / "gap-train.parquet"
    pq.write_table(pa.table({"formula": formulas, "gap": [target(f) for f in formulas]}), data)
    out = work / "gap-bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_mod, "CACHE_DIR", work / "feature-cache")
        td = data_mod.load_training_data(data, "gap", preset="fractions", jobs=1, seed=1)
        cfg = TrainConfig(arch="32BARx2-1", epochs=3, batch_size=64, device="cpu", precision="fp32", seed=1,
                          ensemble=2, storage="float32")
        train_bundle(td, cfg, out, name=GAP, units="eV", output_min=0.0, checkpoint_dir=work / "gap-ckpt")
    return out


def renamed_copy(bundle: Path, dest: Path, name: str) -> Path:
    """The same weights under another manifest name."""
    if not dest.exists():
        shutil.copytree(bundle, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest["name"] = name
        (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="session")
def copy_model(tiny_model, work) -> Path:
    """tiny's weights (magpie, as tiny) named tiny-copy: another model sharing tiny's preset."""
    return renamed_copy(tiny_model, work / "copy-bundle", "tiny-copy")


@pytest.fixture(scope="session")
def gap_predicted(candidates, gap_model, work) -> pd.DataFrame:
    out = work / "gap-predicted.parquet"
    predict_file(candidates["path"], out, model=gap_model, device="cpu", jobs=1)
    return pq.read_table(out).to_pandas()


@pytest.fixture(scope="session")
def both(predicted, gap_predicted) -> pd.DataFrame:
    """tiny's predict output with tiny-gap's columns beside (one row per valid candidate)."""
    assert gap_predicted["id"].tolist() == predicted["id"].tolist()  # every candidate featurizes for both presets
    gap = gap_predicted[MAIN_COLUMNS].rename(columns=dict(zip(MAIN_COLUMNS, GAP_COLUMNS)))
    return pd.concat([predicted, gap], axis=1)


def bound(df: pd.DataFrame, column: str, op: str, kappa: float) -> np.ndarray:
    """The documented rule: a lower bound for > and >=, an upper bound for < and <=."""
    sigma_column = "uncertainty" if column == "prediction" else f"{column}_uncertainty"
    mean, sigma = df[column].to_numpy().astype(np.float64), df[sigma_column].to_numpy().astype(np.float64)
    return mean - kappa * sigma if op in (">", ">=") else mean + kappa * sigma


def holds(df: pd.DataFrame, column: str, op: str, value: float, kappa: float) -> np.ndarray:
    b = bound(df, column, op, kappa)
    return {"<": b < value, "<=": b <= value, ">": b > value, ">=": b >= value}[op]


def conditions_for(df: pd.DataFrame, tiny: Path, gap: Path, kappa: float) -> list[tuple[str, str, str, float]]:
    """(model, column, op, value): a window on tiny-gap and a ceiling on the ranking model,
    at quantiles of their bounds, so that each leaves out some rows and keeps most."""
    lo = float(np.quantile(bound(df, GAP, ">=", kappa), 0.25))
    hi = float(np.quantile(bound(df, GAP, "<", kappa), 0.9))
    top = float(np.quantile(bound(df, "prediction", "<=", kappa), 0.85))
    return [(str(gap), GAP, ">=", lo), (str(gap), GAP, "<", hi), (str(tiny), "prediction", "<=", top)]


def where_texts(conds) -> list[str]:
    return [f"{model} {op} {value!r}" for model, _, op, value in conds]


def passing(df: pd.DataFrame, conds, kappa: float) -> np.ndarray:
    ok = np.ones(len(df), dtype=bool)
    for _, column, op, value in conds:
        ok &= holds(df, column, op, value, kappa)
    return ok


# --------------------------------------------------------------------------- parsing and the rule


@pytest.mark.parametrize("text,expected", [
    ("band-gap >= 1.0", ("band-gap", ">=", 1.0)),
    ("band-gap>=1", ("band-gap", ">=", 1.0)),
    ("  e-above-hull < 0.05 ", ("e-above-hull", "<", 0.05)),
    ("./my models/gap <= -2e-1", ("./my models/gap", "<=", -0.2)),
    ("/abs/path/bundle > 3", ("/abs/path/bundle", ">", 3.0)),
])
def test_condition_parse(text, expected):
    c = Condition.parse(text)
    assert (c.model, c.op, c.value) == expected
    assert Condition.parse(str(c)) == c  # the text a condition prints reads back exactly
    assert Condition.parse("x >= 0.1234567890123").value == 0.1234567890123


@pytest.mark.parametrize("text,needle", [
    ("band-gap", "no comparison"),
    ("band-gap => 1", "'=>' is not a comparison"),
    ("band-gap == 1", "'==' is not a comparison"),
    ("band-gap = 1", "'=' is not a comparison"),
    (">= 1", "no model"),
    ("band-gap >=", "no value"),
    ("band-gap >= one", "'one' is not a number"),
    ("band-gap >= 1.0 eV", "'1.0 eV' is not a number"),
    ("band-gap >= nan", "finite"),
    ("0 < band-gap < 2", "one comparison per --where"),
])
def test_malformed_condition_says_what_is_wrong(text, needle):
    with pytest.raises(IrscreenError) as e:
        Condition.parse(text)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and repr(text) in msg
    assert '"MODEL OP VALUE"' in msg and "<, <=, >, >=" in msg  # the expected form
    with pytest.raises(IrscreenError, match="no comparison"):
        ScreenOptions(top=5, where=["band-gap >= 1", "band-gap"]).validate()


def test_kappa_is_conservative_for_conditions():
    mean, sigma = np.array([1.0, 1.2, 1.6, 2.0]), np.array([0.1, 0.1, 0.5, 0.0])
    assert Condition.parse("m >= 1.0").holds(mean, sigma).tolist() == [True, True, True, True]
    # k=1: lower bounds 0.9, 1.1, 1.1, 2.0 must clear 1.0
    assert Condition.parse("m >= 1.0").holds(mean, sigma, 1.0).tolist() == [False, True, True, True]
    # k=1: upper bounds 1.1, 1.3, 2.1, 2.0 must stay under 1.8
    assert Condition.parse("m <= 1.8").holds(mean, sigma, 1.0).tolist() == [True, True, False, False]
    # k=-1 reads the other way: mean + sigma >= 1.05; mean - sigma < 1.2
    assert Condition.parse("m >= 1.05").holds(mean, sigma, -1.0).tolist() == [True, True, True, True]
    assert Condition.parse("m < 1.2").holds(mean, sigma, -1.0).tolist() == [True, True, True, False]
    assert Condition.parse("m > 1.2").holds(mean, sigma).tolist() == [False, False, True, True]


# --------------------------------------------------------------------------- --where == filtering predict


@pytest.mark.parametrize("kappa", [0.0, 1.5, -1.0])
@pytest.mark.parametrize("objective", ["minimize", "maximize", "target"])
def test_where_is_a_filter_of_predict(candidates, tiny_model, gap_model, both, work, objective, kappa):
    target_value = float(np.median(both["prediction"])) if objective == "target" else None
    conds = conditions_for(both, tiny_model, gap_model, kappa)
    ok = passing(both, conds, kappa)
    assert 0.3 * len(both) < ok.sum() < len(both)
    opts = dict(objective=objective, target_value=target_value, kappa=kappa)
    for top in (25, BIG_K):
        out = work / f"where-{objective}-{kappa}-{top}.parquet"
        res = screen_file(candidates["path"], out, ScreenOptions(top=top, where=where_texts(conds), **opts),
                          model=tiny_model, device="cpu", jobs=1, batch_rows=500)
        got = pq.read_table(out).to_pandas()
        exp = expected_shortlist(both[ok].reset_index(drop=True), top, **opts)
        assert_same_rows(got, exp)
        for c in GAP_COLUMNS:
            np.testing.assert_array_equal(got[c].to_numpy(), exp[c].to_numpy())
        assert res.failed_conditions == int((~ok).sum())
        assert res.summary.rows_ok == len(both)  # failing a condition is not a reject
        assert res.summary.rows_rejected == len(candidates["invalid"])
        # the ranking model named in --where reuses its prediction: no column twice
        assert list(got.columns) == ["rank", *INPUT_COLUMNS, *MAIN_COLUMNS, *GAP_COLUMNS]


@pytest.mark.parametrize("caps", [dict(max_per_system=2), dict(unique=True), dict(unique=True, max_per_system=1)])
@pytest.mark.parametrize("top", [30, BIG_K])
def test_where_with_caps(candidates, tiny_model, gap_model, both, work, caps, top):
    kappa = 0.5
    conds = conditions_for(both, tiny_model, gap_model, kappa)
    ok = passing(both, conds, kappa)
    out = work / "where-caps.parquet"
    screen_file(candidates["path"], out, ScreenOptions(top=top, kappa=kappa, where=where_texts(conds), **caps),
                model=tiny_model, device="cpu", jobs=1, batch_rows=450)
    got = pq.read_table(out).to_pandas()
    assert_same_rows(got, expected_shortlist(both[ok].reset_index(drop=True), top, kappa=kappa, **caps))


def test_where_with_element_filters_counts_both(capsys, candidates, tiny_model, gap_model, both, work):
    value = float(np.median(both[GAP]))
    out = work / "where-filters.parquet"
    code, stdout, err = run_cli(capsys, "screen", candidates["path"], "--top", "20", "-m", tiny_model, "-j", "1",
                                "--device", "cpu", "--exclude-elements", "Ni", "--where", f"{gap_model} > {value!r}",
                                "-o", out)
    assert code == 0, err
    no_ni = ~both["formula"].map(lambda f: "Ni" in composition(f))
    ok = holds(both, GAP, ">", value, 0.0)
    got = pq.read_table(out).to_pandas()
    assert_same_rows(got, expected_shortlist(both[ok].reset_index(drop=True), 20, exclude=["Ni"]))
    read, screened, rejected = screen_counts(err)
    assert (read, screened, rejected) == (candidates["n"], len(both), len(candidates["invalid"]))
    text = " ".join(err.split())
    # the conditions test only rows the element filters kept
    assert f"{(~no_ni).sum():,} screened rows filtered out, {(no_ni & ~ok).sum():,} failed --where" in text
    assert GAP in stdout  # the terminal table shows the condition's model


def test_where_on_the_ranking_model_alone(candidates, tiny_model, predicted, work):
    value = float(np.quantile(predicted["prediction"], 0.3))
    out = work / "where-self.parquet"
    # by a path that is not the one --model gives: the same bundle, predicted once
    other_spelling = f"{tiny_model}/../{tiny_model.name}"
    res = screen_file(candidates["path"], out, ScreenOptions(top=BIG_K, objective="maximize",
                                                             where=[f"{other_spelling} < {value!r}"]),
                      model=tiny_model, device="cpu", jobs=1, batch_rows=700)
    got = pq.read_table(out).to_pandas()
    ok = holds(predicted, "prediction", "<", value, 0.0)
    assert_same_rows(got, expected_shortlist(predicted[ok].reset_index(drop=True), BIG_K, objective="maximize"))
    assert list(got.columns) == ["rank", *INPUT_COLUMNS, *MAIN_COLUMNS]
    assert res.failed_conditions == int((~ok).sum()) > 0 and res.others == []


def test_no_row_passes(capsys, candidates, tiny_model, gap_model, both, work):
    """Every row fails the ranking model's condition: the other model predicts no row, and
    the empty shortlist still has every column."""
    out = work / "where-none.parquet"
    low = float(both["prediction"].min()) - 1.0
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "5", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--where", f"{tiny_model} < {low!r}", "--where", f"{gap_model} > 0",
                           "-o", out)
    assert code == 0, err
    t = pq.read_table(out)
    assert t.num_rows == 0 and t.column_names == ["rank", *INPUT_COLUMNS, *MAIN_COLUMNS, *GAP_COLUMNS]
    assert f"({len(both):,} screened rows failed --where)" in " ".join(err.split())


def test_also_adds_columns_without_filtering(candidates, tiny_model, gap_model, both, work):
    for top in (40, BIG_K):  # a short list too: --also columns come only for rows that can enter it
        out = work / f"also-{top}.parquet"
        res = screen_file(candidates["path"], out, ScreenOptions(top=top, kappa=0.5), model=tiny_model,
                          also=[str(gap_model), str(tiny_model)], device="cpu", jobs=1, batch_rows=600)
        got = pq.read_table(out).to_pandas()
        exp = expected_shortlist(both, top, kappa=0.5)
        assert_same_rows(got, exp)
        assert list(got.columns) == ["rank", *INPUT_COLUMNS, *MAIN_COLUMNS, *GAP_COLUMNS]  # --also of --model: nothing
        for c in GAP_COLUMNS:
            np.testing.assert_array_equal(got[c].to_numpy(), exp[c].to_numpy())
        assert res.failed_conditions == 0 and res.others == [GAP]


def test_column_names_order_and_own_extrapolation(candidates, tiny_model, gap_model, copy_model, both, work):
    value = float(np.quantile(both[GAP], 0.2))
    out = work / "columns.parquet"
    screen_file(candidates["path"], out, ScreenOptions(top=BIG_K, where=[f"{gap_model} >= {value!r}"]),
                model=tiny_model, also=[str(copy_model)], device="cpu", jobs=1, batch_rows=800)
    t = pq.read_table(out)
    copy_columns = ["tiny-copy", "tiny-copy_uncertainty", "tiny-copy_extrapolation"]
    assert t.column_names == ["rank", *INPUT_COLUMNS, *MAIN_COLUMNS, *GAP_COLUMNS, *copy_columns]
    assert [t.schema.field(c).type for c in GAP_COLUMNS] == [pa.float32(), pa.float32(), pa.bool_()]
    got = t.to_pandas()
    # the same weights on the same (shared) features: the same numbers, bit for bit
    np.testing.assert_array_equal(got["tiny-copy"].to_numpy(), got["prediction"].to_numpy())
    np.testing.assert_array_equal(got["tiny-copy_uncertainty"].to_numpy(), got["uncertainty"].to_numpy())
    # each model flags its own rare elements: sulfur is rare only for tiny-gap
    has_s = got["formula"].map(lambda f: "S" in composition(f))
    assert has_s.any() and not got["extrapolation"].any()
    assert got[f"{GAP}_extrapolation"].tolist() == has_s.tolist()
    assert (got[GAP] >= 0).all()  # its output_min


def test_every_preset_is_computed_once_per_batch(candidates, tiny_model, gap_model, copy_model, predicted, work,
                                                 monkeypatch):
    import irscreen.composition as composition_mod
    import irscreen.features as features

    calls = Counter()
    real_features, real_parse = features.featurize_parsed_columns, composition_mod.parse_batch

    def counting_features(batch, preset="magpie", dtype=np.float32):
        calls[preset] += 1
        return real_features(batch, preset, dtype)

    def counting_parse(*a, **k):
        calls["parse"] += 1
        return real_parse(*a, **k)

    monkeypatch.setattr(features, "featurize_parsed_columns", counting_features)
    monkeypatch.setattr(composition_mod, "parse_batch", counting_parse)
    value = float(np.median(predicted["prediction"]))
    screen_file(candidates["path"], work / "once.parquet",
                ScreenOptions(top=10, where=[f"{copy_model} < {value!r}", f"{gap_model} >= 0"]),
                model=tiny_model, also=[str(gap_model)], device="cpu", jobs=1, batch_rows=1000)
    batches = -(-candidates["n"] // 1000)
    # three models, two presets: one parse and one computation per preset per batch
    assert calls == {"parse": batches, "magpie": batches, "fractions": batches}


# --------------------------------------------------------------------------- predict with several models


def test_predict_with_two_models_equals_separate_runs(capsys, candidates, tiny_model, gap_model, work):
    out = work / "two.parquet"
    code, _, err = run_cli(capsys, "predict", candidates["path"], "-m", tiny_model, "-m", gap_model, "-j", "1",
                           "--device", "cpu", "--batch-rows", "700", "-o", out)
    assert code == 0, err
    got = pq.read_table(out)
    one, gap = pq.read_table(work / "predicted.parquet"), pq.read_table(work / "gap-predicted.parquet")
    assert got.column_names == one.column_names + GAP_COLUMNS
    for c in one.column_names:
        assert got.column(c).equals(one.column(c)), c
    for c, g in zip(GAP_COLUMNS, MAIN_COLUMNS):
        assert got.column(c).equals(gap.column(g)), c
    assert pq.read_table(work / "two.rejects.parquet").equals(pq.read_table(work / "predicted.rejects.parquet"))
    # the other way round, with member columns, through the library (2 worker processes)
    out = work / "two-members.parquet"
    predict_file(candidates["path"], out, model=gap_model, also=[tiny_model], members=True, device="cpu", jobs=2)
    got = pq.read_table(out)
    assert got.column_names == [*INPUT_COLUMNS, *MAIN_COLUMNS, "member_0", "member_1",
                                "tiny", "tiny_uncertainty", "tiny_extrapolation", "tiny_member_0", "tiny_member_1"]
    for c, g in zip(["prediction", "uncertainty", "tiny", "tiny_uncertainty"],
                    [gap.column("prediction"), gap.column("uncertainty"), one.column("prediction"),
                     one.column("uncertainty")]):
        assert got.column(c).equals(g), c


# --------------------------------------------------------------------------- names and errors


def test_name_clashes(capsys, candidates, tiny_model, gap_model, work):
    # another bundle named like --model: its columns have their own names, no clash
    same_name = renamed_copy(gap_model, work / "gap-named-tiny", "tiny")
    res = screen_file(candidates["path"], work / "clash-ok.parquet", ScreenOptions(top=5), model=tiny_model,
                      also=[str(same_name)], device="cpu", jobs=1)
    assert res.shortlist.column_names[-6:] == [*MAIN_COLUMNS, "tiny", "tiny_uncertainty", "tiny_extrapolation"]
    # two other bundles by one name would write one column twice
    twin = renamed_copy(gap_model, work / "gap-twin", GAP)
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "5", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--where", f"{gap_model} > 0", "--also", twin,
                           "-o", work / "never.parquet")
    assert_one_line_error(code, err, f"two models are named {GAP!r}", "manifest.json")
    code, _, err = run_cli(capsys, "predict", candidates["path"], "-m", tiny_model, "-m", gap_model, "-m", twin,
                           "-j", "1", "--device", "cpu", "-o", work / "never.parquet")
    assert_one_line_error(code, err, f"two models are named {GAP!r}")
    # a model named like a column a run writes
    odd = renamed_copy(gap_model, work / "gap-named-uncertainty", "uncertainty")
    code, _, err = run_cli(capsys, "screen", candidates["path"], "--top", "5", "-m", tiny_model, "-j", "1",
                           "--device", "cpu", "--also", odd, "-o", work / "never.parquet")
    assert_one_line_error(code, err, "'uncertainty' would be written twice")
    assert not (work / "never.parquet").exists()


def test_errors_are_one_line(capsys, candidates, tiny_model, gap_model, work, tmp_path):
    base = ["screen", candidates["path"], "--top", "5", "-m", tiny_model, "-j", "1", "--device", "cpu",
            "-o", tmp_path / "out.parquet"]
    code, _, err = run_cli(capsys, *base, "--where", f"{gap_model} => 1")
    assert_one_line_error(code, err, "malformed --where", "'=>'", '"MODEL OP VALUE"')
    code, _, err = run_cli(capsys, *base, "--where", "no-such-model >= 1")
    assert_one_line_error(code, err, "--where 'no-such-model >= 1.0'", "unknown model 'no-such-model'",
                          "formation-enthalpy")
    code, _, err = run_cli(capsys, *base, "--also", "no-such-model")
    assert_one_line_error(code, err, "--also 'no-such-model'", "unknown model")
    code, _, err = run_cli(capsys, "predict", candidates["path"], "-m", tiny_model, "-m", "no-such-model", "-j", "1",
                           "-o", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "--model 'no-such-model'", "unknown model")
    # a model whose feature preset this irscreen cannot compute
    odd = tmp_path / "odd-preset"
    shutil.copytree(gap_model, odd)
    manifest = json.loads((odd / "manifest.json").read_text())
    manifest["features"]["preset"] = "oxidation-states"
    (odd / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, *base, "--where", f"{odd} >= 1")
    assert_one_line_error(code, err, "--where", "feature preset 'oxidation-states'", "magpie")
    # an input column named like a new column
    clash = tmp_path / "clash.parquet"
    pq.write_table(pa.table({"formula": ["Fe2O3", "NaCl"], GAP: [1.0, 2.0]}), clash)
    for command, extra in (("screen", ["--top", "3", "--where", f"{gap_model} > 0"]), ("predict", ["-m", gap_model])):
        code, _, err = run_cli(capsys, command, clash, "-m", tiny_model, *extra, "-j", "1", "--device", "cpu",
                               "-o", tmp_path / "out.parquet")
        assert_one_line_error(code, err, f"column named {GAP!r}")
    assert not (tmp_path / "out.parquet").exists()


# --------------------------------------------------------------------------- resume, hull, Python API


def test_resume_with_conditions(candidates, tiny_model, gap_model, copy_model, both, work):
    kw = dict(model=tiny_model, also=[str(gap_model)], device="cpu", jobs=1, batch_rows=450)
    value = float(np.median(both[GAP]))
    opts = dict(top=40, kappa=1.0, max_per_system=2, where=[f"{gap_model} <= {value!r}", f"{tiny_model} < 10"])
    ref = work / "where-ref.parquet"
    screen_file(candidates["path"], ref, ScreenOptions(**opts), **kw)
    out = work / "where-killed.parquet"
    with pytest.raises(Killed):
        screen_file(candidates["path"], out, ScreenOptions(**opts), _kill=kill_at(3, "commit"), **kw)
    for other in ({**opts, "where": opts["where"][:1]}, {**opts, "where": [f"{gap_model} <= 0.5", opts["where"][1]]}):
        with pytest.raises(IrscreenError, match="other input, model or options"):
            screen_file(candidates["path"], out, ScreenOptions(**other), resume=True, **kw)
    with pytest.raises(IrscreenError, match="other input, model or options"):  # other --also models
        screen_file(candidates["path"], out, ScreenOptions(**opts), resume=True,
                    **{**kw, "also": [str(gap_model), str(copy_model)]})
    res = screen_file(candidates["path"], out, ScreenOptions(**opts), resume=True, **kw)
    assert pq.read_table(out).equals(pq.read_table(ref))
    assert res.failed_conditions == screen_file(candidates["path"], work / "where-ref2.parquet", ScreenOptions(**opts),
                                                **kw).failed_conditions
    assert not out.with_name(out.name + ".screen-state").exists()


@pytest.fixture(scope="module")
def fe_bundle(tiny_model, candidates, work):
    """tiny relabelled as a formation energy per atom, and a phases file holding some candidates."""
    bundle = work / "where-fe-bundle"
    if not bundle.exists():
        shutil.copytree(tiny_model, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest.update(target="formation_energy_per_atom", units="eV/atom", name="tiny-fe")
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    good = [f for f in candidates["formulas"] if f and f.isalnum()][:400:4]
    phases = work / "where-phases.parquet"
    energies = np.random.default_rng(4).uniform(-1, 0, len(good))
    pq.write_table(pa.table({"formula": good, "formation_energy_per_atom": energies}), phases)
    return bundle, phases


def test_hull_with_conditions(candidates, gap_model, gap_predicted, fe_bundle, work):
    bundle, phases = fe_bundle
    pred_path = work / "where-hull-pred.parquet"
    predict_file(candidates["path"], pred_path, model=bundle, also=[gap_model], phases=phases, hull=True, device="cpu",
                 jobs=1)
    pred = pq.read_table(pred_path).to_pandas()
    assert pred["known"].any()
    value = float(np.quantile(pred[GAP], 0.4))
    ok = holds(pred, GAP, ">=", value, 0.0)
    for top in (30, BIG_K):
        out = work / "where-hull.parquet"
        res = screen_file(candidates["path"], out, ScreenOptions(top=top, hull=True, where=[f"{gap_model} >= {value!r}"]),
                          model=bundle, phases=phases, device="cpu", jobs=1, batch_rows=500)
        got = pq.read_table(out).to_pandas()
        sel = pred[ok].reset_index(drop=True)
        order = np.lexsort((sel["id"].to_numpy(), sel["hull_distance"].to_numpy().astype(np.float64)))[:top]
        exp = sel.iloc[order].reset_index(drop=True)
        assert got["id"].tolist() == exp["id"].tolist()
        for c in ("prediction", "hull_distance", "known_value", GAP, f"{GAP}_uncertainty"):
            np.testing.assert_array_equal(got[c].to_numpy(), exp[c].to_numpy())
        assert list(got.columns)[-6:] == ["hull_distance", "hull_uncertainty", *GAP_COLUMNS, "decomposition"]
        assert res.failed_conditions == int((~ok).sum())
        if top < 100:
            assert 0 < res.hull_rows < ok.sum()  # the cutoff still spares rows their hull


def test_python_api(candidates, tiny_model, gap_model, both):
    formulas = [f for f in candidates["formulas"][:400] if f and f.isalnum()]
    value = float(np.median(both[GAP]))
    df = irscreen.screen(formulas, top=8, model=tiny_model, where=[f"{gap_model} >= {value!r}"], also=[tiny_model],
                         device="cpu")
    assert list(df.columns) == ["rank", "formula", *MAIN_COLUMNS, *GAP_COLUMNS]
    assert len(df) == 8 and (df[GAP] >= value).all()
    by_formula = both.drop_duplicates("formula").set_index("formula")
    np.testing.assert_array_equal(df[GAP].to_numpy(), by_formula.loc[df["formula"], GAP].to_numpy())
    one = irscreen.screen(formulas, top=8, model=tiny_model, where=f"{gap_model} >= {value!r}", device="cpu")
    assert one.equals(df)  # one condition may be a plain string
