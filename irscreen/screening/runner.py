"""``screen``: stream a file through featurization and a model, keep the best K rows.

Where the ranking model carries a distilled student, the ensemble runs only on the rows
that could still make the shortlist (:mod:`irscreen.screening.cascade`); the shortlist is
the one the ensemble on every row gives (``--exact`` checks it).

Element filters apply before inference (filtered rows cost nothing), the running top-K
keeps memory independent of the input size, and every batch is committed to the resume
state (:mod:`irscreen.screening.state`), so ``--resume`` after a kill anywhere gives the
shortlist an uninterrupted run gives. The shortlist and its rejects file are committed
together (:mod:`irscreen.atomic`).

With ``hull`` the ranked value is the hull distance (:mod:`irscreen.screening.hull`). The
hull energy is never above 0, so a row's hull distance is never below its prediction: a
row whose prediction already scores above the running cutoff cannot enter the shortlist,
and gets no hull (the pruning is exact, so the shortlist equals sorting ``predict
--hull`` output). ``plot`` turns that off: the picture shows every row's hull distance.

``--where "MODEL OP VALUE"`` (:mod:`irscreen.screening.conditions`) keeps only rows whose
prediction by MODEL satisfies the condition; ``--also MODEL`` adds a model's columns
(:class:`irscreen.screening.predict.Models` names them). Conditions are tested before the
ranking, model by model, the ranking model first: a row failing one needs no other model's
prediction, and every row is tested, so the count of rows failing a condition does not
depend on batches or ranges. A model named only by ``--also`` is predicted last, only for
the rows whose score can still enter the shortlist (the top-K turns the others away).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irscreen.atomic import commit_together, recover
from irscreen.composition import Z_OF
from irscreen.errors import IrscreenError
from irscreen.io import AtomicWriter, default_rejects_path, open_table
from irscreen.pipeline import DEFAULT_BATCH_ROWS, FeaturizedBatch, RejectsLog, Summary, featurize_table
from irscreen.screening import cascade, objectives
from irscreen.screening.conditions import all_hold, parse_all
from irscreen.screening.filters import element_filter, system_and_composition
from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION
from irscreen.screening.hull import decomposition_text, hull_columns, hull_energy, known_columns
from irscreen.screening.pool import PoolStats, new_pool, ranking_value, with_metadata
from irscreen.screening.predict import (
    Models,
    Phases,
    as_models,
    check_new_columns,
    check_precision,
    device_type,
    load_models,
    model_columns,
    new_columns,
    new_fields,
    output_arrays,
    resolve_phases,
    uncertainty_column,
)
from irscreen.screening.state import ScreenState, fingerprint
from irscreen.screening.topk import TopK


@dataclass
class ScreenOptions:
    top: int
    objective: str = "minimize"  # a key of objectives.OBJECTIVES
    target_value: float | None = None
    kappa: float = 0.0
    include_elements: list[str] = field(default_factory=list)
    exclude_elements: list[str] = field(default_factory=list)
    max_elements: int | None = None
    max_per_system: int | None = None
    unique: bool = False
    precision: str = DEFAULT_PRECISION
    hull: bool = False  # rank by hull distance to the known phases
    exclude_known: bool = False  # leave known phases out of the shortlist
    plot: bool = False  # gather pool statistics and draw the shortlist's picture
    exact: bool = False  # no cascade: the ensemble on every row (screening.cascade)
    where: list[str] = field(default_factory=list)  # conditions "MODEL OP VALUE" (screening.conditions)

    def validate(self) -> None:
        if self.top <= 0:
            raise IrscreenError(f"--top must be a positive number of rows, got {self.top}")
        if self.objective not in objectives.OBJECTIVES:
            raise IrscreenError(f"unknown objective {self.objective!r} ({', '.join(objectives.OBJECTIVES)})")
        if self.objective in objectives.NEEDS_VALUE and self.target_value is None:
            raise IrscreenError("the target objective needs --target-value")
        for name in ("max_elements", "max_per_system"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise IrscreenError(f"--{name.replace('_', '-')} must be >= 1")
        for el in list(self.include_elements) + list(self.exclude_elements):
            if el not in Z_OF:
                raise IrscreenError(f"unknown element {el!r} in --include-elements/--exclude-elements")
        both = set(self.include_elements) & set(self.exclude_elements)
        if both:
            raise IrscreenError(f"{sorted(both)[0]} is both included and excluded")
        if self.hull and self.objective != "minimize":
            raise IrscreenError("--hull ranks by the lowest hull distance; it does not combine with --maximize or "
                                "--target-value")
        check_precision(self.precision)
        self.conditions()

    def conditions(self) -> list:
        """The --where conditions, parsed (not yet bound to their models' columns)."""
        return parse_all(self.where)

    def score(self, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return objectives.score(self.objective, mean, sigma, self.kappa, self.target_value)


@dataclass
class ScreenResult:
    summary: Summary
    shortlist: pa.Table
    screened: int = 0
    filtered: int = 0
    cutoff: float = float("nan")
    formula_column: str = "formula"
    known_left_out: int = 0  # --exclude-known: screened rows that are known phases
    failed_conditions: int = 0  # --where: screened rows that failed a condition
    exact_rows: int = 0  # rows the ranking ensemble ran on (all screened rows without the cascade)
    others: list = field(default_factory=list)  # the other models' names (their columns' prefixes)
    hull_rows: int = 0  # rows that needed a hull energy
    hull_seconds: float = 0.0  # time spent on them in this process
    phases: str = ""  # which known phases the known/hull columns use
    phases_rejects: str = ""  # the --phases file's rejects
    phases_rejected: int = 0
    plot: str = ""  # the shortlist's picture

    def to_pandas(self):
        return self.shortlist.to_pandas()


def load_screen_models(model, opts: ScreenOptions, also=()) -> tuple[Models, list]:
    """The models of a screen (``model`` ranks; the --where models, then the ``also``
    models, add columns) and the conditions bound to their models' columns. A condition
    on the ranking model tests ``prediction``/``uncertainty``."""
    conditions = opts.conditions()
    also = [also] if isinstance(also, (str, Path)) else list(also)
    labels = [f"--where '{c}'" for c in conditions] + [f"--also {str(ref)!r}" for ref in also]
    models, named = load_models(model, [c.model for c in conditions] + also, labels)
    bound = []
    for c, m in zip(conditions, named):
        col = models.value_column(m)
        bound.append(c.bound(col, uncertainty_column(col)))
    return models, bound


def shortlist_columns(models: Models, src: Phases, opts: ScreenOptions) -> list[str]:
    """The columns a screen adds to the input's."""
    return ["rank", *new_columns(models, src, opts.hull), *(["decomposition"] if opts.hull else [])]


def screen_file(input_path, output_path, opts: ScreenOptions, *, model=DEFAULT_MODEL, also=(), formula_column=None,
                device="auto", jobs=1, batch_rows=DEFAULT_BATCH_ROWS, rejects_path=None, resume=False, phases=None,
                progress=None, _kill=None) -> ScreenResult:
    """Screen INPUT for the best ``opts.top`` rows; writes OUTPUT (Parquet/CSV) and its rejects.
    ``phases``: a phases file replacing the model's own known phases. ``also``: models whose
    columns the shortlist gets besides those of ``model`` and of the ``opts.where`` models.

    ``_kill(point)``: a test hook called at every commit point of every batch (and of the
    final write); raising there simulates a kill."""
    from irscreen import __version__

    t0 = time.perf_counter()
    opts.validate()
    if batch_rows < 1:
        raise IrscreenError("--batch-rows must be >= 1")
    models, conditions = load_screen_models(model, opts, also)
    m = models.main
    dev = device_type(device)
    table = open_table(input_path)
    column = table.formula_column(formula_column)
    output_path = Path(output_path)
    src = resolve_phases(m, phases, output_path, opts.hull)
    if opts.exclude_known and src.phases is None:
        raise IrscreenError(f"--exclude-known needs known phases: model {m.name!r} has no known phases; pass "
                            "--phases FILE")
    check_new_columns(table.columns, shortlist_columns(models, src, opts))
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(output_path)
    recover(output_path)
    identity = {
        "input": str(Path(input_path).resolve()), "fingerprint": fingerprint(Path(input_path)),
        "model": str(m.path.resolve()), "members": [mm["sha256"] for mm in m.manifest["members"]],
        "others": models.identity(), "phases": src.sha256, "options": asdict(opts), "column": column,
        "batch_rows": batch_rows, "device": dev, "irscreen": __version__,
    }
    state = ScreenState(output_path, identity)
    top = TopK(opts.top, opts.max_per_system, opts.unique)
    counters = {"rows_done": 0, "batches": 0, "rejected": 0, "screened": 0, "filtered": 0, "known_left_out": 0,
                "failed_conditions": 0, "hull_rows": 0, "exact_rows": 0}
    pool = new_pool(m, opts) if opts.plot else None
    hull_seconds = 0.0
    if resume:
        saved = state.load()
        if saved is not None:
            counters = {k: saved[k] for k in counters}
            top.table = saved["top"]
            pool = PoolStats.from_json(saved["pool"]) if opts.plot else None
    else:
        state.clear()

    batches = featurize_table(table, column, m.preset, "fast", batch_rows, jobs, skip_rows=counters["rows_done"],
                              also=models.also_presets)
    for fb in batches:
        n = _score_batch(fb, models, opts, dev, src.phases, top, pool, conditions)
        counters["rows_done"] += fb.n_in
        counters["batches"] += 1
        counters["rejected"] += fb.rejects.num_rows
        counters["screened"] += fb.rows.num_rows
        for k in ("filtered", "known_left_out", "failed_conditions", "hull_rows", "exact_rows"):
            counters[k] += n[k]
        hull_seconds += n["hull_seconds"]
        state.save({**counters, **({"pool": pool.to_json()} if pool else {})}, top.table, fb.rejects, _kill=_kill)
        if progress:
            cut = top.cutoff
            progress(counters["rows_done"], table.num_rows, "" if not np.isfinite(cut) else f"cutoff {cut:.4g}")

    if counters["rows_done"] == 0:
        raise IrscreenError(f"{table.path}: file has no rows")
    shortlist, plot = write_shortlist(top, table, models, src, opts, column, output_path, rejects_path,
                                      state.rejects_parts(), pool, _kill)
    state.clear()
    s = Summary(rows_read=counters["rows_done"], rows_ok=counters["screened"], rows_rejected=counters["rejected"],
                seconds=time.perf_counter() - t0, output=str(output_path), rejects=str(rejects_path))
    return ScreenResult(s, shortlist, counters["screened"], counters["filtered"], top.cutoff, column,
                        known_left_out=counters["known_left_out"], failed_conditions=counters["failed_conditions"],
                        exact_rows=counters["exact_rows"],
                        others=[o.name for o in models.others], hull_rows=counters["hull_rows"], phases=src.label,
                        phases_rejects=str(src.rejects_path or ""),
                        phases_rejected=src.rejects.num_rows if src.rejects is not None else 0, plot=plot,
                        hull_seconds=hull_seconds)


def write_shortlist(top: TopK, table, models, src: Phases, opts: ScreenOptions, column: str, output_path: Path,
                    rejects_path: Path, rejects_parts, pool: PoolStats | None = None, _kill=None) -> tuple[pa.Table, str]:
    """The shortlist from the final top-K, written with its rejects (the Parquet files
    ``rejects_parts``, in order) and a --phases file's rejects as one commit; with ``pool``,
    its picture too. ``table``: the input (its columns name a shortlist no row reached).
    ``models``: the run's Models (or its one Model). Returns the shortlist and the
    picture's path ("" without one)."""
    models = as_models(models)
    held = top.table if top.table is not None else (top.schema or _fallback_schema(table, models, src, opts)).empty_table()
    shortlist = _finish(held, src.phases if opts.hull else None, column)
    if pool:
        shortlist = with_metadata(shortlist, {"pool": pool.to_json(), "options": asdict(opts), "model": models.main.name,
                                              "formula_column": column, "phases": src.label})
    out = AtomicWriter(output_path, shortlist.schema)
    rejects = RejectsLog(rejects_path)
    phase_rejects = AtomicWriter(src.rejects_path, src.rejects.schema) if src.rejects is not None else None
    try:
        out.write(shortlist)
        for part in rejects_parts:
            rejects.add(pq.read_table(part))
        pending = [out.finish(), rejects.finish()]
        if phase_rejects:
            phase_rejects.write(src.rejects)
            pending.append(phase_rejects.finish())
        _kill and _kill("final-write")
        commit_together(pending, _after_rename=(lambda i: _kill(f"final-rename-{i}")) if _kill else None)
    except BaseException:
        for w in (out, rejects, phase_rejects):
            w and w.abort()
        raise
    plot = ""
    if pool:
        from irscreen.screening.pool import draw

        plot = str(draw(shortlist, output_path.with_suffix(".png")))
    return shortlist, plot


def _score_batch(fb: FeaturizedBatch, models, opts: ScreenOptions, dev: str, phases, top: TopK,
                 pool: PoolStats | None, conditions=()) -> dict:
    """Offer the batch's rows that can enter the shortlist to ``top``, with their columns
    and ``_score``; returns how many rows the element filters, --exclude-known and the
    (bound) ``conditions`` left out, how many got a hull, and how many the ensemble ran on.
    ``models``: the run's Models (or its one Model).

    With the cascade (the ranking model has a student, and neither ``opts.exact`` nor a
    picture asks for every row's score), rows go to the ensemble a chunk at a time, lowest
    student score first, only while they can still enter (:mod:`irscreen.screening.cascade`)."""
    models = as_models(models)
    keep = element_filter(fb.elements, opts.include_elements, opts.exclude_elements, opts.max_elements)
    n = {"filtered": int((~keep).sum()), "known_left_out": 0, "failed_conditions": 0, "hull_rows": 0,
         "hull_seconds": 0.0, "exact_rows": 0}
    known = known_idx = None
    if phases is not None:
        known, known_idx = known_columns(phases, fb.elements, fb.fractions)
        if opts.exclude_known:  # before inference: a known row costs no model time
            n["known_left_out"] = int((keep & known["known"]).sum())
            keep &= ~known["known"]
    idx = np.flatnonzero(keep)

    def exact(rows: np.ndarray) -> None:
        n["exact_rows"] += len(rows)
        cand = _exact_candidates(fb, models, opts, dev, phases, known, known_idx, rows, top.cutoff, pool,
                                 conditions, n)
        top.offer(cand)

    if opts.exact or pool is not None or models.main.student is None:
        exact(idx)
    else:
        guess, idx = _student_scores(fb, models, opts, idx, conditions, n)
        st = models.main.student
        cascade.walk(guess, lambda c: cascade.score_slack(st, opts.objective, opts.kappa, opts.target_value,
                                                          opts.precision, c),
                     lambda rows: exact(idx[rows]), lambda: top.cutoff)
    return n


def _student_scores(fb: FeaturizedBatch, models: Models, opts: ScreenOptions, idx: np.ndarray, conditions,
                    n: dict) -> tuple[np.ndarray, np.ndarray]:
    """The students' view of rows ``idx``: each row's score by the ranking model's student
    (-inf for a row with an element that model rarely saw: the ensemble decides it), and
    the rows left once those certain to fail a condition are dropped (and counted)."""
    main = models.main

    def rows(m):  # every row: the batch's own (feature-major) view, no gather
        X = fb.X_for(m.preset)
        return X if len(idx) == len(X) else X[idx]

    mean, sigma = main.student.predict(rows(main))
    guess = opts.score(mean, sigma)
    guess[main.extrapolation(fb.elements[idx])] = -np.inf
    ok = np.ones(len(idx), dtype=bool)
    for m in models.all:
        tests = [c for c in conditions if c.column == models.value_column(m)]
        if not tests or m.student is None:
            continue
        mean_m, sigma_m = (mean, sigma) if m is main else m.student.predict(rows(m))
        sure = ~m.extrapolation(fb.elements[idx])
        for c in tests:
            slack = cascade.condition_slack(m.student, c, opts.kappa, opts.precision)
            ok &= ~(sure & c.cannot_hold(mean_m, sigma_m, opts.kappa, slack))
    n["failed_conditions"] += int((~ok).sum())
    return guess[ok], idx[ok]


def _exact_candidates(fb: FeaturizedBatch, models: Models, opts: ScreenOptions, dev: str, phases, known, known_idx,
                      idx: np.ndarray, cutoff: float, pool: PoolStats | None, conditions, n: dict) -> pa.Table:
    """Rows ``idx`` of the batch through the ensembles: their columns and ``_score``, the
    rows failing a condition left out (and counted)."""
    cols = model_columns(models.main, fb, idx, opts.precision, dev)
    # --where, model by model, the ranking model first: a row failing a condition costs no
    # further model time
    for m in models.all:
        tests = [c for c in conditions if c.column == models.value_column(m)]
        if not tests:
            continue
        if m is not models.main:
            cols.update(model_columns(m, fb, idx, opts.precision, dev, m.name))
        ok = all_hold(tests, cols, opts.kappa)
        n["failed_conditions"] += int((~ok).sum())
        idx, cols = idx[ok], {k: v[ok] for k, v in cols.items()}
    if phases is not None:
        cols.update({k: v[idx] for k, v in known.items()})
    # score the float32 values the shortlist shows, so ranking agrees with sorting the output
    sigma = cols["uncertainty"].astype(np.float32).astype(np.float64)
    score = opts.score(cols["prediction"].astype(np.float32).astype(np.float64), sigma)
    if opts.hull:
        # hull distance >= prediction, so a row already past the cutoff needs no hull (unless pictured)
        need = np.arange(len(idx)) if pool else np.flatnonzero(score <= cutoff)
        idx, sigma = idx[need], sigma[need]
        cols = {k: v[need] for k, v in cols.items()}
        t0 = time.perf_counter()
        cols.update(hull_columns(phases, fb.elements[idx], fb.fractions[idx], cols["prediction"], cols["uncertainty"],
                                 known_idx[idx]))
        n["hull_seconds"] += time.perf_counter() - t0
        score = opts.score(cols["hull_distance"].astype(np.float64), sigma)
        n["hull_rows"] += len(idx)
    if pool:
        pool.add(ranking_value(score, opts.objective), fb.elements[idx], cols.get("known"))
    rest = [m for m in models.others if models.value_column(m) not in cols]  # named by --also only
    if rest:
        if cutoff < np.inf:  # TopK.offer turns away every row scoring past the cutoff: they need no columns
            can = np.flatnonzero(score <= cutoff)
            idx, score, cols = idx[can], score[can], {k: v[can] for k, v in cols.items()}
        for m in rest:
            cols.update(model_columns(m, fb, idx, opts.precision, dev, m.name))
    rows = fb.rows if len(idx) == fb.rows.num_rows else fb.rows.take(pa.array(idx))
    t = pa.Table.from_batches([rows])
    order = new_columns(models, Phases(phases), opts.hull)  # every batch's candidates in one schema
    for fld, arr in output_arrays({c: cols[c] for c in order}):
        t = t.append_column(fld, arr)
    t = t.append_column("_score", pa.array(score))
    t = t.append_column("_row", pa.array(fb.row_numbers()[idx], pa.int64()))
    if opts.unique or opts.max_per_system:
        systems, comps = system_and_composition(fb.elements[idx], fb.fractions[idx])
        t = t.append_column("_system", pa.array(systems, pa.string()))
        t = t.append_column("_comp", pa.array(comps, pa.string()))
    return t


def _fallback_schema(table, models: Models, src: Phases, opts: ScreenOptions) -> pa.Schema:
    """The shortlist's columns when no row ever reached it (every row rejected or filtered)."""
    return pa.schema([pa.field(c, pa.string()) for c in table.columns] + new_fields(models, src, opts.hull))


def _finish(t: pa.Table, hull_phases=None, column: str = "formula") -> pa.Table:
    """Drop the helper columns and number the rows; with a hull, add each row's decomposition."""
    t = t.drop_columns([c for c in t.column_names if c.startswith("_")])
    if hull_phases is not None:
        t = t.append_column("decomposition", pa.array(_decompositions(hull_phases, t.column(column)), pa.string()))
    return t.add_column(0, "rank", pa.array(np.arange(1, t.num_rows + 1), pa.int32()))


def _decompositions(phases, formulas: pa.ChunkedArray) -> list[str]:
    """'0.5 Li2O + 0.5 FeO' per shortlisted row: the known phases (its own excluded) whose
    hull energy its hull distance is measured from. Only the K shortlisted rows get one."""
    from irscreen.composition import parse_batch

    if not len(formulas):
        return []
    b = parse_batch(formulas.combine_chunks())
    els, fr = b.elements, b.fractions()
    _, parts = hull_energy(phases, els, fr, exclude=phases.lookup(els, fr), decompose=True)
    return [decomposition_text(p) for p in parts]


def screen(source, top: int = 100, *, model=DEFAULT_MODEL, output=None, minimize=True, maximize=False,
           target_value=None, kappa=0.0, include_elements=(), exclude_elements=(), max_elements=None,
           max_per_system=None, unique=False, precision=DEFAULT_PRECISION, device="auto", jobs=1,
           batch_rows=DEFAULT_BATCH_ROWS, formula_column=None, hull=False, phases=None, exclude_known=False,
           where=(), also=(), exact=False):
    """Notebook API mirroring ``irscreen screen``: returns the shortlist as a pandas DataFrame.

    ``source``: a Parquet/CSV path, or in-memory formulas (list, pandas/polars DataFrame
    with a formula column, pyarrow Table). ``output``: also write the shortlist there.
    ``hull``: rank by hull distance; ``phases``: a phases file instead of the model's.
    ``where``: conditions such as ``["band-gap >= 1.0"]``; ``also``: models whose
    predictions are added without a condition; ``exact``: no cascade (the same shortlist)."""
    import tempfile

    objective = "target" if target_value is not None else ("maximize" if maximize else "minimize")
    opts = ScreenOptions(top=top, objective=objective, target_value=target_value, kappa=kappa,
                         include_elements=list(include_elements), exclude_elements=list(exclude_elements),
                         max_elements=max_elements, max_per_system=max_per_system, unique=unique, precision=precision,
                         hull=hull, exclude_known=exclude_known,
                         where=[where] if isinstance(where, str) else [str(w) for w in where], exact=exact)
    with tempfile.TemporaryDirectory(prefix="irscreen-") as tmp:
        path = source
        if not isinstance(source, (str, Path)):
            path = Path(tmp) / "input.parquet"
            pq.write_table(_as_arrow(source), path)
        out = Path(output) if output else Path(tmp) / "shortlist.parquet"
        res = screen_file(path, out, opts, model=model, also=also, formula_column=formula_column, device=device,
                          jobs=jobs, batch_rows=batch_rows, rejects_path=Path(tmp) / "rejects.parquet", phases=phases)
        return res.shortlist.to_pandas()


def _as_arrow(source) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if hasattr(source, "to_arrow"):  # polars
        return source.to_arrow()
    if hasattr(source, "columns") and hasattr(source, "iloc"):  # pandas
        return pa.Table.from_pandas(source, preserve_index=False)
    return pa.table({"formula": pa.array([None if f is None else str(f) for f in source], pa.string())})
