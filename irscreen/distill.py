"""Distill a bundle's ensemble into the small student that screen's cascade runs first.

    irscreen distill MODEL [--data FILE]

1. Label candidates with the ensemble: random candidates over the elements the bundle
   knows well (:func:`irscreen.generate.sample_formulas`), plus the compositions of
   ``--data`` files (for a shipped bundle, its training data). The labels are the
   ensemble's mean and calibrated sigma at the default inference precision.
2. Train the student (an IRNet of a few narrow layers, two outputs) to reproduce them:
   mean squared error, which weighs the large disagreements the bound is made of.
3. Measure the disagreement on held-out candidates the student never saw (other random
   candidates and a tenth of the ``--data`` compositions), by region of the ensemble's
   mean (:mod:`irscreen.models.student`): per region, the largest over- and underestimate
   of the mean and of sigma. A bound is ``margin`` times those; for the other inference
   precisions it adds the largest difference between the ensemble at that precision and
   at the default one (times the margin too), by the triangle inequality.

How the bound is used and how often it was exceeded on a large held-out pool:
docs/benchmarks.md ("Cascade"). Training takes a few CPU-minutes; it is not resumable
(it is short), and it is deterministic for a seed on one machine.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from irscreen import __version__
from irscreen.config import DEFAULT_PRECISION
from irscreen.errors import IrscreenError


@dataclass
class DistillConfig:
    arch: str = "256BARx2-128BARx2-64BARx1-2"
    train_rows: int = 300_000  # random candidates labelled by the ensemble
    pool_rows: int = 200_000  # held-out random candidates: where the bound is measured
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 2e-3
    margin: float = 2.0  # bound = margin x the largest disagreement on the held-out pool (docs/benchmarks.md)
    bins: int = 64  # regions of the ensemble mean the disagreement is measured in (equal counts)
    #: the student's inference precision: bf16 runs it ~3x faster than fp32 on AMX CPUs, and
    #: the bounds are measured with the student as screens run it
    precision: str = "bf16"
    allowance_rows: int = 20_000  # rows on which the other precisions are compared
    seed: int = 0

    def validate(self) -> None:
        for name in ("train_rows", "pool_rows", "epochs", "batch_size", "allowance_rows"):
            if getattr(self, name) < 1:
                raise IrscreenError(f"distill: {name.replace('_', '-')} must be >= 1")
        if self.margin < 1:
            raise IrscreenError("distill: the margin must be >= 1 (the bound is margin x the largest disagreement seen)")


def _elements(m) -> list[int]:
    """Elements to draw random candidates from: those the bundle saw in at least its
    extrapolation threshold of training compositions (all rows drawn from them are in
    its domain), among the common elements."""
    from irscreen.composition import Z_OF
    from irscreen.generate import COMMON_ELEMENTS

    info = m.manifest.get("elements")
    if not info:
        return list(COMMON_ELEMENTS)
    counts, need = info.get("counts", {}), info.get("min_count", 20)
    known = {Z_OF[s] for s, c in counts.items() if c >= need and s in Z_OF}
    return [z for z in COMMON_ELEMENTS if z in known]


def _features(formulas: list[str], preset: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, F) float32, elements (n, k)) of the formulas that featurize to finite values."""
    from irscreen.composition import parse_batch
    from irscreen.features import featurize_parsed_columns

    Xs, Es = [], []
    for i in range(0, len(formulas), 50_000):
        b = parse_batch(formulas[i : i + 50_000])
        XT = featurize_parsed_columns(b, preset)
        ok = np.asarray(b.ok) & np.isfinite(XT).all(axis=0)
        Xs.append(np.ascontiguousarray(XT[:, ok].T))
        Es.append(np.asarray(b.elements)[ok])
    k = max(e.shape[1] for e in Es)
    return np.concatenate(Xs), np.concatenate([np.pad(e, ((0, 0), (0, k - e.shape[1]))) for e in Es])


def _file_features(paths, preset: str, jobs: int) -> tuple[np.ndarray | None, int]:
    """Features of every row of the files that featurizes (a formula column found as
    everywhere in irscreen), and how many rows did not."""
    from irscreen.io import open_table
    from irscreen.pipeline import featurize_table

    Xs, rejected = [], 0
    for path in paths:
        table = open_table(path)
        for fb in featurize_table(table, table.formula_column(None), preset, "fast", jobs=jobs):
            Xs.append(np.array(fb.X, dtype=np.float32))
            rejected += fb.rejects.num_rows
    return (np.concatenate(Xs) if Xs else None), rejected


def _label(m, X: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's (mean, calibrated sigma) per row, float64."""
    out = m.outputs(m.predict_members(X, precision))
    return out["prediction"].astype(np.float64), out["uncertainty"].astype(np.float64)


def _train(X: np.ndarray, targets: np.ndarray, cfg: DistillConfig, scaler, on_epoch=None):
    from irscreen.models.irnet import Net
    from irscreen.train import make_optimizer

    torch.manual_seed(cfg.seed)
    net = Net(X.shape[1], cfg.arch)
    if net.arch.outputs != 2:
        raise IrscreenError(f"distill: the student's architecture must end in 2 outputs (mean, sigma), got {cfg.arch!r}")
    from irscreen.config import TrainConfig

    opt = make_optimizer(net, TrainConfig(lr=cfg.lr, optimizer="adamw"))
    steps = math.ceil(len(X) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.25)
    Xt = torch.from_numpy(np.ascontiguousarray(scaler.transform(X)))
    Yt = torch.from_numpy(targets.astype(np.float32))
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(len(Xt), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            loss = ((net(Xt[idx]) - Yt[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if on_epoch:
            on_epoch(epoch + 1, cfg.epochs, total / len(Xt), time.perf_counter() - t0)
    return net.eval()


def _binned_maxima(mean: np.ndarray, d_mean: np.ndarray, d_sigma: np.ndarray, bins: int) -> dict:
    """Bins of equal count over the ensemble mean (inner edges), and per bin the largest
    over- (student - ensemble > 0) and underestimate of the mean and of sigma, >= 0."""
    bins = max(1, min(bins, len(mean) // 50))  # at least 50 rows per bin
    inner = np.unique(np.quantile(mean, np.arange(1, bins) / bins))
    k = np.searchsorted(inner, mean, side="right")
    out = {"edges": inner.tolist(), "rows_per_bin": np.bincount(k, minlength=len(inner) + 1).tolist()}
    for name, d in (("mean_over", d_mean), ("mean_under", -d_mean), ("sigma_over", d_sigma), ("sigma_under", -d_sigma)):
        worst = np.zeros(len(inner) + 1)
        np.maximum.at(worst, k, np.maximum(d, 0.0))
        out[name] = worst.tolist()
    return out


def _stats(d: np.ndarray) -> dict:
    return {"median": float(np.median(d)), "p99": float(np.quantile(d, 0.99)),
            "p99.9": float(np.quantile(d, 0.999)), "max": float(d.max())}


def distill(model, data=(), cfg: DistillConfig | None = None, *, command: str = "", output: Path | None = None,
            jobs: int = 1, remeasure: bool = False, console=None, on_epoch=None) -> dict:
    """Train ``model``'s student and write it into its bundle (or into a copy of the bundle
    at ``output``); returns the manifest's ``student`` entry. ``data``: Parquet/CSV files
    whose compositions join the random candidates (the bundle's training data, say).
    ``remeasure``: keep the bundle's student and measure its bounds again (another margin,
    precision or pool size) without training it again."""
    import shutil

    from irscreen.composition import SYMBOLS
    from irscreen.generate import sample_formulas
    from irscreen.models import bundle as _bundle
    from irscreen.models.ensemble import load_model
    from irscreen.models.irnet import PRECISIONS, FoldedEnsemble, Net, fold, parse_arch

    cfg = cfg or DistillConfig()
    cfg.validate()
    if cfg.precision not in PRECISIONS:
        raise IrscreenError(f"distill: unknown precision {cfg.precision!r} ({', '.join(PRECISIONS)})")
    m = load_model(model)
    path = Path(m.path)
    if output is not None and Path(output).resolve() != path.resolve():
        if Path(output).exists():
            raise IrscreenError(f"{output}: exists; distill writes into a bundle's own directory or a new one")
        shutil.copytree(path, output)
        path = Path(output)
        m = load_model(path)
    if remeasure and m.student is None:
        raise IrscreenError(f"model {m.name!r} has no student to measure; run `irscreen distill` without --remeasure")
    t0 = time.perf_counter()
    say = console.print if console else (lambda *a, **k: None)

    els = _elements(m)
    rng = np.random.default_rng(cfg.seed)
    extra, data_rejected = _file_features(data, m.preset, jobs)
    if extra is None:
        extra = np.zeros((0, m.manifest["features"]["n_features"]), np.float32)
    held = rng.random(len(extra)) < 0.1  # a tenth of the given compositions measure the bound
    # the elements themselves too: random candidates have 2-5 elements, screens may hold unaries
    unaries = [SYMBOLS[z] for z in els]
    say(f"featurizing {cfg.pool_rows + (0 if remeasure else cfg.train_rows):,} random candidates over "
        f"{len(els)} elements ...")
    X_pool, _ = _features(unaries + [f for fs in sample_formulas(cfg.pool_rows, 8_000 + cfg.seed, els) for f in fs],
                          m.preset)
    X_pool = np.concatenate([X_pool, extra[held]])
    if remeasure:
        old = m.manifest["student"]
        info = {k: old[k] for k in ("architecture", "config", "trained_on", "seconds") if k in old}
        net = Net(m.manifest["features"]["n_features"], parse_arch(old["architecture"]))
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(m.student_file)), strict=True)
        net.eval()
    else:
        X_rand, _ = _features(unaries + [f for fs in sample_formulas(cfg.train_rows, 7_000 + cfg.seed, els)
                                         for f in fs], m.preset)
        X_train = np.concatenate([X_rand, extra[~held]])
        say(f"labelling {len(X_train):,} rows with the ensemble ({m.n_members} members, {DEFAULT_PRECISION}) ...")
        mean_t, sigma_t = _label(m, X_train, DEFAULT_PRECISION)
        y_std, y_mean = float(m.scaler.y_std), float(m.scaler.y_mean)
        targets = np.stack([(mean_t - y_mean) / y_std, sigma_t / y_std], axis=1)
        say(f"training the student {cfg.arch} on {len(X_train):,} rows, {cfg.epochs} epochs ...")
        net = _train(X_train, targets, cfg, m.scaler, on_epoch)
        info = {"architecture": cfg.arch, "config": asdict(cfg),
                "trained_on": {"random_candidates": int(len(X_rand)), "data_rows": int((~held).sum()),
                               "data_files": [Path(p).name for p in data], "data_rows_rejected": int(data_rejected),
                               "elements": len(els)},
                "seconds": round(time.perf_counter() - t0, 1)}
    say(f"measuring the bounds on {len(X_pool):,} held-out rows ...")
    info.update(_measure(m, net, info, X_pool, cfg))
    info.update({
        "precision": cfg.precision,
        "held_out": {"random_candidates": int(cfg.pool_rows), "data_rows": int(held.sum())},
        "flops_per_row": FoldedEnsemble([fold(net)]).flops_per_row(),
        "ensemble_flops_per_row": m.engine("fp32").flops_per_row(),
        "irscreen": __version__,
        "command": command,
    })
    manifest = _bundle.read_manifest(path)
    _bundle.write_student(path, manifest, net.state_dict(), info)
    from irscreen.models.card import write_card

    write_card(path, manifest)
    return manifest["student"]


def _measure(m, net, info: dict, X_pool: np.ndarray, cfg: DistillConfig) -> dict:
    """The student's disagreement with the ensemble on the held-out rows: the bounds by
    region, the allowance per inference precision, and summary statistics."""
    from irscreen.models.irnet import PRECISIONS
    from irscreen.models.student import Student

    mean_p, sigma_p = _label(m, X_pool, DEFAULT_PRECISION)
    bound = {"margin": cfg.margin, "allowance": {}}
    student = Student(net, m.scaler, {**info, "bound": bound, "precision": cfg.precision}, m.output_min)
    s_mean, s_sigma = student.predict(X_pool)
    bound.update(_binned_maxima(mean_p, s_mean - mean_p, s_sigma - sigma_p, cfg.bins))
    sub = X_pool[: cfg.allowance_rows]
    for p in PRECISIONS:
        am = asg = 0.0
        if p != DEFAULT_PRECISION:
            mp, sp = _label(m, sub, p)
            am, asg = float(np.abs(mp - mean_p[: len(sub)]).max()), float(np.abs(sp - sigma_p[: len(sub)]).max())
        bound["allowance"][p] = {"mean": am, "sigma": asg}
    d_mean, d_sigma = np.abs(s_mean - mean_p), np.abs(s_sigma - sigma_p)
    return {
        "bound": bound,
        "units": m.units,
        "how": f"{cfg.margin} x the largest over- and underestimate of the ensemble's mean and sigma on "
               f"{len(X_pool):,} held-out rows, per bin of the ensemble mean ({len(bound['mean_over'])} bins of equal "
               f"count), + for other precisions the largest |ensemble(precision) - ensemble({DEFAULT_PRECISION})| on "
               f"{len(sub):,} of them; the student in {cfg.precision}",
        "disagreement": {"mean": _stats(d_mean), "sigma": _stats(d_sigma), "rows": int(len(X_pool))},
        "labels_precision": DEFAULT_PRECISION,
    }
