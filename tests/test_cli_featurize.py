"""`irscreen featurize` as a user drives it: clear one-line errors for bad input, no row
lost silently (rows in = rows out + rejects), features identical to the library's,
parallel and batched runs identical to serial ones, and atomic output."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import irscreen
from irscreen.cli import app
from irscreen.errors import IrscreenError

ROOT = Path(__file__).resolve().parents[1]
LABELS = irscreen.feature_labels("magpie")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def featurize_cli(*args):
    """`irscreen featurize ... -j 1` in-process; -j 1 unless the caller sets --jobs."""
    args = [str(a) for a in args]
    if "--jobs" not in args and "-j" not in args:
        args += ["-j", "1"]
    return runner.invoke(app, ["featurize", *args])


def assert_refused(result, *fragments):
    """The command raised the user-facing IrscreenError (which `irscreen` prints as one
    line with exit code 2) and its message names every fragment."""
    assert isinstance(result.exception, IrscreenError), (result.exception, result.output)
    msg = str(result.exception)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def run_module(*args, cwd):
    """The real entry point: `python -m irscreen ...` in a subprocess."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "irscreen", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=120)


def features_of(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in LABELS])


def no_partials(directory: Path) -> bool:
    return not [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


MIXED = [
    ("NaCl", True),
    ("Fe2O3", True),
    ("Q7", False),  # invalid
    (None, False),  # missing
    ("Xx2O3", False),  # unknown element
    ("CuSO4·5H2O", True),  # hydrate
    ("", False),  # empty
    ("LiFePO4", True),
    ("NaN", True),  # sodium nitride
    ("La0.7Sr0.3MnO3", True),
    ("Fe2O3)", False),  # unbalanced bracket
]


@pytest.fixture
def mixed(tmp_path) -> Path:
    path = tmp_path / "mixed.parquet"
    n = len(MIXED)
    pq.write_table(pa.table({
        "id": pa.array(range(n), pa.int64()),
        "formula": [f for f, _ in MIXED],
        "note": [f"n{i}" for i in range(n)],
        "energy": [float(i) / 4 for i in range(n)],
    }), path)
    return path


# --------------------------------------------------------------------------- unusable inputs


def test_missing_file(tmp_path):
    r = featurize_cli(tmp_path / "nope.parquet", "-o", tmp_path / "out.parquet")
    assert_refused(r, "nope.parquet", "no such file")
    assert not (tmp_path / "out.parquet").exists()


def test_missing_file_subprocess_exit_2_one_line(tmp_path):
    p = run_module("featurize", "nope.csv", "-o", "out.parquet", "-j", "1", cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.csv" in lines[0] and "no such file" in lines[0]
    assert sorted(x.name for x in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["somedir", "dataset.parquet"])
def test_directory(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    r = featurize_cli(d, "-o", tmp_path / "out.parquet")
    assert_refused(r, name, "is a directory")


def test_empty_file(tmp_path):
    for name in ("empty.csv", "empty.parquet"):
        (tmp_path / name).write_bytes(b"")
        r = featurize_cli(tmp_path / name, "-o", tmp_path / "out.parquet")
        assert_refused(r, name, "empty")
    assert not (tmp_path / "out.parquet").exists()


def test_csv_header_only(tmp_path):
    (tmp_path / "h.csv").write_text("formula,id\n")
    r = featurize_cli(tmp_path / "h.csv", "-o", tmp_path / "out.parquet")
    assert_refused(r, "h.csv", "no rows")
    assert not (tmp_path / "out.parquet").exists()
    assert no_partials(tmp_path)


def _truncated(tmp_path) -> Path:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"formula": ["NaCl", "MgO"] * 500, "x": np.arange(1000)}), good)
    data = good.read_bytes()
    bad = tmp_path / "trunc.parquet"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_truncated_parquet(tmp_path):
    bad = _truncated(tmp_path)
    r = featurize_cli(bad, "-o", tmp_path / "out.parquet")
    assert_refused(r, "trunc.parquet", "Parquet")


def test_truncated_parquet_subprocess_exit_2_no_traceback(tmp_path):
    _truncated(tmp_path)
    p = run_module("featurize", "trunc.parquet", "-o", "out.parquet", "-j", "1", cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "trunc.parquet" in lines[0]
    assert not (tmp_path / "out.parquet").exists()


def test_wrong_extension(tmp_path, mixed):
    src = tmp_path / "data.json"
    src.write_text('{"formula": ["NaCl"]}')
    r = featurize_cli(src, "-o", tmp_path / "out.parquet")
    assert_refused(r, "data.json", ".json", ".parquet", ".csv")
    # a wrong output extension is refused too and leaves nothing behind
    r = featurize_cli(mixed, "-o", tmp_path / "out.json")
    assert_refused(r, "out.json", ".json")
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "out.rejects.parquet").exists()
    assert no_partials(tmp_path)


def test_missing_formula_column_lists_columns(tmp_path):
    (tmp_path / "c.csv").write_text("name,target,phase\nNaCl,1.0,a\n")
    r = featurize_cli(tmp_path / "c.csv", "-o", tmp_path / "out.parquet")
    msg = assert_refused(r, "c.csv", "formula", "name, target, phase", "--formula-column")
    assert msg.count("\n") == 0


def test_formula_column_option_names_missing_column(tmp_path):
    (tmp_path / "c.csv").write_text("name,target\nNaCl,1.0\n")
    r = featurize_cli(tmp_path / "c.csv", "-o", tmp_path / "out.parquet", "--formula-column", "comp")
    assert_refused(r, "'comp'", "name, target")
    # and naming the right column works
    r = featurize_cli(tmp_path / "c.csv", "-o", tmp_path / "out.parquet", "--formula-column", "name")
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "out.parquet")
    assert t.column("name").to_pylist() == ["NaCl"]
    assert t.column("target").to_pylist() == [1.0]


def test_numeric_formula_column_refused(tmp_path):
    pq.write_table(pa.table({"formula": [1, 2, 3]}), tmp_path / "ints.parquet")
    r = featurize_cli(tmp_path / "ints.parquet", "-o", tmp_path / "out.parquet")
    assert_refused(r, "ints.parquet", "'formula'", "int64")
    assert not (tmp_path / "out.parquet").exists()
    assert no_partials(tmp_path)


# --------------------------------------------------------------------------- row accounting


def test_csv_nan_is_sodium_nitride(tmp_path):
    (tmp_path / "n.csv").write_text("formula,value\nNaN,1\nNaCl,2\nNA,3\n")
    r = featurize_cli(tmp_path / "n.csv", "-o", tmp_path / "out.parquet")
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "out.parquet")
    assert t.column("formula").to_pylist() == ["NaN", "NaCl"]
    X = features_of(t)
    expected = irscreen.featurize(["NaN", "NaCl"]).to_numpy(np.float32)
    np.testing.assert_array_equal(X, expected)
    assert np.isfinite(X[0]).any()
    rej = pq.read_table(tmp_path / "out.rejects.parquet").to_pylist()
    assert [(x["row"], x["formula"]) for x in rej] == [(2, "NA")]  # "NA" is no element: rejected, not null


@pytest.mark.parametrize("batch_rows", ["65536", "3"])
def test_mixed_file_rows_in_equal_rows_out_plus_rejects(tmp_path, mixed, batch_rows):
    out = tmp_path / "out.parquet"
    r = featurize_cli(mixed, "-o", out, "--batch-rows", batch_rows)
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    rej = pq.read_table(tmp_path / "out.rejects.parquet")
    assert t.num_rows + rej.num_rows == len(MIXED)
    # every valid row present, in order, with its other input columns intact
    valid = [i for i, (_, ok) in enumerate(MIXED) if ok]
    assert t.column("id").to_pylist() == valid
    assert t.column("formula").to_pylist() == [MIXED[i][0] for i in valid]
    assert t.column("note").to_pylist() == [f"n{i}" for i in valid]
    assert t.column("energy").to_pylist() == [i / 4 for i in valid]
    assert t.column_names[:4] == ["id", "formula", "note", "energy"]
    assert t.column_names[4:] == LABELS
    assert all(t.schema.field(c).type == pa.float32() for c in LABELS)
    # rejects: 0-based input row numbers, the formula as given, and a reason naming it
    assert rej.column_names == ["row", "formula", "error"]
    rows = rej.to_pylist()
    invalid = [i for i, (_, ok) in enumerate(MIXED) if not ok]
    assert [x["row"] for x in rows] == invalid
    assert [x["formula"] for x in rows] == [MIXED[i][0] for i in invalid]
    for x in rows:
        assert x["error"]
        if x["formula"]:
            assert x["formula"] in x["error"]
    by_row = {x["row"]: x["error"] for x in rows}
    assert "Xx" in by_row[4]
    summary = " ".join(r.stderr.split())
    assert f"{len(MIXED)} rows read, {len(valid)} featurized, {len(invalid)} rejected" in summary


def test_all_rejected_exit_1_and_rejects_file_exists(tmp_path):
    (tmp_path / "bad.csv").write_text("formula\nQ7\nXx2O3\nFe((\n")
    out = tmp_path / "out.parquet"
    r = featurize_cli(tmp_path / "bad.csv", "-o", out)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "rejected" in r.stderr
    rej = pq.read_table(tmp_path / "out.rejects.parquet")
    assert rej.column("row").to_pylist() == [0, 1, 2]
    assert rej.column("formula").to_pylist() == ["Q7", "Xx2O3", "Fe(("]
    assert no_partials(tmp_path)


def test_rejects_path_default_and_option(tmp_path, mixed):
    out = tmp_path / "feats.parquet"
    r = featurize_cli(mixed, "-o", out)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "feats.rejects.parquet").is_file()
    assert "feats.rejects.parquet" in r.stderr

    custom = tmp_path / "sub" / "bad-rows.parquet"
    custom.parent.mkdir()
    out2 = tmp_path / "feats2.parquet"
    r = featurize_cli(mixed, "-o", out2, "--rejects", custom)
    assert r.exit_code == 0, r.output
    assert custom.is_file() and not (tmp_path / "feats2.rejects.parquet").exists()
    assert pq.read_table(custom).equals(pq.read_table(tmp_path / "feats.rejects.parquet"))
    assert no_partials(tmp_path) and no_partials(custom.parent)


def test_rejects_file_exists_and_is_empty_when_nothing_rejected(tmp_path):
    (tmp_path / "ok.csv").write_text("formula\nNaCl\nMgO\n")
    r = featurize_cli(tmp_path / "ok.csv", "-o", tmp_path / "ok.parquet")
    assert r.exit_code == 0, r.output
    rej = pq.read_table(tmp_path / "ok.rejects.parquet")
    assert rej.num_rows == 0 and rej.column_names == ["row", "formula", "error"]


# --------------------------------------------------------------------------- values


def test_features_equal_library_featurize(tmp_path, mixed):
    out = tmp_path / "out.parquet"
    assert featurize_cli(mixed, "-o", out).exit_code == 0
    t = pq.read_table(out)
    formulas = t.column("formula").to_pylist()
    expected = irscreen.featurize(formulas).to_numpy().astype(np.float32)
    np.testing.assert_array_equal(features_of(t), expected)  # NaN in the same places too


def test_csv_output_roundtrip(tmp_path, mixed):
    out = tmp_path / "out.csv"
    assert featurize_cli(mixed, "-o", out).exit_code == 0
    t = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(column_types={"formula": pa.string()},
                                                                  strings_can_be_null=False))
    assert "NaN" in t.column("formula").to_pylist()
    assert (tmp_path / "out.rejects.parquet").is_file()


def test_parallel_batched_equals_serial(tmp_path):
    formulas = ["NaCl", "Fe2O3", "Q7", None, "LiFePO4", "NaN", "CaTiO3", "MgO", "Al2O3", "SiO2", "ZnS",
                "GaAs", "Xx2O3", "BaTiO3", "SrTiO3", "KCl", "LiCl", "CsI", "TiO2", "ZrO2", "HfO2",
                "CuSO4·5H2O", "Y2O3", "Li7La3Zr2O12", "", "NbN", "Mo2C", "WC", "Cu2O"]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": formulas, "k": list(range(len(formulas)))}), src)
    r1 = featurize_cli(src, "-o", tmp_path / "serial.parquet", "--jobs", "1")
    r2 = featurize_cli(src, "-o", tmp_path / "par.parquet", "--jobs", "2", "--batch-rows", "7")
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    a, b = pq.read_table(tmp_path / "serial.parquet"), pq.read_table(tmp_path / "par.parquet")
    assert a.column("k").to_pylist() == b.column("k").to_pylist()  # order preserved
    assert a.equals(b)
    assert pq.read_table(tmp_path / "serial.rejects.parquet").equals(pq.read_table(tmp_path / "par.rejects.parquet"))
    assert pq.read_table(tmp_path / "par.rejects.parquet").column("row").to_pylist() == [2, 3, 12, 24]


def test_matminer_engine_agrees_with_fast(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("formula\nNaCl\nFe2O3\nLa0.7Sr0.3MnO3\nCuSO4·5H2O\nLi7La3Zr2O12\n")
    assert featurize_cli(src, "-o", tmp_path / "fast.parquet").exit_code == 0
    r = featurize_cli(src, "-o", tmp_path / "mm.parquet", "--engine", "matminer")
    assert r.exit_code == 0, r.output
    fast = features_of(pq.read_table(tmp_path / "fast.parquet")).astype(np.float64)
    mm = features_of(pq.read_table(tmp_path / "mm.parquet")).astype(np.float64)
    assert fast.shape == mm.shape == (5, len(LABELS))
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(mm))
    np.testing.assert_allclose(mm, fast, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_unknown_engine_and_preset_refused(tmp_path, mixed):
    assert_refused(featurize_cli(mixed, "-o", tmp_path / "o.parquet", "--engine", "turbo"), "turbo")
    assert_refused(featurize_cli(mixed, "-o", tmp_path / "o.parquet", "--preset", "nope"), "nope", "magpie")
    assert not (tmp_path / "o.parquet").exists()


def test_fractions_preset(tmp_path, mixed):
    out = tmp_path / "fr.parquet"
    assert featurize_cli(mixed, "-o", out, "--preset", "fractions").exit_code == 0
    t = pq.read_table(out)
    labels = irscreen.feature_labels("fractions")
    X = np.column_stack([t.column(c).to_numpy() for c in labels])
    np.testing.assert_allclose(X.sum(1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- atomic output


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    import irscreen.pipeline as pipeline

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": ["NaCl", "MgO", "Fe2O3", "TiO2", "ZnS", "GaAs", "KCl", "CsI"]}), src)
    real = pipeline.featurize_formulas
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in batch 2")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "featurize_formulas", flaky)
    out = tmp_path / "out.parquet"
    r = featurize_cli(src, "-o", out, "--batch-rows", "3", "--jobs", "1")
    assert isinstance(r.exception, RuntimeError) and "boom" in str(r.exception)
    assert len(calls) == 2
    assert not out.exists()
    assert not (tmp_path / "out.rejects.parquet").exists()
    assert no_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_failure_keeps_previous_output_intact(tmp_path, monkeypatch):
    """Rerunning over an existing output and failing must not clobber the old file."""
    import irscreen.pipeline as pipeline

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": ["NaCl", "MgO", "Fe2O3", "TiO2"]}), src)
    out = tmp_path / "out.parquet"
    assert featurize_cli(src, "-o", out, "--batch-rows", "2").exit_code == 0
    before = out.read_bytes()
    real = pipeline.featurize_formulas
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "featurize_formulas", flaky)
    featurize_cli(src, "-o", out, "--batch-rows", "2")
    assert out.read_bytes() == before
    assert no_partials(tmp_path)


# --------------------------------------------------------------------------- the program


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"irscreen {irscreen.__version__}"
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("featurize", "train", "evaluate", "predict", "screen", "models"):
        assert cmd in r.stdout
    r = invoke("featurize", "--help")
    assert r.exit_code == 0
    for opt in ("--output", "--formula-column", "--engine", "--jobs", "--batch-rows", "--rejects"):
        assert opt in r.stdout


def test_featurize_does_not_import_torch(tmp_path, mixed):
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["irscreen", "featurize", {str(mixed)!r}, "-o", {str(tmp_path / "o.parquet")!r}, "-j", "1"]
        from irscreen.cli import main
        try:
            main()
        except SystemExit as e:
            code = e.code
        else:
            code = 0
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("RESULT", code, len(heavy))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Traceback" not in p.stderr, p.stderr
    result = [line for line in p.stdout.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT 0 0"], (p.stdout, p.stderr)
    assert (tmp_path / "o.parquet").is_file()
