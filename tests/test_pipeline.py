"""The file pipeline's promises: rows in = rows out + rows rejected, a row with a
non-finite feature is a reject naming the feature, and an output and its rejects file are
committed together (both or neither), even under a kill."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irscreen.atomic import journal_path, recover
from irscreen.features import PRESETS, Preset
from irscreen.io import default_rejects_path
from irscreen.pipeline import featurize_file

FORMULAS = ["NaCl", "Fe2O3", "KCl", "Xx2", "LiF", "CaCl2", "MgO"]


def _half_broken(batch) -> np.ndarray:
    """A three-column test preset whose middle column is NaN for chlorides, inf for fluorides."""
    z = np.asarray(batch.elements)
    out = np.ones((z.shape[0], 3))
    out[(z == 17).any(axis=1), 1] = np.nan
    out[(z == 9).any(axis=1), 1] = np.inf
    out[~np.asarray(batch.ok)] = np.nan
    return out


def test_a_non_finite_feature_rejects_the_row_and_names_the_feature(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "half-broken", Preset("half-broken", ["a", "b", "c"], _half_broken))
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": FORMULAS}), src)
    out = tmp_path / "out.parquet"
    s = featurize_file(src, out, preset="half-broken")
    rejects = pq.read_table(default_rejects_path(out)).to_pandas()
    assert s.rows_read == len(FORMULAS) == s.rows_ok + s.rows_rejected
    assert pq.read_table(out).column("formula").to_pylist() == ["Fe2O3", "MgO"]
    reasons = dict(zip(rejects["formula"], rejects["error"]))
    assert set(reasons) == {"NaCl", "KCl", "Xx2", "LiF", "CaCl2"}
    assert "feature 'b' is nan" in reasons["NaCl"] and "feature 'b' is inf" in reasons["LiF"]
    assert "unknown element" in reasons["Xx2"].lower() or "Xx" in reasons["Xx2"]


def test_missing_ok_columns_are_allowed(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "half-ok", Preset("half-ok", ["a", "b", "c"], _half_broken, missing_ok=frozenset({"b"})))
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": FORMULAS}), src)
    s = featurize_file(src, tmp_path / "out.parquet", preset="half-ok")
    assert s.rows_rejected == 1  # only Xx2


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    from irscreen.pipeline import featurize_file
    kill_after = int(sys.argv[3])
    real, calls = os.replace, [0]
    def replace(a, b):
        real(a, b)
        calls[0] += 1
        if calls[0] == kill_after:
            os._exit(9)  # a hard kill: no cleanup runs
    os.replace = replace
    if len(sys.argv) > 4:  # a third file in the same commit, as predict --phases writes its rejects
        import pyarrow as pa
        from irscreen.io import open_table
        from irscreen.pipeline import featurize_table, write_rows
        table = open_table(sys.argv[1])
        write_rows(table, featurize_table(table, "formula", "magpie", "fast", 64, 1), lambda fb: fb.rows,
                   sys.argv[2], extra={sys.argv[4]: pa.table({"row": [3], "error": ["bad phase"]})})
    else:
        featurize_file(sys.argv[1], sys.argv[2], jobs=1)
    print("finished", calls[0])
""")


def test_output_and_rejects_both_or_neither_under_a_kill(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": FORMULAS * 50}), src)
    run = lambda out, k: subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(out), str(k)],  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    full = run(tmp_path / "full.parquet", 10**6)
    assert full.returncode == 0, full.stderr
    n_renames = int(full.stdout.split()[-1])
    assert n_renames >= 3  # the journal, the output, the rejects file
    for k in range(1, n_renames + 1):
        out = tmp_path / f"killed-{k}.parquet"
        r = run(out, k)
        assert r.returncode == 9, r.stderr
        rejects = default_rejects_path(out)
        if not journal_path(out).exists():  # no commit in flight: both or neither already
            assert out.exists() == rejects.exists(), k
        recover(out)  # what the next irscreen command on this output does first
        assert out.exists() == rejects.exists(), k
        assert not journal_path(out).exists()
        if out.exists():
            assert pq.read_table(out).equals(pq.read_table(tmp_path / "full.parquet"))
            assert pq.read_table(rejects).equals(pq.read_table(default_rejects_path(tmp_path / "full.parquet")))


def test_a_third_file_joins_the_commit(tmp_path):
    """predict --phases writes the phases file's rejects in the same commit as its output."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"formula": FORMULAS * 20}), src)
    run = lambda out, k: subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(out), str(k),  # noqa: E731
                                         str(out.with_suffix(".extra.parquet"))], capture_output=True, text=True,
                                        timeout=120)
    full = run(tmp_path / "full.parquet", 10**6)
    assert full.returncode == 0, full.stderr
    n_renames = int(full.stdout.split()[-1])
    assert n_renames >= 4  # the journal, the output, the rejects file, the extra file
    for k in range(1, n_renames + 1):
        out = tmp_path / f"killed-{k}.parquet"
        assert run(out, k).returncode == 9
        recover(out)
        files = [out, default_rejects_path(out), out.with_suffix(".extra.parquet")]
        assert len({f.exists() for f in files}) == 1, (k, [f.exists() for f in files])
    assert pq.read_table(tmp_path / "full.extra.parquet").column("error").to_pylist() == ["bad phase"]


def test_recover_without_journal_is_a_no_op(tmp_path):
    assert recover(tmp_path / "nothing.parquet") is False


@pytest.mark.parametrize("after", [0, 1])
def test_an_interrupt_after_the_commit_point_completes_it(tmp_path, after):
    """Ctrl-C between the two renames still leaves both files."""
    from irscreen.atomic import commit_together

    pairs = []
    for name in ("out.txt", "out.rejects.txt"):
        tmp = tmp_path / f".{name}.partial"
        tmp.write_text(name)
        pairs.append((tmp, tmp_path / name))

    def interrupt(i):
        if i == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        commit_together(pairs, _after_rename=interrupt)
    assert (tmp_path / "out.txt").read_text() == "out.txt"
    assert (tmp_path / "out.rejects.txt").read_text() == "out.rejects.txt"
    assert not journal_path(tmp_path / "out.txt").exists()
