"""screen's cascade: with a distilled student the shortlist, its order and every number in
it are what ``--exact`` (the ensemble on every row) gives, for every objective, with and
without kappa, with conditions and caps, on candidates built to crowd the cutoff with
ties and near-ties; and the ensemble runs on far fewer rows.

The bundles are the tiny ones of test_screen/test_conditions, each with a student
distilled here in seconds (few rows, few epochs: a poor student, so a wide bound, which
is what the cascade must stay exact with).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irscreen.distill import DistillConfig, distill
from irscreen.errors import IrscreenError
from irscreen.models.ensemble import load_model
from irscreen.screening import ScreenOptions, screen_file
from irscreen.screening.cascade import walk
from irscreen.screening.conditions import Condition

from test_conditions import GAP, gap_model  # noqa: F401 (fixtures)
from test_screen import (  # noqa: F401 (fixtures)
    ELEMENTS,
    assert_one_line_error,
    candidates_table,
    random_formulas,
    run_cli,
    tiny_model,
    work,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = DistillConfig(arch="32BARx1-16BARx1-2", margin=1.5, train_rows=3000, pool_rows=2000, epochs=6, batch_size=256, allowance_rows=500)


def with_student(bundle: Path, dest: Path) -> Path:
    if not dest.exists():
        distill(bundle, cfg=QUICK, output=dest)
    return dest


@pytest.fixture(scope="module")
def tiny_st(tiny_model, work) -> Path:
    return with_student(tiny_model, work / "tiny-student")


@pytest.fixture(scope="module")
def gap_st(gap_model, work) -> Path:
    return with_student(gap_model, work / "gap-student")


@pytest.fixture(scope="module")
def crowded(work) -> Path:
    """Random formulas over the tiny bundles' elements, plus many exact duplicates and
    near-duplicates (an amount moved by 0.001: nearly the same prediction) so that rows
    crowd every cutoff."""
    rng = np.random.default_rng(5)
    base = random_formulas(2500, seed=21)
    extra = []
    for f in rng.choice(base, size=400, replace=False):
        extra.append(f)  # a tie
        el = next(e for e in sorted(ELEMENTS, key=len, reverse=True) if e in f)
        extra.append(f.replace(el, f"{el}1.001", 1) if f"{el}1" not in f else f)  # a near-tie
    formulas = list(base)
    for f in extra:
        formulas.insert(int(rng.integers(0, len(formulas) + 1)), f)
    path = work / "crowded.parquet"
    pq.write_table(candidates_table(formulas), path)
    return path


def run(path, out, model, **kw):
    opts = ScreenOptions(**{"top": 25, **kw})
    return screen_file(path, out, opts, model=model, device="cpu", jobs=1, batch_rows=700)


def same(a, b) -> None:
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.column_names == tb.column_names
    assert ta.equals(tb), (ta.to_pandas().head(), tb.to_pandas().head())


# --------------------------------------------------------------------------- the student


def test_distill_writes_a_student_with_its_bound(tiny_st):
    m = load_model(tiny_st)
    st = m.manifest["student"]
    assert m.student is not None and st["architecture"].endswith("-2")
    for p in ("fp32", "mixed", "bf16"):
        b = m.student.bound(p)
        assert max(b["mean_over"], b["mean_under"]) >= QUICK.margin * st["disagreement"]["mean"]["max"] > 0
        assert max(b["sigma_over"], b["sigma_under"]) >= QUICK.margin * st["disagreement"]["sigma"]["max"]
        low = m.student.bound(p, hi=st["bound"]["edges"][0])  # the lowest region alone: never wider
        assert all(low[k] <= b[k] for k in b)
    assert st["flops_per_row"] < st["ensemble_flops_per_row"]
    assert "Cascade student" in (tiny_st / "README.md").read_text()
    # the bound holds on the rows it was measured on, by construction; and on others of the kind
    from irscreen.features import featurize

    X = featurize(random_formulas(500, seed=99)).to_numpy(np.float32)
    out = m.outputs(m.predict_members(X, "bf16"))
    mean, sigma = m.student.predict(X)
    b = m.student.bound("bf16")
    assert (mean - out["prediction"]).max() <= b["mean_over"] and (out["prediction"] - mean).max() <= b["mean_under"]


def test_a_tampered_student_is_refused(tiny_st, work):
    bad = work / "tampered-student"
    shutil.copytree(tiny_st, bad)
    with open(bad / "student.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(IrscreenError, match="student.safetensors"):
        load_model(bad)


# --------------------------------------------------------------------------- exact shortlists


@pytest.mark.parametrize("objective,value,kappa", [
    ("minimize", None, 0.0), ("minimize", None, 1.5), ("maximize", None, 0.0), ("maximize", None, -1.0),
    ("target", 0.0, 0.0), ("target", 0.0, 2.0),
])
def test_cascade_equals_exact(crowded, tiny_st, work, objective, value, kappa):
    if objective == "target":  # the median prediction: the closest rows crowd around it
        every = run(crowded, work / "every.parquet", tiny_st, exact=True, top=10**6).summary.output
        value = float(np.median(pq.read_table(every).column("prediction").to_numpy()))
    kw = dict(objective=objective, target_value=value, kappa=kappa)
    exact = run(crowded, work / f"exact-{objective}-{kappa}.parquet", tiny_st, exact=True, **kw)
    fast = run(crowded, work / f"fast-{objective}-{kappa}.parquet", tiny_st, **kw)
    same(work / f"exact-{objective}-{kappa}.parquet", work / f"fast-{objective}-{kappa}.parquet")
    assert exact.exact_rows == exact.screened
    # the efficiency claim, at the tails: a kappa adds the (wide, for this quick student) sigma
    # bound, and a target at the median sits where rows are densest, so fewer rows are ruled out
    if kappa == 0 and objective != "target":
        assert fast.exact_rows < fast.screened / 2, (fast.exact_rows, fast.screened)


@pytest.mark.parametrize("caps", [dict(max_per_system=1), dict(unique=True), dict(max_per_system=2, unique=True)])
def test_cascade_equals_exact_with_caps(crowded, tiny_st, work, caps):
    tag = "-".join(f"{k}{v}" for k, v in caps.items())
    run(crowded, work / f"exact-{tag}.parquet", tiny_st, exact=True, **caps)
    run(crowded, work / f"fast-{tag}.parquet", tiny_st, **caps)
    same(work / f"exact-{tag}.parquet", work / f"fast-{tag}.parquet")


@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_cascade_equals_exact_with_conditions(crowded, tiny_st, gap_st, work, kappa):
    ref = pq.read_table(run(crowded, work / "gap-all.parquet", gap_st, exact=True, top=10**6).summary.output).to_pandas()
    lo, hi = np.quantile(ref["prediction"], [0.3, 0.8])
    where = [f"{gap_st} >= {lo:.4f}", f"{gap_st} <= {hi:.4f}"]
    exact = run(crowded, work / f"exact-where-{kappa}.parquet", tiny_st, exact=True, where=where, kappa=kappa)
    fast = run(crowded, work / f"fast-where-{kappa}.parquet", tiny_st, where=where, kappa=kappa)
    same(work / f"exact-where-{kappa}.parquet", work / f"fast-where-{kappa}.parquet")
    assert fast.exact_rows < exact.exact_rows
    assert fast.failed_conditions > 0


def test_cli_exact_flag_and_summary(capsys, crowded, tiny_st, work):
    code, _, err = run_cli(capsys, "screen", crowded, "--top", "10", "-m", tiny_st, "-j", "1", "--device", "cpu",
                           "-o", work / "cli-fast.parquet")
    assert code == 0, err
    assert "cascade: the ensemble ran on" in " ".join(err.split())
    code, _, err = run_cli(capsys, "screen", crowded, "--top", "10", "-m", tiny_st, "-j", "1", "--device", "cpu",
                           "-o", work / "cli-exact.parquet", "--exact")
    assert code == 0, err
    assert "cascade" not in err
    same(work / "cli-fast.parquet", work / "cli-exact.parquet")


# --------------------------------------------------------------------------- the rules


def test_walk_stops_where_the_next_row_is_out_of_reach():
    guess = np.array([5.0, 0.0, 3.0, 1.0, 9.0, 2.0])
    seen, cut = [], {"v": 2.5}

    def evaluate(rows):
        seen.append(rows.tolist())
        cut["v"] = 1.5  # the exact scores of the first chunk tighten the cutoff

    # the slack shrinks with the cutoff, as a region bound does: 0.4 at 2.5, 0.2 at 1.5
    n = walk(guess, lambda c: 0.2 * (c - 0.5), evaluate, lambda: cut["v"], chunk=2)
    assert seen == [[1, 3]] and n == 2  # rows 1, 3 (0 and 1 <= 2.5 + 0.4); then row 5: 2 > 1.5 + 0.2


def test_a_condition_is_dropped_only_when_no_value_within_the_slack_meets_it():
    c = Condition.parse("m >= 1.0")
    mean, sigma = np.array([0.5, 0.85, 0.95, 1.2]), np.full(4, 0.1)
    # slack 0.1: a guess of 0.85 may be 0.95 (fails), 0.95 may be 1.05 (holds)
    assert c.cannot_hold(mean, sigma, 0.0, 0.1).tolist() == [True, True, False, False]
    # kappa 1 tests mean - sigma: 0.95 - 0.1 + 0.15 = 1.0 may hold, 0.85 cannot
    assert c.cannot_hold(mean, sigma, 1.0, 0.15).tolist() == [True, True, False, False]
    assert Condition.parse("m < 0").cannot_hold(np.array([0.1, 0.2]), np.zeros(2), 0.0, 0.15).tolist() == \
        [False, True]


def test_the_slack_uses_the_region_and_the_side_that_matters():
    from irscreen.screening.cascade import condition_slack, score_slack

    class Fake:  # a student whose over-estimates are 0.1 below a mean of 0 and 0.5 above, under-estimates 0.3
        def bound(self, precision, lo=-np.inf, hi=np.inf):
            return {"mean_over": 0.5 if hi > 0 else 0.1, "mean_under": 0.3, "sigma_over": 0.05, "sigma_under": 0.2}

    st = Fake()
    assert score_slack(st, "minimize", 0.0, None, "bf16", -1.0) == 0.1  # only rows with mean <= -1 matter
    assert score_slack(st, "minimize", 0.0, None, "bf16", np.inf) == 0.5  # the top-K is not full yet
    assert score_slack(st, "minimize", 2.0, None, "bf16", -1.0) == pytest.approx(0.1 + 2 * 0.05)
    assert score_slack(st, "minimize", -2.0, None, "bf16", -1.0) == pytest.approx(0.5 + 2 * 0.2)  # no region
    assert score_slack(st, "maximize", 0.0, None, "bf16", -1.0) == 0.3
    assert score_slack(st, "target", 0.0, 0.0, "bf16", 0.5) == 0.5
    assert condition_slack(st, Condition.parse("m >= 1"), 0.0, "bf16") == 0.3
    assert condition_slack(st, Condition.parse("m <= -1"), 0.0, "bf16") == 0.1


def test_remeasure_keeps_the_student_and_applies_the_new_margin(tiny_st, work):
    again = work / "tiny-remeasured"
    before = json.loads((tiny_st / "manifest.json").read_text())["student"]
    distill(tiny_st, cfg=DistillConfig(**{**QUICK.__dict__, "margin": 3.0}), output=again, remeasure=True)
    after = json.loads((again / "manifest.json").read_text())["student"]
    assert after["sha256"] == before["sha256"]  # the same weights
    assert after["bound"]["margin"] == 3.0 and after["architecture"] == before["architecture"]
    assert load_model(again).student.bound("bf16")["mean_over"] > load_model(tiny_st).student.bound("bf16")["mean_over"]
