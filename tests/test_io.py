"""irscreen.io input: CSV as spreadsheets write it (byte-order mark, CRLF), formula
columns found by name in any case, and error messages that show every character."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import irscreen
from irscreen.cli import app
from irscreen.errors import IrscreenError
from irscreen.io import FORMULA_COLUMNS, open_table

LABELS = irscreen.feature_labels("magpie")
BOM = "\ufeff"

runner = CliRunner()


def featurize_cli(*args):
    return runner.invoke(app, ["featurize", *map(str, args), "-j", "1"])


def refusal(result) -> str:
    """The one-line IrscreenError message the command stopped with."""
    assert isinstance(result.exception, IrscreenError), (result.exception, result.output)
    msg = str(result.exception)
    assert "\n" not in msg
    return msg


def write_csv(path, text: str, bom: bool = False) -> None:
    path.write_bytes((BOM if bom else "").encode() + text.encode("utf-8"))


def test_excel_csv_with_bom_featurizes(tmp_path):
    # Excel's "CSV UTF-8": a byte-order mark, CRLF line ends, its own column names.
    src = tmp_path / "excel.csv"
    write_csv(src, "Composition,id\r\nNaN,1\r\nFe2O3,2\r\nXx2O,3\r\nLa0.7Sr0.3MnO3,4\r\n", bom=True)
    table = open_table(src)
    assert table.columns == ["Composition", "id"]
    assert table.find_formula_column() == "Composition"
    # pyarrow's reader agrees on the names, and reads the formula column as strings.
    first = next(table.batches(10, string_columns=("Composition",)))
    assert first.schema.names == ["Composition", "id"]
    assert first.column(0).type == pa.string()

    out = tmp_path / "out.parquet"
    r = featurize_cli(src, "-o", out)
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.column_names[:2] == ["Composition", "id"]
    assert t.column("Composition").to_pylist() == ["NaN", "Fe2O3", "La0.7Sr0.3MnO3"]  # NaN: sodium nitride
    assert t.column("id").to_pylist() == [1, 2, 4]
    X = np.column_stack([t.column(c).to_numpy() for c in LABELS])
    expected = irscreen.featurize(["NaN", "Fe2O3", "La0.7Sr0.3MnO3"]).to_numpy(np.float32)
    np.testing.assert_array_equal(X, expected)
    rejects = pq.read_table(tmp_path / "out.rejects.parquet").to_pylist()
    assert [(row["row"], row["formula"]) for row in rejects] == [(2, "Xx2O")]


@pytest.mark.parametrize("name", ["Formula", "FORMULA", "composition", "pretty_formula", "Reduced_Formula"])
def test_formula_column_in_any_case(tmp_path, name):
    src = tmp_path / "c.csv"
    write_csv(src, f"id,{name}\n1,NaCl\n2,NaN\n")
    assert open_table(src).find_formula_column() == name
    out = tmp_path / "out.parquet"
    r = featurize_cli(src, "-o", out)
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column(name).to_pylist() == ["NaCl", "NaN"]


@pytest.mark.parametrize(
    "columns,expected",
    [
        (["Formula", "composition"], "composition"),  # an exact name beats another case
        (["Composition", "formula"], "formula"),
        (["pretty_formula", "reduced_formula"], "reduced_formula"),  # then the order of preference
        (["PRETTY_FORMULA", "Reduced_Formula"], "Reduced_Formula"),
        (["FORMULA", "Formula"], "FORMULA"),  # same name in two cases: the first in the file
        (["name", "formulas"], None),
    ],
)
def test_formula_column_preference(tmp_path, columns, expected):
    pq.write_table(pa.table({c: ["NaCl"] for c in columns}), tmp_path / "t.parquet")
    assert open_table(tmp_path / "t.parquet").find_formula_column() == expected


def test_formula_column_option_is_exact(tmp_path):
    src = tmp_path / "c.csv"
    write_csv(src, "Formula,id\nNaCl,1\n")
    msg = refusal(featurize_cli(src, "-o", tmp_path / "out.parquet", "--formula-column", "formula"))
    assert msg.startswith(str(src)) and "'formula'" in msg and "Formula, id" in msg


def test_no_formula_column_message_shows_invisible_characters(tmp_path):
    # A zero-width space makes "formula" another name; a byte-order mark in the middle
    # of the header and a non-breaking space are just as invisible on screen.
    src = tmp_path / "odd.csv"
    write_csv(src, "\u200bformula,id\ufeff,tar\u00a0get\nNaCl,1,2\n", bom=True)
    msg = refusal(featurize_cli(src, "-o", tmp_path / "out.parquet"))
    assert msg.startswith(str(src))
    assert all(ch.isprintable() for ch in msg), ascii(msg)
    assert "columns: \\u200bformula, id\\ufeff, tar\\xa0get" in msg
    assert f"looked for {', '.join(FORMULA_COLUMNS)}" in msg
    assert "--formula-column" in msg
    assert not (tmp_path / "out.parquet").exists()


def test_bom_is_not_part_of_a_column_name(tmp_path):
    src = tmp_path / "c.csv"
    write_csv(src, "name,target\nNaCl,1.0\n", bom=True)
    msg = refusal(featurize_cli(src, "-o", tmp_path / "out.parquet"))
    assert "columns: name, target)" in msg
    msg = refusal(featurize_cli(src, "-o", tmp_path / "out.parquet", "--formula-column", "Name"))
    assert "(columns: name, target)" in msg
