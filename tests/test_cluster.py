"""featurize, predict and screen on a Dask cluster give the single-process files exactly:
the same rows in the same order, the same numbers, the same rejects with global row
numbers; over one file, a directory, a glob or a CSV file; with known phases and --hull;
when a worker is killed in the middle of the run, and when the driver is killed and the
screen resumed. Bad input and an unreachable scheduler are one error line. One 2-worker
LocalCluster (1 thread each) serves the whole module.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from irscreen import cluster
from irscreen.cluster import input_files, plan
from irscreen.errors import IrscreenError
from irscreen.pipeline import featurize_file
from irscreen.screening import ScreenOptions, predict_file, screen_file

from test_conditions import gap_model  # noqa: F401 (fixture)
from test_screen import BIG_K, assert_one_line_error, candidates, run_cli, tiny_model, work  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("one_torch_thread")]

BATCH = 150  # small batches and ranges: many tasks from a few thousand rows
RANGE = 400


def _warm_up():
    import irscreen.models.ensemble  # noqa: F401 - torch
    import irscreen.screening.runner  # noqa: F401
    from irscreen.features import featurize

    featurize(["Fe2O3"])


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        with Client(lc) as c:
            # the workers import torch while the tiny model trains
            warming = [c.submit(_warm_up, pure=False, workers=[w]) for w in c.nthreads()]  # noqa: F841
            yield c


@pytest.fixture(scope="module")
def parts(candidates, work):
    """The candidates cut into three files of a directory (sorted names = input order): a
    single row group, several row groups, and a small one; a stray non-data file beside."""
    t = pq.read_table(candidates["path"])
    d = work / "parts"
    d.mkdir()
    pq.write_table(t.slice(0, 1100), d / "a.parquet")  # one row group, as pandas writes
    pq.write_table(t.slice(1100, 1700), d / "b.parquet", row_group_size=333)
    pq.write_table(t.slice(2800), d / "c.parquet")
    (d / "_SUCCESS").write_text("")
    return d


def same_files(a, b) -> None:
    """Two outputs and their rejects files hold identical tables."""
    assert pq.read_table(a).equals(pq.read_table(b)), f"{a} != {b}"
    ra, rb = (p.with_name(p.stem + ".rejects.parquet") for p in (a, b))
    assert pq.read_table(ra).equals(pq.read_table(rb))


SCREENS = {
    "top25": ScreenOptions(top=25),
    "all-kappa-filtered": ScreenOptions(top=BIG_K, kappa=0.5, exclude_elements=["S"]),
    "maximize-caps": ScreenOptions(top=60, objective="maximize", unique=True, max_per_system=2),
}


@pytest.mark.parametrize("name", list(SCREENS))
def test_screen_is_the_single_process_screen(client, candidates, tiny_model, work, name):
    opts = SCREENS[name]
    one, many = work / f"one-{name}.parquet", work / f"many-{name}.parquet"
    screen_file(candidates["path"], one, opts, model=tiny_model, device="cpu", jobs=1, batch_rows=BATCH)
    seen = []
    res = cluster.screen_file(candidates["path"], many, opts, cluster=client, model=tiny_model, device="cpu",
                              batch_rows=BATCH, range_rows=RANGE, progress=lambda *a: seen.append(a[:2]))
    same_files(one, many)
    s = res.summary
    assert s.rows_read == candidates["n"] == s.rows_ok + s.rows_rejected
    assert s.rows_rejected == len(candidates["invalid"])
    assert seen[-1] == (candidates["n"], candidates["n"])  # the bar ends full, with the total
    assert not (work / f".many-{name}.parquet.cluster").exists()


@pytest.mark.parametrize("output", ["pred.parquet", "pred-parts"])
def test_predict_is_the_single_process_predict(client, candidates, tiny_model, work, output):
    one = work / "one-pred.parquet"
    predict_file(candidates["path"], one, model=tiny_model, members=True, device="cpu", jobs=1, batch_rows=BATCH)
    out = work / output
    s = cluster.predict_file(candidates["path"], out, cluster=client, model=tiny_model, members=True, device="cpu",
                             batch_rows=BATCH, range_rows=RANGE)
    assert s.rows_read == candidates["n"] and s.rows_rejected == len(candidates["invalid"])
    if out.suffix:
        same_files(one, out)
    else:  # a directory of parts, in input order
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"part-{i:06d}.parquet" for i in range(len(names))] and len(names) > 2
        assert pq.read_table(out).equals(pq.read_table(one))  # pyarrow reads a directory in name order
        assert pq.read_table(work / "pred-parts.rejects.parquet").equals(pq.read_table(work / "one-pred.rejects.parquet"))
        # a second run replaces its own parts directory
        cluster.predict_file(candidates["path"], out, cluster=client, model=tiny_model, members=True, device="cpu",
                             batch_rows=BATCH, range_rows=2 * RANGE)
        assert pq.read_table(out).equals(pq.read_table(one))


def test_several_models_are_the_single_process_run(client, candidates, tiny_model, gap_model, work):
    """--where/--also and predict -m A -m B: the other models (another preset) on the workers."""
    opts = ScreenOptions(top=40, kappa=0.5, unique=True, where=[f"{gap_model} >= 0.3", f"{tiny_model} < 0.2"])
    one, many = work / "one-where.parquet", work / "many-where.parquet"
    kw = dict(model=tiny_model, also=[str(tiny_model), str(gap_model)], device="cpu", batch_rows=BATCH)
    ref = screen_file(candidates["path"], one, opts, jobs=1, **kw)
    res = cluster.screen_file(candidates["path"], many, opts, cluster=client, range_rows=RANGE, **kw)
    same_files(one, many)
    assert pq.read_schema(many).names[-3:] == ["tiny-gap", "tiny-gap_uncertainty", "tiny-gap_extrapolation"]
    assert res.failed_conditions == ref.failed_conditions > 0 and res.others == ["tiny-gap"]
    one, many = work / "one-two.parquet", work / "many-two.parquet"
    predict_file(candidates["path"], one, model=tiny_model, also=[gap_model], device="cpu", jobs=1, batch_rows=BATCH)
    cluster.predict_file(candidates["path"], many, cluster=client, model=tiny_model, also=[gap_model], device="cpu",
                         batch_rows=BATCH, range_rows=RANGE)
    same_files(one, many)


def test_the_cascade_on_the_workers_is_the_exact_single_process_run(client, candidates, tiny_model, work):
    """A bundle with a student: each range runs the cascade on its worker; the merged
    shortlist is the single-process --exact one."""
    from test_cascade import with_student

    st = with_student(tiny_model, work / "tiny-student")
    one, many = work / "one-exact.parquet", work / "many-cascade.parquet"
    kw = dict(model=st, device="cpu", batch_rows=BATCH)
    screen_file(candidates["path"], one, ScreenOptions(top=30, exact=True), jobs=1, **kw)
    res = cluster.screen_file(candidates["path"], many, ScreenOptions(top=30), cluster=client, range_rows=RANGE, **kw)
    same_files(one, many)
    assert 0 < res.exact_rows < res.screened


def test_featurize_is_the_single_process_featurize(client, candidates, work):
    one, many = work / "one-feat.parquet", work / "many-feat.parquet"
    featurize_file(candidates["path"], one, jobs=1, batch_rows=BATCH)
    s = cluster.featurize_file(candidates["path"], many, cluster=client, batch_rows=BATCH, range_rows=RANGE)
    same_files(one, many)
    assert s.rows_read == s.rows_ok + s.rows_rejected == candidates["n"]


def test_directory_and_glob_are_one_input_in_sorted_file_order(client, candidates, tiny_model, work, parts):
    assert [p.name for p in input_files(parts)] == ["a.parquet", "b.parquet", "c.parquet"]
    assert input_files(f"{parts}/*.parquet") == input_files(parts)
    p = plan(parts, None, client, BATCH, 500)
    assert p.num_rows == candidates["n"]
    assert [(r.path.rsplit("/", 1)[1], r.start, r.stop, r.first_row) for r in p.ranges][:4] == [
        ("a.parquet", 0, 500, 0), ("a.parquet", 500, 1000, 500), ("a.parquet", 1000, 1100, 1000),
        ("b.parquet", 0, 500, 1100)]
    opts = ScreenOptions(top=BIG_K)
    one = work / "one-all.parquet"
    screen_file(candidates["path"], one, opts, model=tiny_model, device="cpu", jobs=1)
    for i, source in enumerate([parts, f"{parts}/*.parquet"]):
        out = work / f"dir-{i}.parquet"
        cluster.screen_file(source, out, opts, cluster=client, model=tiny_model, device="cpu", batch_rows=BATCH,
                            range_rows=RANGE)
        same_files(one, out)  # rejects carry global row numbers
    featurize_file(candidates["path"], work / "one-f.parquet", jobs=1)
    cluster.featurize_file(f"{parts}/[ab].parquet", work / "ab-f.parquet", cluster=client, range_rows=RANGE)
    everything = pq.read_table(work / "one-f.parquet")
    assert pq.read_table(work / "ab-f.parquet").equals(everything.filter(pc.less(everything["id"], 2800)))


def test_csv_input(client, candidates, work):
    csv = work / "candidates.csv"
    pacsv.write_csv(pq.read_table(candidates["path"]), csv)
    featurize_file(csv, work / "one-csv.parquet", jobs=1)
    cluster.featurize_file(csv, work / "many-csv.parquet", cluster=client, range_rows=RANGE)  # rows counted on a worker
    same_files(work / "one-csv.parquet", work / "many-csv.parquet")


@pytest.fixture(scope="module")
def fe_bundle(tiny_model, work, candidates):
    """The tiny bundle relabelled as a formation energy per atom, and a phases file (some
    of the candidates' own compositions among them), for --hull and --exclude-known."""
    bundle = work / "fe-bundle"
    shutil.copytree(tiny_model, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(target="formation_energy_per_atom", units="eV/atom")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    good = [f for f in candidates["formulas"] if f and f.isalnum()][:300:5]
    rng = np.random.default_rng(2)
    phases = work / "phases.parquet"
    pq.write_table(pa.table({"formula": good + ["Qq2"], "formation_energy_per_atom": list(rng.uniform(-1, 0, len(good)))
                             + [0.0]}), phases)
    return bundle, phases


def test_hull_and_known_phases(client, candidates, work, fe_bundle):
    from irscreen.screening.pool import read_metadata

    bundle, phases = fe_bundle
    kw = dict(model=bundle, device="cpu", batch_rows=BATCH, phases=phases)
    opts = ScreenOptions(top=30, hull=True, exclude_known=True, plot=True)
    screen_file(candidates["path"], work / "hull-one.parquet", opts, jobs=1, **kw)
    res = cluster.screen_file(candidates["path"], work / "hull-many.parquet", opts, cluster=client, range_rows=RANGE, **kw)
    same_files(work / "hull-one.parquet", work / "hull-many.parquet")
    assert res.known_left_out > 0 and res.phases_rejected == 1
    one, many = (read_metadata(pq.read_schema(work / f"hull-{x}.parquet")) for x in ("one", "many"))
    assert many["pool"] == one["pool"]  # the workers' pool statistics add up to one process's
    assert (work / "hull-many.png").exists()
    predict_file(candidates["path"], work / "hullp-one.parquet", jobs=1, hull=True, **kw)
    cluster.predict_file(candidates["path"], work / "hullp-many.parquet", cluster=client, hull=True, range_rows=RANGE,
                         **kw)
    same_files(work / "hullp-one.parquet", work / "hullp-many.parquet")
    assert pq.read_table(work / "hullp-many.phases-rejects.parquet").num_rows == 1


class DriverKilled(BaseException):
    """A simulated kill of the driver (BaseException: nothing tidies up)."""


def test_a_killed_driver_resumes_from_the_ranges_it_had(client, candidates, tiny_model, work):
    opts = ScreenOptions(top=40, kappa=0.5, max_per_system=3)
    one, out = work / "resume-one.parquet", work / "resumed.parquet"
    screen_file(candidates["path"], one, opts, model=tiny_model, device="cpu", jobs=1)
    kw = dict(cluster=client, model=tiny_model, device="cpu", batch_rows=BATCH, range_rows=RANGE)

    def kill_driver(done, total, status=""):
        if threading.current_thread() is threading.main_thread() and done >= 3 * RANGE:
            raise DriverKilled

    with pytest.raises(DriverKilled):
        cluster.screen_file(candidates["path"], out, opts, progress=kill_driver, **kw)
    committed = json.loads((work / "resumed.parquet.screen-state" / "state.json").read_text())["done"]
    assert not out.exists() and committed
    seen = []
    cluster.screen_file(candidates["path"], out, opts, resume=True, progress=lambda d, *_: seen.append(d), **kw)
    assert seen[0] >= len(committed) * RANGE  # the ranges committed before the kill are not run again
    same_files(one, out)
    assert not (work / "resumed.parquet.screen-state").exists()


def test_cli_on_a_scheduler_and_on_local_workers(capsys, client, candidates, tiny_model, work, parts):
    code, out, err = run_cli(capsys, "screen", parts, "--top", "5", "-m", tiny_model, "--device", "cpu",
                             "--scheduler", client.scheduler.address, "-o", work / "cli.parquet")
    assert code == 0, err
    assert "rows read" in err and "Traceback" not in err
    screen_file(candidates["path"], work / "cli-one.parquet", ScreenOptions(top=5), model=tiny_model, device="cpu",
                jobs=1)
    same_files(work / "cli-one.parquet", work / "cli.parquet")
    code, _, err = run_cli(capsys, "featurize", candidates["path"], "--workers", "1", "-o", work / "cli-feat")
    assert code == 0, err
    featurize_file(candidates["path"], work / "cli-feat-one.parquet", jobs=1)
    assert pq.read_table(work / "cli-feat").equals(pq.read_table(work / "cli-feat-one.parquet"))


def test_bad_input_is_one_line(capsys, client, candidates, tiny_model, work, parts, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    code, _, err = run_cli(capsys, "featurize", candidates["path"], "-o", work / "x.parquet", "--scheduler",
                           "tcp://127.0.0.1:9")
    assert_one_line_error(code, err, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    code, _, err = run_cli(capsys, "featurize", candidates["path"], "-o", work / "x.parquet", "--scheduler",
                           client.scheduler.address, "--workers", "2")
    assert_one_line_error(code, err, "--scheduler or --workers")
    code, _, err = run_cli(capsys, "featurize", candidates["path"], "-o", work / "x.parquet", "--workers", "0")
    assert_one_line_error(code, err, "--workers must be >= 1")
    cases = [
        (work / "nothing-*.parquet", "no file matches"),
        (work / "missing.parquet", "no such file"),
    ]
    (work / "empty-dir").mkdir()
    cases.append((work / "empty-dir", "holds no .parquet"))
    odd = work / "odd"
    odd.mkdir()
    pq.write_table(pq.read_table(parts / "a.parquet"), odd / "1.parquet")
    pq.write_table(pq.read_table(parts / "c.parquet").drop_columns(["tag"]), odd / "2.parquet")
    cases.append((odd, "2.parquet: columns"))
    for source, needle in cases:
        code, _, err = run_cli(capsys, "featurize", source, "-o", work / "x.parquet", "--scheduler",
                               client.scheduler.address)
        assert_one_line_error(code, err, needle)
    (work / "foreign").mkdir()
    (work / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(IrscreenError, match="other files than part"):
        cluster.featurize_file(candidates["path"], work / "foreign", cluster=client)
    assert (work / "foreign" / "notes.txt").read_text() == "mine"
    assert not (work / "x.parquet").exists()


# --------------------------------------------------------------------------- lost workers (last: a
# restarted worker is cold)


def kill_one_worker(client, at_least: int):
    """A progress callback that SIGKILLs one worker process, once, when the cluster has done
    ``at_least`` rows (its nanny starts a fresh worker; the scheduler reruns the lost tasks)."""
    pids = list(client.run(os.getpid).values())
    state = {"killed": False}

    def progress(done, total, status=""):
        if not state["killed"] and done >= at_least:
            state["killed"] = True
            os.kill(pids[0], signal.SIGKILL)

    return progress, state


def rerun_tasks(client) -> int:
    """Tasks the scheduler sent to a worker more than once (a lost worker's)."""
    def count(dask_scheduler):
        starts: dict = {}
        for key, _start, finish, *_ in dask_scheduler.transition_log:
            if finish == "processing":
                starts[key] = starts.get(key, 0) + 1
        return sum(n > 1 for n in starts.values())

    return client.run_on_scheduler(count)


@pytest.mark.parametrize("command", ["predict", "screen"])
def test_a_killed_worker_loses_no_rows(client, candidates, tiny_model, work, command):
    before = rerun_tasks(client)
    progress, state = kill_one_worker(client, at_least=100)
    out = work / f"killed-{command}.parquet"
    # long ranges of small batches: the worker dies in the middle of one
    kw = dict(cluster=client, model=tiny_model, device="cpu", batch_rows=20, range_rows=800, progress=progress)
    if command == "screen":
        cluster.screen_file(candidates["path"], out, ScreenOptions(top=BIG_K, kappa=1.0), **kw)
        screen_file(candidates["path"], work / "unkilled.parquet", ScreenOptions(top=BIG_K, kappa=1.0),
                    model=tiny_model, device="cpu", jobs=1)
    else:
        cluster.predict_file(candidates["path"], out, **kw)
        predict_file(candidates["path"], work / "unkilled.parquet", model=tiny_model, device="cpu", jobs=1)
    assert state["killed"]
    assert rerun_tasks(client) > before
    same_files(work / "unkilled.parquet", out)
    client.wait_for_workers(2, timeout=60)  # the nanny has started a fresh worker
