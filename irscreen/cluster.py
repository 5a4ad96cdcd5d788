"""featurize, predict and screen on a Dask cluster, for inputs one machine is too slow for.

The input (a file, a directory of files or a glob; Parquet or CSV) is cut into row
ranges, each inside one file. Ranges are cut by row count, not by row group: a file
written by pandas is often a single row group. One range is one Dask task, and the
worker reads its own rows (the driver reads file footers only), then runs the
single-process code on them: ``pipeline.featurize_table``, then ``runner._score_batch``
into a ``TopK`` (screen: the range's own top K comes back) or ``pipeline.write_rows``
(featurize, predict: the worker writes the range's part and its rejects beside the
output). The driver merges the top Ks and writes the outputs as one process would.

Why the result is the single-process result, row for row and bit for bit:

- a row's numbers do not depend on the rows sharing its batch (``Model.predict_members``
  pads every inference call to one GEMM shape), so ranges may be cut anywhere;
- row numbers are global (files in sorted order, rows counted across them), so rejects
  and ties (broken by input order) read as one process reading the files in turn;
- the shortlist is one greedy pass over rows sorted by (score, row), with the caps. A row
  its range's top K turned away has K better rows in that range, or better rows filling
  its cap there; each of those is in the global shortlist or was turned away in favour
  of an even better row, so the row cannot enter the global shortlist either. Merging
  the ranges' top Ks, in whatever order they finish, gives the full input's shortlist;
- parts and rejects are kept per range and joined in range order.

A lost worker loses no rows: the scheduler runs its tasks again elsewhere. A part
appears under its name only complete (``write_rows`` commits it with its rejects), so a
task that runs twice writes the same files. A lost driver is what ``screen --resume`` is
for: the driver commits a checkpoint (``screening.state``) for every range it receives.
"""
from __future__ import annotations

import glob
import math
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irscreen.atomic import commit_together, recover
from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.errors import IrscreenError
from irscreen.io import REJECTS_SCHEMA, AtomicWriter, default_rejects_path, open_table
from irscreen.pipeline import DEFAULT_BATCH_ROWS, RejectsLog, Summary, featurize_table, write_rows

#: Data files a directory input is made of (hidden files and _SUCCESS-style markers are not).
SUFFIXES = (".parquet", ".pq", ".csv")
#: Ranges per worker thread when the range size is left to us: enough that a slow range
#: or a lost worker does not leave the others idle at the end.
TASKS_PER_THREAD = 4
#: The largest range: its task's retry after a lost worker redoes at most this many rows.
MAX_RANGE_ROWS = 16 * DEFAULT_BATCH_ROWS
#: How long to wait for a scheduler to answer.
CONNECT_TIMEOUT = "20s"


# --------------------------------------------------------------------------- the cluster


@contextmanager
def connect(cluster):
    """A distributed Client for ``cluster``: a Client (used as it is), a scheduler address
    (``tcp://host:8786``, or a scheduler file's path), or a number of local workers."""
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    if isinstance(cluster, int) and not isinstance(cluster, bool):
        if cluster < 1:
            raise IrscreenError(f"--workers must be >= 1 (got {cluster})")
        # worker processes (the GIL would serialize featurization in threads of one), the
        # machine's cores shared among them; no dashboard (it would need bokeh)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // cluster)
        with LocalCluster(n_workers=cluster, threads_per_worker=threads, processes=True, dashboard_address=None) as lc:
            with Client(lc) as client:
                yield client
        return
    address = str(cluster)
    kwargs = {"scheduler_file": address} if address.endswith(".json") else {"address": address}
    try:
        client = Client(timeout=CONNECT_TIMEOUT, **kwargs)
    except (OSError, TimeoutError, ValueError) as e:
        raise IrscreenError(f"cannot reach the Dask scheduler at {address} ({_first_line(e)})") from None
    with client:
        yield client


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------- input and ranges


def input_files(source) -> list[Path]:
    """A file; a directory's data files; or the files a glob matches. Sorted by path: the
    order that numbers the rows."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith((".", "_"))]
        if not files:
            raise IrscreenError(f"{path}: directory holds no {', '.join(SUFFIXES)} files")
    elif path.exists() or not glob.has_magic(str(source)):
        return [path]  # open_table says what is wrong with it, if anything
    else:
        files = [Path(p) for p in glob.glob(str(source), recursive=True) if Path(p).is_file()]
        if not files:
            raise IrscreenError(f"{source}: no file matches")
    return sorted(files, key=str)


@dataclass(frozen=True)
class Range:
    """Rows [start, stop) of one input file; ``first_row`` is the global number of row ``start``."""

    index: int
    path: str
    start: int
    stop: int
    first_row: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class Plan:
    source: str  # what the user named
    columns: list[str]
    column: str  # the formula column
    ranges: list[Range]
    num_rows: int
    range_rows: int


def plan(source, formula_column: str | None, client, batch_rows: int, range_rows: int | None = None) -> Plan:
    """Check the input files (same columns in each) and cut them into ranges. Parquet row
    counts come from the footers; CSV files, which have none, are counted on the workers."""
    if batch_rows < 1:
        raise IrscreenError("--batch-rows must be >= 1")
    files = input_files(source)
    first = open_table(files[0])
    column = first.formula_column(formula_column)
    counts = [first.num_rows]
    for f in files[1:]:
        t = open_table(f)
        _check_same_columns(first, t)
        counts.append(t.num_rows)
    csv = [i for i, n in enumerate(counts) if n is None]
    if csv:
        for i, n in zip(csv, client.gather(client.map(_count_rows, [str(files[i]) for i in csv], pure=False))):
            counts[i] = n
    total = sum(counts)
    if total == 0:
        raise IrscreenError(f"{source}: {'file has' if len(files) == 1 else 'files have'} no rows")
    if range_rows is None:
        threads = max(1, sum(client.nthreads().values()))
        range_rows = min(MAX_RANGE_ROWS, max(batch_rows, math.ceil(total / (TASKS_PER_THREAD * threads))))
    ranges, first_row = [], 0
    for f, n in zip(files, counts):
        for start in range(0, n, range_rows):
            ranges.append(Range(len(ranges), str(f.resolve()), start, min(n, start + range_rows), first_row + start))
        first_row += n
    return Plan(str(source), first.columns, column, ranges, total, range_rows)


def _check_same_columns(first, t) -> None:
    if t.columns != first.columns:
        raise IrscreenError(f"{t.path}: columns ({', '.join(t.columns)}) differ from {first.path}'s "
                            f"({', '.join(first.columns)}); every input file needs the same columns")
    if first.kind == t.kind == "parquet":
        for a, b in zip(first._pq.schema_arrow, t._pq.schema_arrow):
            if a.type != b.type:
                raise IrscreenError(f"{t.path}: column {b.name!r} holds {b.type}, {first.path} holds {a.type}; "
                                    "every input file needs the same column types")


def _count_rows(path: str) -> int:
    """Worker: the rows of a CSV file."""
    return sum(rb.num_rows for rb in open_table(path).batches(1 << 20))


class RangeTable:
    """One range with the face of ``io.Table`` that ``featurize_table`` and ``write_rows``
    read (``path``, ``num_rows``, ``batches``). A Parquet range starts reading at the row
    group that holds its first row (pyarrow writes row groups of at most 1Mi rows by
    default); a CSV range reads its file from the top (CSV has no index), so a big CSV
    input is better converted to Parquet, or split into files, first."""

    def __init__(self, r: Range):
        if not Path(r.path).exists():
            raise IrscreenError(f"{r.path}: not found on this worker; the input must be on a filesystem "
                                "every worker shares")
        self.r = r
        self.table = open_table(r.path)
        self.path = self.table.path
        self.num_rows = r.rows

    def batches(self, batch_rows: int, string_columns: tuple[str, ...] = ()):
        r, t = self.r, self.table
        if t.kind == "parquet":
            md = t._pq.metadata
            ends = np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])
            g0, g1 = np.searchsorted(ends, [r.start, r.stop - 1], side="right")
            pos = int(ends[g0] - md.row_group(int(g0)).num_rows)
            source = t._pq.iter_batches(batch_size=batch_rows, row_groups=range(int(g0), int(g1) + 1))
        else:
            pos, source = 0, t.batches(batch_rows, string_columns)
        try:
            for rb in source:
                lo, hi = max(r.start, pos), min(r.stop, pos + rb.num_rows)
                if lo < hi:
                    yield rb.slice(lo - pos, hi - lo)
                pos += rb.num_rows
                if pos >= r.stop:
                    return
        except (pa.ArrowInvalid, OSError) as e:
            raise IrscreenError(f"{r.path}: cannot read rows {r.start:,}-{r.stop:,} ({_first_line(e)})") from None


def featurized(table: RangeTable, column: str, preset: str, engine: str, batch_rows: int, also: tuple = ()):
    """``featurize_table`` over one range, with global row numbers (batch starts and rejects)."""
    r = table.r
    for fb in featurize_table(table, column, preset, engine, batch_rows, also=also):
        rejects = fb.rejects
        if rejects.num_rows:
            i = rejects.schema.get_field_index("row")
            rejects = rejects.set_column(i, REJECTS_SCHEMA.field("row"), pc.add(rejects.column(i), r.first_row))
        yield replace(fb, start=fb.start + r.first_row, rejects=rejects)


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Job:
    """What every task of a run needs besides its range (small: it travels with each task)."""

    topic: str  # progress events go here
    column: str
    batch_rows: int
    stage: str = ""  # featurize, predict: where parts and their rejects go
    digits: int = 6  # width of the range number in file names
    preset: str = "magpie"
    engine: str = "fast"
    model: str = ""  # a shipped bundle's name, or a bundle's absolute path
    members: tuple = ()  # its members' sha256, to check a worker sees the same bundle
    others: tuple = ()  # the run's other models: (reference, members' sha256) each (screening.predict.Models)
    conditions: tuple = ()  # screen --where, bound to their columns (screening.conditions.Condition)
    device: str = "auto"  # resolved on the worker (each dask-cuda worker sees its own GPU)
    precision: str = DEFAULT_PRECISION
    with_members: bool = False
    hull: bool = False
    opts: object = None  # ScreenOptions


_models: dict = {}
_models_lock = threading.Lock()
_malloc_tuned = False


def worker_setup() -> None:
    """Worker, once per process: let glibc malloc reuse large blocks again. Dask's nanny
    starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the
    OS), which also pins the mmap threshold at 128 KiB: every batch-sized array is then a
    fresh mmap whose pages are faulted in and zeroed, and inference ran at half speed
    (2,700 instead of 5,600 rows/s on one core, measured here). The values are glibc's
    own dynamic maximum on 64-bit; memory stays bounded by a batch."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to undo
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def load_once(ref: str):
    """Worker: the bundle ``ref`` (a shipped name or a path), loaded once per worker
    process and shared by its threads."""
    from irscreen.models.ensemble import load_model

    with _models_lock:
        if ref not in _models:
            _models[ref] = load_model(ref)
        return _models[ref]


def _checked(ref: str, members: tuple):
    m = load_once(ref)
    if _members(m) != members:
        raise IrscreenError(f"model bundle {ref}: a worker finds other weights there than the driver; give "
                            "every worker the same bundle")
    return m


def worker_model(job: Job):
    return _checked(job.model, job.members)


def worker_models(job: Job):
    """Worker: the run's Models, as the driver loaded them."""
    from irscreen.screening.predict import Models

    return Models(worker_model(job), [_checked(ref, members) for ref, members in job.others],
                  [ref for ref, _ in job.others])


def _warm(client, *models) -> list:
    """Every worker loads the bundles now, while the driver loads them too. The futures must
    be held until the tasks are submitted (a dropped future is cancelled); a failure here
    is reported by the first task."""
    return [client.submit(load_once, _model_ref(model), pure=False, workers=[w])
            for model in models for w in client.nthreads()]


def _listed(also) -> list:
    return [also] if isinstance(also, (str, Path)) else list(also)


def _others(models) -> tuple:
    """A Job's ``others``: what each worker loads, and the weights it must find there."""
    return tuple((_model_ref(ref), _members(m)) for ref, m in zip(models.refs, models.others))


def _report(job: Job, r: Range, rows: int) -> None:
    """Rows of the range done so far, to the driver's progress bar."""
    from distributed import get_worker

    try:
        get_worker().log_event(job.topic, [r.index, rows])
    except ValueError:  # not on a worker (a task called directly)
        pass


def screen_range(r: Range, job: Job, phases=None) -> dict:
    """Worker: the range's own shortlist (its top K with the helper columns), rejects and counts."""
    from irscreen.screening.pool import new_pool
    from irscreen.screening.predict import device_type
    from irscreen.screening.runner import _score_batch
    from irscreen.screening.topk import TopK

    worker_setup()
    models, opts = worker_models(job), job.opts
    dev = device_type(job.device)
    top = TopK(opts.top, opts.max_per_system, opts.unique)
    pool = new_pool(models.main, opts) if opts.plot else None
    n = {"rows_done": 0, "rejected": 0, "screened": 0}  # and whatever _score_batch counts
    rejects = []
    for fb in featurized(RangeTable(r), job.column, models.main.preset, "fast", job.batch_rows, models.also_presets):
        counts = _score_batch(fb, models, opts, dev, phases, top, pool, job.conditions)
        rejects.append(fb.rejects)
        _add(n, {"rows_done": fb.n_in, "rejected": fb.rejects.num_rows, "screened": fb.rows.num_rows, **counts})
        _report(job, r, n["rows_done"])
    return {"top": top.table, "schema": top.schema, "rejects": pa.concat_tables(rejects), "counts": n, "pool": pool}


def _add(total: dict, counts: dict) -> None:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + v


def _part_paths(job: Job, r: Range) -> tuple[Path, Path]:
    stage, i = Path(job.stage), f"{r.index:0{job.digits}d}"
    if not stage.is_dir():
        raise IrscreenError(f"{stage}: not found on this worker; the output must be on a filesystem every worker "
                            "shares")
    return stage / "parts" / f"part-{i}.parquet", stage / "rejects" / f"rejects-{i}.parquet"


def _write_part(r: Range, job: Job, preset: str, transform, also: tuple = ()) -> dict:
    """Worker: the range's rows through ``transform`` into its part, its rejects beside it
    (committed together), by the single-process ``write_rows``."""
    worker_setup()
    part, rejects = _part_paths(job, r)
    table = RangeTable(r)
    batches = featurized(table, job.column, preset, job.engine, job.batch_rows, also)
    s = write_rows(table, batches, transform, part, rejects, progress=lambda done, _: _report(job, r, done))
    return {"rows": s.rows_read, "ok": s.rows_ok, "rejected": s.rows_rejected}


def featurize_range(r: Range, job: Job) -> dict:
    from irscreen.pipeline import feature_batch, feature_fields, feature_spec

    spec = feature_spec(job.preset, job.engine, job.batch_rows)
    labels = feature_fields(spec, r.path, [])  # the driver checked the input's columns
    return _write_part(r, job, spec.name, lambda fb: feature_batch(fb, labels))


def predict_range(r: Range, job: Job, phases=None) -> dict:
    from irscreen.screening.predict import device_type, prediction_batch

    models = worker_models(job)
    dev = device_type(job.device)
    return _write_part(r, job, models.main.preset,
                       lambda fb: prediction_batch(fb, models, job.precision, dev, job.with_members, phases, job.hull),
                       models.also_presets)


# --------------------------------------------------------------------------- driver side


def run(client, task, p: Plan, job: Job, progress=None, status=lambda: "", ranges=None, **kwargs):
    """One task per range of ``ranges`` (default: all); yields (range, result) as tasks
    finish, and reports rows done across the cluster (each worker reports every batch)."""
    from distributed import KilledWorker, as_completed

    ranges = p.ranges if ranges is None else ranges
    lock = threading.Lock()
    done: dict[int, int] = {}
    finished: set[int] = set()
    total = [p.num_rows - sum(r.rows for r in ranges)]  # ranges a resumed run has already

    def count(i: int, rows: int) -> None:
        with lock:
            if i in finished:  # a late report of a range already in
                return
            total[0] += rows - done.get(i, 0)
            done[i] = rows
        if progress:
            progress(total[0], p.num_rows, status())

    client.subscribe_topic(job.topic, lambda event: count(*event[1]))
    futures = client.map(task, ranges, job=job, pure=False, **kwargs) if ranges else []
    by_key = {f.key: r for f, r in zip(futures, ranges)}
    try:
        for fut in as_completed(futures):
            r = by_key[fut.key]
            try:
                result = fut.result()
            except KilledWorker as e:
                raise IrscreenError(f"{r.path} rows {r.start:,}-{r.stop:,}: the task took down every worker it ran on "
                                    f"({_first_line(e)}); out of memory? try a smaller --batch-rows") from None
            except CancelledError as e:
                raise IrscreenError(f"lost the Dask scheduler ({_first_line(e)})") from None
            except OSError as e:  # a file the task could not read or write, or a lost connection
                raise IrscreenError(f"{r.path} rows {r.start:,}-{r.stop:,}: {_first_line(e)}") from None
            fut.release()
            count(r.index, r.rows)
            with lock:
                finished.add(r.index)
            yield r, result
    finally:  # an error or Ctrl-C: nothing keeps running for us
        client.unsubscribe_topic(job.topic)
        client.cancel([f for f in futures if not f.done()])


def _workers(client) -> str:
    n = len(client.nthreads())
    return f"{n} worker{'s' if n != 1 else ''}"


def _new_job(p: Plan, **fields) -> Job:
    return Job(topic=f"irscreen-progress-{uuid.uuid4().hex}", column=p.column,
               digits=max(6, len(str(len(p.ranges) - 1))), **fields)


def _check_device(device: str) -> None:
    """The name only: ``auto`` and ``cuda`` are resolved on each worker, not on the driver
    (a login node without a GPU drives GPU workers)."""
    from irscreen.models.device import DEVICES

    if device not in DEVICES:
        raise IrscreenError(f"unknown device {device!r} ({', '.join(DEVICES)})")


class Stage:
    """A run's working directory beside the output, ``.OUTPUT.cluster``: ``parts/`` and
    ``rejects/``, one file per range, named by range number. Workers write there, so it is
    on the output's filesystem, which the workers must share. Removed when the run ends."""

    def __init__(self, output: Path):
        self.dir = output.with_name(f".{output.name}.cluster")
        shutil.rmtree(self.dir, ignore_errors=True)  # a killed run's
        (self.dir / "parts").mkdir(parents=True)
        (self.dir / "rejects").mkdir()

    def rejects(self) -> list[Path]:
        return sorted((self.dir / "rejects").glob("rejects-*.parquet"))

    def parts(self) -> list[Path]:
        return sorted((self.dir / "parts").glob("part-*.parquet"))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def is_parts_dir(output: Path) -> bool:
    """``-o DIR`` (an existing directory, or a name without a suffix) asks for a directory of
    Parquet parts; ``-o FILE.parquet`` (or .csv) for one file."""
    return output.is_dir() or output.suffix == ""


def _commit_parts(stage: Stage, output: Path, rejects_path: Path, n_ranges: int, extra: dict | None = None) -> None:
    """The parts as OUTPUT (a directory of parts, or one file joined in range order) and
    the rejects joined in range order, committed together (with ``extra``: {path: table})."""
    parts = stage.parts()
    if len(parts) != n_ranges:  # every task succeeded, so this is a bug, not bad input
        raise RuntimeError(f"{stage.dir}: {len(parts)} parts for {n_ranges} ranges")
    rejects = RejectsLog(rejects_path)
    writer = None
    others = []
    try:
        for f in stage.rejects():
            rejects.add(pq.read_table(f))
        if is_parts_dir(output):
            for f in (stage.dir / "parts").iterdir():  # a killed attempt's temporary files
                if f.name.startswith("."):
                    f.unlink()
            if output.exists():  # the previous run's parts (checked before the run)
                os.replace(output, stage.dir / "replaced")
            pending = [(stage.dir / "parts", output)]
        else:
            writer = AtomicWriter(output, pq.read_schema(parts[0]))
            for f in parts:
                pf = pq.ParquetFile(f)
                for g in range(pf.num_row_groups):
                    writer.write(pf.read_row_group(g))
            pending = [writer.finish()]
        for path, t in (extra or {}).items():
            others.append(AtomicWriter(path, t.schema))
            others[-1].write(t)
        commit_together(pending + [rejects.finish()] + [w.finish() for w in others])
    except BaseException:
        rejects.abort()
        for w in (writer, *others):
            if w is not None:
                w.abort()
        raise


def _check_parts_output(output: Path) -> None:
    if not output.parent.exists():
        raise IrscreenError(f"{output}: output directory {output.parent} does not exist")
    if output.exists() and not output.is_dir() and output.suffix == "":
        raise IrscreenError(f"{output}: exists and is not a directory (a name without a suffix asks for a directory "
                            "of parts)")
    if output.is_dir():
        other = [f.name for f in output.iterdir() if not (f.name.startswith("part-") and f.suffix == ".parquet")]
        if other:
            raise IrscreenError(f"{output}: a directory holding other files than part-*.parquet ({other[0]}); "
                                "irscreen replaces only a directory of its own parts")


def _write_parts(client, task, p: Plan, job_fields: dict, output_path, rejects_path, progress, extra=None,
                 **kwargs) -> Summary:
    """featurize and predict: every range's part and rejects, then the output (and ``extra``)."""
    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    if is_parts_dir(output_path):
        _check_parts_output(output_path)
    else:  # a bad file type or a missing directory fails now, not after the work
        AtomicWriter(output_path, REJECTS_SCHEMA).abort()
    recover(output_path)
    stage = Stage(output_path)
    job = _new_job(p, stage=str(stage.dir), **job_fields)
    s = Summary(output=str(output_path), rejects=str(rejects_path))
    status = _workers(client)
    try:
        for _, res in run(client, task, p, job, progress, lambda: status, **kwargs):
            s.rows_read += res["rows"]
            s.rows_ok += res["ok"]
            s.rows_rejected += res["rejected"]
        _commit_parts(stage, output_path, rejects_path, len(p.ranges), extra)
    finally:
        stage.remove()
    return s


def featurize_file(input_path, output_path, *, cluster, formula_column=None, preset="magpie", engine="fast",
                   batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None, progress=None, range_rows=None) -> Summary:
    """``pipeline.featurize_file`` on a cluster: OUTPUT is one file, or a directory of
    Parquet parts (``is_parts_dir``)."""
    from irscreen.pipeline import feature_fields, feature_spec

    t0 = time.perf_counter()
    spec = feature_spec(preset, engine, batch_rows)
    with connect(cluster) as client:
        p = plan(input_path, formula_column, client, batch_rows, range_rows)
        feature_fields(spec, p.source, p.columns)
        s = _write_parts(client, featurize_range, p, dict(batch_rows=batch_rows, preset=spec.name, engine=engine),
                         output_path, rejects_path, progress)
    s.seconds = time.perf_counter() - t0
    return s


def predict_file(input_path, output_path, *, cluster, model=DEFAULT_MODEL, also=(), members=False,
                 formula_column=None, precision=DEFAULT_PRECISION, device="auto", batch_rows=DEFAULT_BATCH_ROWS,
                 rejects_path=None, hull=False, phases=None, progress=None, range_rows=None):
    """``screening.predict_file`` on a cluster: OUTPUT is one file, or a directory of
    Parquet parts (``is_parts_dir``)."""
    from irscreen.screening.predict import (PredictSummary, check_new_columns, check_precision, load_predict_models,
                                            new_columns, resolve_phases)

    t0 = time.perf_counter()
    check_precision(precision)
    _check_device(device)
    with connect(cluster) as client:
        warming = _warm(client, model, *_listed(also))  # noqa: F841
        models = load_predict_models(model, also)
        m = models.main
        src = resolve_phases(m, phases, output_path, hull)
        p = plan(input_path, formula_column, client, batch_rows, range_rows)
        check_new_columns(p.columns, new_columns(models, src, hull, members))
        job_fields = dict(batch_rows=batch_rows, model=_model_ref(model), members=_members(m), others=_others(models),
                          device=device, precision=precision, with_members=members, hull=hull)
        known = client.scatter(src.phases, broadcast=True) if src.phases is not None else None
        extra = {src.rejects_path: src.rejects} if src.rejects is not None else None  # committed with the output
        s = _write_parts(client, predict_range, p, job_fields, output_path, rejects_path, progress, extra=extra,
                         phases=known)
    s = PredictSummary(**asdict(s), phases=src.label)
    if src.rejects is not None:
        s.phases_rejects, s.phases_rejected = str(src.rejects_path), src.rejects.num_rows
    s.seconds = time.perf_counter() - t0
    return s


def _members(m) -> tuple:
    return tuple(mm["sha256"] for mm in m.manifest["members"])


def _model_ref(model) -> str:
    """What a worker loads: a shipped bundle by name (each worker finds its own install's
    copy), any other bundle by its absolute path."""
    path = getattr(model, "path", model)  # a loaded Model, or what the user named
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def screen_file(input_path, output_path, opts, *, cluster, model=DEFAULT_MODEL, also=(), formula_column=None,
                device="auto", batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None, resume=False, phases=None,
                progress=None, range_rows=None):
    """``screening.screen_file`` on a cluster: the same shortlist and rejects files.

    The driver commits a resume checkpoint (``screening.state``) after every range it
    receives, so ``resume`` after a kill of the driver reruns only the ranges it had not
    received (lost workers need no resume: the scheduler reruns their tasks)."""
    from irscreen import __version__
    from irscreen.screening.pool import PoolStats, new_pool
    from irscreen.screening.predict import check_new_columns, resolve_phases
    from irscreen.screening.runner import ScreenResult, load_screen_models, shortlist_columns, write_shortlist
    from irscreen.screening.state import ScreenState
    from irscreen.screening.topk import TopK

    t0 = time.perf_counter()
    opts.validate()
    _check_device(device)
    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    files = input_files(input_path)
    with connect(cluster) as client:
        warming = _warm(client, model, *[c.model for c in opts.conditions()], *_listed(also))  # noqa: F841
        models, conditions = load_screen_models(model, opts, also)
        m = models.main
        src = resolve_phases(m, phases, output_path, opts.hull)
        if opts.exclude_known and src.phases is None:
            raise IrscreenError(f"--exclude-known needs known phases: model {m.name!r} has none; pass --phases FILE")
        recover(output_path)
        identity = {"input": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()],
                    "model": str(m.path.resolve()), "members": list(_members(m)), "others": models.identity(),
                    "phases": src.sha256,
                    "options": asdict(opts), "column": formula_column, "batch_rows": batch_rows, "device": device,
                    "irscreen": __version__, "cluster": True}
        state = ScreenState(output_path, identity)
        top = TopK(opts.top, opts.max_per_system, opts.unique)
        pool = new_pool(m, opts) if opts.plot else None
        # "done": ranges received, in the order received (rejects files are numbered by that order)
        n = {"batches": 0, "done": [], "range_rows": range_rows, "counts": {}}
        saved = state.load() if resume else None
        if saved is None:
            state.clear()
        else:  # the counters, top K and pool statistics as of the last range received
            n, top.table = {k: saved[k] for k in n}, saved["top"]
            pool = PoolStats.from_json(saved["pool"]) if opts.plot else None
        p = plan(input_path, formula_column, client, batch_rows, n["range_rows"])  # a resumed run keeps its ranges
        n["range_rows"] = p.range_rows
        check_new_columns(p.columns, shortlist_columns(models, src, opts))
        job = _new_job(p, batch_rows=batch_rows, model=_model_ref(model), members=_members(m), others=_others(models),
                       conditions=tuple(conditions), device=device, opts=opts)
        known = client.scatter(src.phases, broadcast=True) if src.phases is not None else None
        workers = _workers(client)

        def status() -> str:
            return workers + ("" if not np.isfinite(top.cutoff) else f", cutoff {top.cutoff:.4g}")

        todo = [r for r in p.ranges if r.index not in set(n["done"])]
        for r, res in run(client, screen_range, p, job, progress, status, ranges=todo, phases=known):
            top.schema = top.schema or res["schema"]
            if res["top"] is not None:
                top.offer(_as_schema(res["top"], top.schema, r))
            if pool is not None:
                pool.merge(res["pool"])
            n["batches"] += 1
            n["done"].append(r.index)
            _add(n["counts"], res["counts"])
            state.save({**n, **({"pool": pool.to_json()} if pool else {})}, top.table, res["rejects"])
    # the rejects files are numbered in the order ranges came in; the rejects file wants input order
    received = {i: k + 1 for k, i in enumerate(n["done"])}
    parts = [f for f in (state.dir / f"rejects-{received[r.index]:08d}.parquet" for r in p.ranges) if f.exists()]
    shortlist, plot = write_shortlist(top, p, models, src, opts, p.column, output_path, rejects_path, parts, pool)
    state.clear()
    c = n["counts"]
    s = Summary(rows_read=c["rows_done"], rows_ok=c["screened"], rows_rejected=c["rejected"],
                seconds=time.perf_counter() - t0, output=str(output_path), rejects=str(rejects_path))
    # hull_seconds: summed over the workers
    return ScreenResult(s, shortlist, c["screened"], c["filtered"], top.cutoff, p.column,
                        known_left_out=c["known_left_out"], failed_conditions=c["failed_conditions"],
                        exact_rows=c.get("exact_rows", 0), others=[o.name for o in models.others], hull_rows=c["hull_rows"],
                        hull_seconds=c.get("hull_seconds", 0.0), phases=src.label,
                        phases_rejects=str(src.rejects_path or ""),
                        phases_rejected=src.rejects.num_rows if src.rejects is not None else 0, plot=plot)


def _as_schema(t: pa.Table, schema: pa.Schema, r: Range) -> pa.Table:
    """A range's top K in the first range's column types (CSV files may infer others)."""
    if t.schema == schema:
        return t
    try:
        return t.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise IrscreenError(f"{r.path}: its column types differ from the first input file's "
                            f"({_first_line(e)})") from None
