"""The irscreen command line: thin Typer commands over the library.

Every command reports problems it can name (bad file, missing column, unknown model)
as one line on stderr with exit code 2; row-level problems go to a rejects file.
Progress and summaries go to stderr, results (tables, JSON) to stdout.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from irscreen import __version__
from irscreen.config import DEFAULT_MODEL, DEFAULT_PRECISION, TRAIN_DEFAULTS
from irscreen.errors import IrscreenError, IrscreenWarning
from irscreen.pipeline import DEFAULT_BATCH_ROWS

app = typer.Typer(
    name="irscreen",
    help="High-throughput screening of inorganic compositions with deep residual networks (IRNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: never break a message or a path across lines (stderr is often a log file, 80 columns)
err = Console(stderr=True, soft_wrap=True)
out = Console()

JOBS_DEFAULT = os.cpu_count() or 1


def _version(value: bool) -> None:
    if value:
        out.print(f"irscreen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """irscreen: featurize, train, evaluate, predict, screen, generate."""


class RowProgress:
    """A rich progress bar over rows: rows/s, ETA, and an optional status field."""

    def __init__(self, label: str, total: int | None):
        self.p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=err,
            transient=False,
        )
        self.total = total
        self.t0 = time.perf_counter()
        self.task = self.p.add_task(label, total=total, rate="", status="")

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and issubclass(exc[0], IrscreenError):
            # a named problem is reported as its one error line: erase the bar and print nothing
            # more (Progress.stop would leave the bar, or a blank line when stderr is not a terminal)
            self.p.live.transient = True
            self.p.live.stop()
        else:
            self.p.__exit__(*exc)

    def __call__(self, done: int, total: int | None = None, status: str = "") -> None:
        rate = done / max(1e-9, time.perf_counter() - self.t0)
        self.p.update(self.task, completed=done, total=total or self.total, rate=f"{rate:,.0f} rows/s", status=status)


def _summary(s, verb: str) -> None:
    err.print(
        f"[bold]{s.rows_read:,}[/] rows read, [green]{s.rows_ok:,} {verb}[/], "
        f"[{'red' if s.rows_rejected else 'dim'}]{s.rows_rejected:,} rejected[/] "
        f"in {s.seconds:.1f} s ({s.rate:,.0f} rows/s)"
    )
    err.print(f"output: {s.output}" + (f"   rejects: {s.rejects}" if s.rejects else ""), highlight=False)


def _exit_for(s) -> None:
    if s.rows_ok == 0:
        err.print("[red]every row was rejected[/]; see the rejects file")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- featurize


SCHEDULER_HELP = "Run on the Dask cluster whose scheduler is at this address (tcp://host:8786, or a scheduler file)."
WORKERS_HELP = "Run on a local Dask cluster of N worker processes (the machine's cores shared among them)."
CLUSTER_INPUT = " With --scheduler or --workers: also a directory of Parquet files, or a glob in quotes."


def _cluster(scheduler: Optional[str], workers: Optional[int]):
    """What --scheduler/--workers ask for (irscreen.cluster.connect takes either), or None: one process."""
    if scheduler and workers is not None:
        raise IrscreenError("give --scheduler or --workers, not both")
    if workers is not None and workers < 1:
        raise IrscreenError(f"--workers must be >= 1 (got {workers})")
    return scheduler or workers


def _runner(name: str, local, input: Path, scheduler: Optional[str], workers: Optional[int], jobs: int, kwargs: dict):
    """The function that runs command ``name`` (irscreen.cluster's on a cluster, else ``local``),
    its keyword arguments, and the row total for the progress bar (on a cluster it comes with
    the first progress report)."""
    cluster = _cluster(scheduler, workers)
    if cluster:
        import irscreen.cluster

        return getattr(irscreen.cluster, name), {**kwargs, "cluster": cluster}, None
    from irscreen.io import open_table

    return local, {**kwargs, "jobs": jobs}, open_table(input).num_rows


@app.command()
def featurize(
    input: Path = typer.Argument(..., help="Parquet or CSV file with a formula column." + CLUSTER_INPUT),
    output: Path = typer.Option(..., "-o", "--output", help="Output Parquet (or .csv): input columns + features. "
                                "With --scheduler or --workers, a name without a suffix (or a directory) gets a "
                                "directory of Parquet parts."),
    formula_column: Optional[str] = typer.Option(None, help="Formula column (default: found by name: formula, composition, reduced_formula, pretty_formula)."),
    preset: str = typer.Option("magpie", help="Feature preset: magpie (145 Magpie descriptors) or fractions."),
    engine: str = typer.Option("fast", help="fast (vectorized) or matminer (the reference implementation)."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Worker processes (joblib)."),
    batch_rows: int = typer.Option(DEFAULT_BATCH_ROWS, help="Rows per batch (memory stays flat)."),
    rejects: Optional[Path] = typer.Option(None, help="Rejects file (default: OUTPUT.rejects.parquet)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
) -> None:
    """Compute composition features for every row of INPUT."""
    kwargs = dict(formula_column=formula_column, preset=preset, engine=engine, batch_rows=batch_rows, rejects_path=rejects)
    from irscreen.pipeline import featurize_file

    run, kwargs, total = _runner("featurize_file", featurize_file, input, scheduler, workers, jobs, kwargs)
    with RowProgress("featurize", total) as bar:
        s = run(input, output, progress=bar, **kwargs)
    _summary(s, "featurized")
    _exit_for(s)


# --------------------------------------------------------------------------- models


@app.command()
def models() -> None:
    """List the shipped model bundles."""
    import json

    from irscreen.models.bundle import MANIFEST, shipped_in_training, shipped_names, shipped_root

    names = shipped_names()
    t = RichTable(title="Shipped models (use --model NAME)")
    # the name is what --model takes: never cut it short on a narrow terminal
    t.add_column("name", no_wrap=True, min_width=max([4, *map(len, names)]))
    for col in ("target", "units", "members", "architecture", "validation MAE", "trained on"):
        t.add_column(col)
    for name in names:
        m = json.loads((shipped_root() / name / MANIFEST).read_text())
        val = m.get("metrics", {}).get("validation", {})
        t.add_row(name, m.get("target", ""), m.get("units", ""), str(len(m["members"])), m.get("arch_name", m["architecture"]),
                  f"{val['mae']:.4f}" if val else "-", f"{m['data'].get('file', '')} ({m['data'].get('rows', 0):,} rows)")
    out.print(t)
    for name, (done, planned) in shipped_in_training().items():
        err.print(f"{name}: in training, {done} of {planned} members (not usable yet)")


# --------------------------------------------------------------------------- train


_T = TRAIN_DEFAULTS  # every training option's default is TrainConfig's


@app.command()
def train(
    data: Path = typer.Argument(..., help="Parquet/CSV with a formula column (or already featurized) and the target."),
    target: str = typer.Option(..., "--target", "-t", help="Target column."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle directory to write."),
    formula_column: Optional[str] = typer.Option(None, help="Formula column (default: found by name)."),
    preset: str = typer.Option("magpie", help="Feature preset: magpie, fractions or magpie-fractions."),
    arch: str = typer.Option(_T.arch, help="Architecture preset (irnet17, srnet17, plain17, *24, *48, irnet17-half) or string."),
    ensemble: int = typer.Option(_T.ensemble, help="Ensemble members (differ by seed)."),
    epochs: int = typer.Option(_T.epochs),
    batch_size: int = typer.Option(_T.batch_size),
    lr: float = typer.Option(_T.lr, help="Peak learning rate (one-cycle) or the constant rate."),
    schedule: str = typer.Option(_T.schedule, help="onecycle or constant."),
    optimizer: str = typer.Option(_T.optimizer, help="adamw or adam."),
    weight_decay: float = typer.Option(_T.weight_decay),
    patience: int = typer.Option(_T.patience, help="Stop after this many epochs without validation improvement (0: never)."),
    val_frac: float = typer.Option(0.1, help="Random validation fraction (ignored with --split-column)."),
    split_column: Optional[str] = typer.Option(None, help="Column labelling rows 'train' or 'val'; other labels are left out."),
    seed: int = typer.Option(_T.seed),
    device: str = typer.Option(_T.device, help="auto, cpu or cuda."),
    precision: str = typer.Option(_T.precision, help="bf16 (autocast) or fp32."),
    storage: str = typer.Option(_T.storage, help="Weight dtype in the bundle: float16 or float32."),
    resume: bool = typer.Option(False, help="Continue an interrupted run (finished members are kept)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Checkpoints (default: ~/.cache/irscreen/checkpoints)."),
    name: Optional[str] = typer.Option(None, help="Model name (default: the output directory name)."),
    units: str = typer.Option("", help="Target units, for the model card."),
    description: str = typer.Option("", help="One line for the model card."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Featurization worker processes."),
) -> None:
    """Train an IRNet ensemble into a model bundle."""
    from irscreen.config import TrainConfig
    from irscreen.data import load_training_data
    from irscreen.train import train_bundle

    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, optimizer=optimizer,
                      weight_decay=weight_decay, patience=patience, precision=precision, device=device, seed=seed,
                      ensemble=ensemble, storage=storage)
    cfg.validate()
    td = load_training_data(data, target, formula_column=formula_column, preset=preset, jobs=jobs,
                            val_frac=val_frac, split_column=split_column, seed=seed, console=err)
    with _EpochProgress(cfg.ensemble, td.scaler.y_std) as on_epoch:
        manifest = train_bundle(td, cfg, output, name=name or output.name, units=units, description=description,
                                resume=resume, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch)
    _trained(output, manifest, td)


@app.command()
def build(
    name: str = typer.Argument(..., help="A shipped bundle: formation-enthalpy, band-gap, e-above-hull, formation-energy-mp."),
    data_dir: Path = typer.Option(Path("../shared/data"), help="Directory holding the training data files."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Bundle directory (default: build/NAME)."),
    resume: bool = typer.Option(False, help="Continue an interrupted build (finished members are kept)."),
    members: Optional[int] = typer.Option(None, help="Build only the first N members now and finalize them as a "
                                          "usable ensemble; a later --resume adds the rest."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Featurization worker processes."),
) -> None:
    """Build a shipped model bundle from its recipe (the command its manifest records)."""
    from irscreen.recipes import build as build_recipe, get_recipe, load_recipe_data

    recipe = get_recipe(name)
    td = load_recipe_data(recipe, data_dir, jobs=jobs, console=err)
    with _EpochProgress(recipe.train.get("ensemble", 1), td.scaler.y_std) as on_epoch:
        manifest = build_recipe(name, data_dir, output, resume=resume, td=td, on_epoch=on_epoch, members=members)
    _trained(output or Path("build") / name, manifest, td)


class _EpochProgress:
    """One rich progress bar per ensemble member, with its MAEs in target units."""

    def __init__(self, members: int, y_std: float):
        self.members, self.y_std, self.tasks = members, y_std, {}
        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err)

    def __enter__(self):
        self.prog.__enter__()
        return self

    def __exit__(self, *exc):
        self.prog.__exit__(*exc)

    def __call__(self, log) -> None:
        if log.member not in self.tasks:
            self.tasks[log.member] = self.prog.add_task(f"member {log.member + 1}/{self.members}", total=log.epochs, info="")
        u = self.y_std
        self.prog.update(self.tasks[log.member], completed=log.epoch,
                         info=f"train MAE {log.train_mae * u:.4g}  val MAE {log.val_mae * u:.4g}  best {log.best_val_mae * u:.4g}")


@app.command()
def distill(
    model: str = typer.Argument(..., help="Model bundle: a shipped name (see `irscreen models`) or a bundle directory."),
    data: list[Path] = typer.Option([], "--data", help="Parquet/CSV file with a formula column whose compositions "
                                    "join the random candidates (the bundle's training data, say). Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the bundle with its student here (a "
                                          "new directory) instead of into MODEL's own."),
    rows: int = typer.Option(300_000, help="Random candidates the student learns from."),
    pool_rows: int = typer.Option(200_000, help="Held-out random candidates the disagreement bound is measured on."),
    epochs: int = typer.Option(40, help="Training epochs of the student."),
    margin: float = typer.Option(2.0, help="The bound is MARGIN x the largest disagreement seen on the held-out rows."),
    seed: int = typer.Option(0, help="Seed of the candidates and of training."),
    remeasure: bool = typer.Option(False, "--remeasure", help="Keep MODEL's student and measure its bounds again "
                                   "(another --margin or --pool-rows) without training it again."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Featurization worker processes for --data files."),
) -> None:
    """Distill MODEL's ensemble into the small student `screen` runs first (its cascade)."""
    import shlex
    import sys

    from irscreen.distill import DistillConfig, distill as run_distill

    cfg = DistillConfig(train_rows=rows, pool_rows=pool_rows, epochs=epochs, margin=margin, seed=seed)
    command = "irscreen " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prog = Progress(TextColumn("[bold]student"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=err)
    task = None

    def on_epoch(epoch, total, loss, seconds):
        nonlocal task
        if task is None:
            task = prog.add_task("student", total=total, info="")
        prog.update(task, completed=epoch, info=f"loss {loss:.3g}  {seconds:.1f} s/epoch")

    with prog:
        st = run_distill(model, data, cfg, command=command, output=output, jobs=jobs, remeasure=remeasure, console=err,
                         on_epoch=on_epoch)
    d, units, b = st["disagreement"], st.get("units", ""), st["bound"]
    err.print(f"student {st['architecture']}: {st['flops_per_row'] / 1e6:.2f} MFLOP per row (ensemble "
              f"{st['ensemble_flops_per_row'] / 1e6:.0f}); on {d['rows']:,} held-out rows |student - ensemble| "
              f"median {d['mean']['median']:.4f}, largest {d['mean']['max']:.4f} {units}; largest overestimate "
              f"where the ensemble mean is lowest {b['mean_over'][0]:.4f}, underestimate where highest "
              f"{b['mean_under'][-1]:.4f} (bounds: {b['margin']}x these, by region); "
              f"{st['seconds']:.0f} s")


def _trained(output: Path, manifest: dict, td) -> None:
    val = manifest["metrics"]["validation"]
    err.print(f"bundle: {output}  ({len(manifest['members'])} members; {len(td.train_idx):,} training rows, "
              f"{len(td.val_idx):,} validation rows, {td.rows_rejected:,} rejected, {td.rows_left_out:,} left out by the split)")
    err.print(f"validation MAE: ensemble {val['mae']:.4g}; members " + ", ".join(f"{m['mae']:.4g}" for m in val["members"]))
    cal = manifest.get("calibration")
    if cal:
        cv = cal["validation_cross_fitted"]
        err.print(f"uncertainty: 1 sigma covers {cv['within_1_sigma']:.1%}, 2 sigma {cv['within_2_sigma']:.1%} of "
                  f"validation errors (cross-fitted); Spearman(sigma, |error|) {cv['spearman_sigma_abs_error']:.2f}")


# --------------------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="Parquet/CSV with formulas and the target."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Shipped model name or bundle directory."),
    target: str = typer.Option(..., "--target", "-t", help="Target column."),
    formula_column: Optional[str] = typer.Option(None),
    split: str = typer.Option("all", help="all rows, or 'val'/'train': the bundle's own split of its training file."),
    plot: Optional[Path] = typer.Option(None, help="Write a parity plot PNG here."),
    json_out: bool = typer.Option(False, "--json", help="Print only a JSON object to stdout."),
    precision: str = typer.Option("fp32", help="fp32, mixed or bf16 inference."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j"),
) -> None:
    """Score a model on labelled data: MAE, RMSE, R², max error, per member and ensemble."""
    import json

    from irscreen.evaluate import evaluate_file

    res = evaluate_file(data, model, target, formula_column=formula_column, split=split, plot=plot,
                        precision=precision, jobs=jobs, console=None if json_out else err)
    if json_out:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    t = RichTable(title=f"{res['model']} on {data.name} ({res['split']}, n = {res['n']:,})")
    for col in ("", "MAE", "RMSE", "R²", "max error"):
        t.add_column(col, justify="right")
    for k, m in enumerate(res["members"]):
        t.add_row(f"member {k}", f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['r2']:.4f}", f"{m['max_error']:.3f}")
    t.add_row("[bold]ensemble", f"[bold]{res['mae']:.4f}", f"{res['rmse']:.4f}", f"{res['r2']:.4f}", f"{res['max_error']:.3f}")
    out.print(t)
    if res.get("rejected"):
        err.print(f"{res['rejected']:,} rows could not be used (bad formula or missing target)")


# --------------------------------------------------------------------------- predict

PHASES_HELP = ("Known phases instead of the model's: Parquet/CSV with formula and formation_energy_per_atom (eV/atom); "
               "bad rows go to OUTPUT.phases-rejects.parquet.")



@app.command()
def predict(
    input: Path = typer.Argument(..., help="Parquet or CSV file with a formula column."),
    output: Path = typer.Option(..., "-o", "--output", help="Output Parquet (or .csv)."),
    model: List[str] = typer.Option([DEFAULT_MODEL], "--model", "-m", metavar="MODEL",
                                    help="Shipped model name or bundle directory. Repeat it for more models: the first "
                                    "writes prediction, uncertainty, extrapolation; each other NAME, NAME_uncertainty, "
                                    "NAME_extrapolation (NAME: the bundle's name, as `irscreen models` lists it)."),
    members: bool = typer.Option(False, help="Also write each member's prediction (member_0, ...; NAME_member_0, ... "
                                 "for the other models)."),
    formula_column: Optional[str] = typer.Option(None),
    precision: str = typer.Option(DEFAULT_PRECISION, help="bf16 (hidden layers in bf16, output fp32), mixed (fp32 stream and shortcuts) or fp32."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Featurization worker processes."),
    batch_rows: int = typer.Option(DEFAULT_BATCH_ROWS),
    rejects: Optional[Path] = typer.Option(None, help="Rejects file (default: OUTPUT.rejects.parquet)."),
    hull: bool = typer.Option(False, "--hull", help="Add hull_distance: prediction minus the hull energy of the known phases (eV/atom)."),
    phases: Optional[Path] = typer.Option(None, help=PHASES_HELP),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
) -> None:
    """Predict every row: prediction (ensemble mean), uncertainty (calibrated sigma), extrapolation;
    known/known_value where the model has known phases; hull_distance with --hull; the columns
    of every further --model."""
    kwargs = dict(model=model[0], also=model[1:], members=members, formula_column=formula_column, precision=precision,
                  device=device, batch_rows=batch_rows, rejects_path=rejects, hull=hull, phases=phases)
    from irscreen.screening import predict_file

    run, kwargs, total = _runner("predict_file", predict_file, input, scheduler, workers, jobs, kwargs)
    with RowProgress("predict", total) as bar:
        s = run(input, output, progress=bar, **kwargs)
    _summary(s, "predicted")
    _phases_summary(s.phases, s.phases_rejects, s.phases_rejected)
    _exit_for(s)



def _phases_summary(label: str, rejects: str, rejected: int) -> None:
    if label:
        err.print(f"known phases: {label}" + (f"; [{'red' if rejected else 'dim'}]{rejected:,} rows rejected[/] "
                                               f"({rejects})" if rejects else ""), highlight=False)


# --------------------------------------------------------------------------- screen


def _elements(text: Optional[str]) -> list[str]:
    return [e.strip() for e in text.split(",") if e.strip()] if text else []


@app.command()
def screen(
    input: Path = typer.Argument(..., help="Candidates: Parquet or CSV with a formula column, any size."),
    top: int = typer.Option(..., "--top", "-k", help="Shortlist size K."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="The model to rank by: shipped model name or bundle "
                              "directory."),
    where: Optional[List[str]] = typer.Option(None, "--where", metavar="CONDITION", help='Keep only rows whose '
                                              'prediction by a model meets "MODEL OP VALUE", OP one of <, <=, >, >= '
                                              '(e.g. "band-gap >= 1.0"; MODEL: a shipped name or a bundle directory). '
                                              'Repeatable: every condition must hold. --kappa applies: >= holds when '
                                              'mean - kappa*sigma >= VALUE, <= when mean + kappa*sigma <= VALUE. A model '
                                              'other than --model adds MODEL, MODEL_uncertainty, MODEL_extrapolation.'),
    also: Optional[List[str]] = typer.Option(None, "--also", metavar="MODEL", help="Add a model's predictions without "
                                             "a condition (MODEL, MODEL_uncertainty, MODEL_extrapolation); "
                                             "repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Default: <input stem>.top<K>.parquet here."),
    minimize: bool = typer.Option(False, "--minimize", help="Lowest prediction first (the default)."),
    maximize: bool = typer.Option(False, "--maximize", help="Highest prediction first."),
    target_value: Optional[float] = typer.Option(None, help="Closest to this value first."),
    kappa: float = typer.Option(0.0, help="Uncertainty weight: >0 conservative, <0 optimistic."),
    include_elements: Optional[str] = typer.Option(None, help="Keep rows containing all of these (e.g. Li,O)."),
    exclude_elements: Optional[str] = typer.Option(None, help="Drop rows containing any of these."),
    max_elements: Optional[int] = typer.Option(None, help="Drop rows with more distinct elements."),
    max_per_system: Optional[int] = typer.Option(None, help="At most N rows per chemical system (e.g. Fe-Li-O)."),
    unique: bool = typer.Option(False, help="Keep only the best row per reduced composition."),
    formula_column: Optional[str] = typer.Option(None),
    precision: str = typer.Option(DEFAULT_PRECISION, help="bf16 (hidden layers in bf16, output fp32), mixed (fp32 stream and shortcuts) or fp32."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    jobs: int = typer.Option(JOBS_DEFAULT, "--jobs", "-j", help="Featurization worker processes."),
    batch_rows: int = typer.Option(DEFAULT_BATCH_ROWS),
    rejects: Optional[Path] = typer.Option(None, help="Rejects file (default: OUTPUT.rejects.parquet)."),
    resume: bool = typer.Option(False, help="Continue a killed screen from its last completed batch."),
    hull: bool = typer.Option(False, "--hull", help="Rank by hull distance to the known phases (lowest first); adds decomposition."),
    phases: Optional[Path] = typer.Option(None, help=PHASES_HELP),
    exclude_known: bool = typer.Option(False, "--exclude-known", help="Leave rows that are known phases out of the shortlist."),
    plot: bool = typer.Option(False, "--plot", help="Also write OUTPUT.png: elements and ranking value, shortlist against pool."),
    exact: bool = typer.Option(False, "--exact", help="Run the ensemble on every row instead of the cascade (the same "
                               "shortlist, slower: for checking)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
) -> None:
    """Rank candidates and keep the best K (memory independent of input size)."""
    from irscreen.screening import ScreenOptions, screen_file

    if sum([minimize, maximize, target_value is not None]) > 1:
        raise IrscreenError("choose one of --minimize, --maximize, --target-value")
    objective = "target" if target_value is not None else ("maximize" if maximize else "minimize")
    opts = ScreenOptions(top=top, objective=objective, target_value=target_value, kappa=kappa,
                         include_elements=_elements(include_elements), exclude_elements=_elements(exclude_elements),
                         max_elements=max_elements, max_per_system=max_per_system, unique=unique, precision=precision,
                         hull=hull, exclude_known=exclude_known, plot=plot, where=list(where or []), exact=exact)
    opts.validate()
    if output is None:
        from glob import has_magic

        output = Path(f"{input.parent.name if has_magic(str(input)) else input.stem}.top{top}.parquet")  # data/*.pq: data
    kwargs = dict(model=model, also=list(also or []), formula_column=formula_column, device=device,
                  batch_rows=batch_rows, rejects_path=rejects, resume=resume, phases=phases)
    run, kwargs, total = _runner("screen_file", screen_file, input, scheduler, workers, jobs, kwargs)
    with RowProgress("screen", total) as bar:
        res = run(input, output, opts, progress=bar, **kwargs)
    s = res.summary
    t = RichTable(title=f"Top {min(10, res.shortlist.num_rows)} of {res.shortlist.num_rows:,} "
                        f"({'hull distance' if hull else objective})")
    fcol = res.formula_column
    names = res.shortlist.column_names
    cols = ["rank", fcol, "prediction", "uncertainty", *[c for c in ("hull_distance", "known_value") if c in names],
            *res.others, "extrapolation"]  # the decomposition and the other models' sigmas are in the file: too wide
    for c in cols:
        t.add_column(c.replace("known_value", "known (DFT)"), justify="left" if c == fcol else "right")

    def cell(c, v):
        if c == "extrapolation":
            return "yes" if v else ""
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for r in res.shortlist.slice(0, 10).select(cols).to_pylist():
        t.add_row(*[cell(c, r[c]) for c in cols])
    out.print(t)
    for name in [None, *res.others]:  # every model's own flag: none is silent
        flag = "extrapolation" if name is None else f"{name}_extrapolation"
        n_extra = sum(res.shortlist.column(flag).to_pylist()) if res.shortlist.num_rows else 0
        if n_extra:
            whose = "the model's" if name is None else f"{name}'s"
            err.print(f"[yellow]{n_extra:,} shortlisted rows hold an element rare in {whose} training data[/] "
                      f"(column {flag})", highlight=False)
    left_out = [f"{res.filtered:,} screened rows filtered out"] if res.filtered else []
    if opts.where:  # not rejects: good rows that one of the conditions turned away
        left_out.append(f"{res.failed_conditions:,} {'' if left_out else 'screened rows '}failed --where")
    err.print(
        f"[bold]{s.rows_read:,}[/] rows read = [green]{s.rows_ok:,} screened[/] + "
        f"[{'red' if s.rows_rejected else 'dim'}]{s.rows_rejected:,} rejected[/]"
        + (f" ({', '.join(left_out)})" if left_out else "")
        + f" in {s.seconds:.1f} s ({s.rate:,.0f} rows/s)"
    )
    if res.exact_rows < s.rows_ok - res.filtered - res.known_left_out:
        err.print(f"cascade: the ensemble ran on {res.exact_rows:,} rows; the student showed the others could not "
                  "make the shortlist (--exact runs it on every row)")
    if hull:
        err.print(f"--hull: {res.hull_rows:,} rows needed a hull energy, {res.hull_seconds:.1f} s (the others scored "
                  "past the cutoff already)")
    if exclude_known:
        err.print(f"--exclude-known left out {res.known_left_out:,} screened rows that are known phases")
    if "known" in names and not exclude_known:
        n_known = sum(res.shortlist.column("known").to_pylist())
        if n_known:
            err.print(f"{n_known:,} shortlisted rows are known phases (columns known, known_value; --exclude-known "
                      "leaves them out)")
    _phases_summary(res.phases, res.phases_rejects, res.phases_rejected)
    err.print(f"output: {s.output}   rejects: {s.rejects}" + (f"   plot: {res.plot}" if res.plot else ""), highlight=False)
    _exit_for(s)


# --------------------------------------------------------------------------- plot


@app.command()
def plot(
    shortlist: Path = typer.Argument(..., help="A shortlist written by `irscreen screen` (Parquet or CSV)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="PNG to write (default: SHORTLIST with .png)."),
    formula_column: Optional[str] = typer.Option(None),
) -> None:
    """Picture a shortlist: elements against the pool, and the ranking value with the cutoff."""
    from irscreen.screening.pool import draw, read_metadata, read_shortlist

    data, column = read_shortlist(shortlist, formula_column)
    png = draw(data, output or shortlist.with_suffix(".png"), column)
    if read_metadata(data.schema) is None:
        err.print("no pool statistics in this shortlist (`irscreen screen --plot` records them): "
                  "drew the shortlist alone")
    err.print(f"plot: {png}", highlight=False)


# --------------------------------------------------------------------------- generate


@app.command()
def generate(
    output: Path = typer.Option(..., "-o", "--output", help="Output Parquet (or .csv)."),
    elements: str = typer.Option(..., help="Comma-separated elements, e.g. Li,Fe,Mn,P,O."),
    max_elements: int = typer.Option(4, help="Most distinct elements per composition."),
    min_elements: int = typer.Option(2, help="Fewest distinct elements per composition."),
    max_atoms: int = typer.Option(12, help="Most atoms in the reduced integer formula."),
    charge_balanced: bool = typer.Option(False, help="Only compositions that balance with common oxidation states."),
    limit: Optional[int] = typer.Option(None, help="Write a seeded random sample of this many compositions."),
    seed: int = typer.Option(0, help="Seed for --limit sampling."),
) -> None:
    """Enumerate hypothetical compositions over the given elements."""
    from irscreen.generate import count_compositions, write_compositions

    els = _elements(elements)
    total = count_compositions(els, max_elements=max_elements, max_atoms=max_atoms, min_elements=min_elements)
    t0 = time.perf_counter()
    with RowProgress("generate", None) as bar:
        n = write_compositions(output, els, max_elements=max_elements, max_atoms=max_atoms, min_elements=min_elements,
                               charge_balanced=charge_balanced, limit=limit, seed=seed,
                               progress=lambda done: bar(done))
    err.print(f"{n:,} compositions written to {output} ({total:,} in the space before filters) "
              f"in {time.perf_counter() - t0:.1f} s")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, IrscreenWarning):
        err.print(f"[yellow]warning:[/] {message}", highlight=False)
    else:
        err.print(f"warning: {category.__name__}: {message}", highlight=False)


def main() -> None:
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        app()
    except IrscreenError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
