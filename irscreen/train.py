"""Training IRNet ensembles: one member at a time, checkpointed every epoch.

The loop is deliberately small (read it in one sitting, nanoGPT-style):
standardize features and target on the training rows, MAE loss as in the paper,
AdamW with a one-cycle learning-rate schedule, bf16 autocast where the hardware has
it, evaluate validation MAE every epoch, keep the best epoch, stop early after
``patience`` epochs without improvement.

Resumability: after every epoch the member's full state (weights, optimizer,
scheduler, best weights, history) goes to ``<checkpoint_dir>/member-K/`` as
safetensors + JSON. A finished member is written into the bundle at once (and the
manifest updated), so an interrupted ensemble continues with the next member.
Shuffling uses a generator seeded by (seed, epoch), so a resumed run replays exactly
what an uninterrupted one does.

This module needs only numpy and torch (featurization happens before it is called),
so it also runs on a bare GPU machine.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from irscreen import __version__
from irscreen.config import TrainConfig
from irscreen.errors import IrscreenError
from irscreen.models import bundle as _bundle
from irscreen.models.device import pick_device
from irscreen.models.irnet import Net, n_parameters, parse_arch
from irscreen.models.scaler import Scaler

DEFAULT_CHECKPOINT_DIR = Path.home() / ".cache" / "irscreen" / "checkpoints"


@dataclass
class EpochLog:
    member: int
    epoch: int
    epochs: int
    train_mae: float
    val_mae: float
    best_val_mae: float
    seconds: float
    lr: float


@dataclass
class MemberResult:
    state: dict
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val_mae: float = math.inf
    epochs_run: int = 0
    seconds: float = 0.0
    seed: int = 0


# --------------------------------------------------------------------------- checkpoints
# safetensors (tensors) + JSON (everything else): never pickle, even for our own cache.


def _save_checkpoint(path: Path, net, opt, sched, best_state, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    opt_sd = opt.state_dict()
    for idx, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = dict(meta, param_groups=opt_sd["param_groups"], scheduler=sched.state_dict() if sched else None)
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, net, opt, sched, device) -> tuple[dict, dict]:
    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "meta.json").read_text())
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if sched is not None and meta.get("scheduler") is not None:
        sched.load_state_dict(meta["scheduler"])
    return best, meta


# --------------------------------------------------------------------------- one member


def make_optimizer(net, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam/AdamW with the fused kernel where this torch has it for the device: on the
    2-core CPU it cuts the optimizer step of IRNet-17 from 12 to 4.5 ms of a ~65 ms step
    (docs/benchmarks.md)."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    kwargs = {"lr": cfg.lr}
    if cfg.optimizer == "adamw":
        kwargs["weight_decay"] = cfg.weight_decay
    try:
        return cls(net.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused kernel for this device
        return cls(net.parameters(), **kwargs)


def _mae(net, X: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> float:
    net.eval()
    err = 0.0
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            pred = net(X[i : i + batch])[:, 0]
            err += (pred - y[i : i + batch]).abs().double().sum().item()
    return err / max(1, len(X))


def train_member(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    member: int = 0,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochLog], None] | None = None,
    stop_after_epochs: int | None = None,
) -> MemberResult | None:
    """Train one member on already-scaled arrays (y standardized too).

    ``stop_after_epochs`` ends the call early (returning None) after that many epochs
    in this call, leaving the checkpoint behind: it simulates an interruption.
    """
    device = pick_device(cfg.device)
    seed = cfg.seed + 1000 * member
    torch.manual_seed(seed)
    net = Net(X_train.shape[1], cfg.arch).to(device)
    opt = make_optimizer(net, cfg)
    steps_per_epoch = math.ceil(len(X_train) / cfg.batch_size)
    sched = None
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25
        )
    Xt = torch.as_tensor(X_train, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=device)
    Xv = torch.as_tensor(X_val, dtype=torch.float32, device=device)
    yv = torch.as_tensor(y_val, dtype=torch.float32, device=device)

    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    meta = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [], "seconds": 0.0}
    if resume and checkpoint is not None and (checkpoint / "meta.json").exists():
        best_state, meta = _load_checkpoint(checkpoint, net, opt, sched, device)
        if meta.get("config") != asdict(cfg) or meta.get("member") != member:
            raise IrscreenError(
                f"checkpoint {checkpoint} was made with different settings; rerun without --resume to start over"
            )

    use_bf16 = cfg.precision == "bf16"
    epochs_this_call = 0
    while meta["epoch"] < cfg.epochs:
        if cfg.patience and meta["bad_epochs"] >= cfg.patience:
            break
        epoch = meta["epoch"]
        t0 = time.perf_counter()
        net.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(Xt), generator=gen).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                pred = net(Xt[idx])[:, 0]
            loss = (pred.float() - yt[idx]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.detach().double() * len(idx)
        train_mae = total.item() / len(Xt)
        val_mae = _mae(net, Xv, yv)  # in standardized units, like the loss
        meta["seconds"] += time.perf_counter() - t0
        meta["epoch"] = epoch + 1
        if val_mae < meta["best_val"]:
            meta["best_val"], meta["best_epoch"], meta["bad_epochs"] = val_mae, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            meta["bad_epochs"] += 1
        lr = opt.param_groups[0]["lr"]
        meta["history"].append({"epoch": epoch + 1, "train_mae": train_mae, "val_mae": val_mae, "lr": lr})
        if checkpoint is not None:
            meta["config"], meta["member"] = asdict(cfg), member
            _save_checkpoint(checkpoint, net, opt, sched, best_state, meta)
        if on_epoch:
            on_epoch(EpochLog(member, epoch + 1, cfg.epochs, train_mae, val_mae, meta["best_val"], meta["seconds"], lr))
        epochs_this_call += 1
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs and meta["epoch"] < cfg.epochs:
            return None

    return MemberResult(
        state={k: v.detach().cpu() for k, v in best_state.items()},
        history=meta["history"],
        best_epoch=meta["best_epoch"],
        best_val_mae=meta["best_val"],
        epochs_run=meta["epoch"],
        seconds=meta["seconds"],
        seed=seed,
    )


# --------------------------------------------------------------------------- ensemble into a bundle


def _hardware(device: str) -> str:
    if torch.cuda.is_available() and device in ("cuda", "auto"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), PyTorch {torch.__version__}"
    cpu, amx = platform.processor() or platform.machine(), False
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        amx = "amx_bf16" in info
    except (OSError, StopIteration):
        pass
    return f"{cpu}{' with AMX' if amx else ''}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}"


def train_ensemble(
    X: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    bundle: Path,
    manifest: dict,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_member: Callable[[int, MemberResult], None] | None = None,
    members: int | None = None,
) -> dict:
    """Train ``cfg.ensemble`` members into ``bundle`` (only the first ``members`` of them
    when given); returns the manifest.

    With ``resume``, members already in the bundle's manifest are kept and the first
    unfinished member continues from its checkpoint.
    """
    cfg.validate()
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    existing = bundle / _bundle.MANIFEST
    if resume and existing.exists():
        old = json.loads(existing.read_text())
        if old.get("hyperparameters") != manifest["hyperparameters"] or old.get("data", {}).get("sha256") != manifest["data"].get("sha256"):
            raise IrscreenError(f"{bundle} holds a run with different data or settings; cannot --resume it")
        manifest["members"] = old["members"]
    elif not resume:
        for p in bundle.glob("member-*.safetensors"):
            p.unlink()
    scaler = Scaler.from_json(manifest["scaler"])
    Xs = scaler.transform(X)
    ys = scaler.transform_y(y)
    ckpt_root = Path(checkpoint_dir or DEFAULT_CHECKPOINT_DIR) / manifest["data"]["sha256"][:16]

    for k in range(len(manifest["members"]), min(cfg.ensemble, members or cfg.ensemble)):
        ckpt = ckpt_root / f"{_cfg_key(cfg)}-member-{k}"
        res = train_member(
            Xs[train_idx], ys[train_idx], Xs[val_idx], ys[val_idx], cfg,
            member=k, checkpoint=ckpt, resume=resume, on_epoch=on_epoch,
        )
        _bundle.add_member(bundle, manifest, res.state, cfg.storage, {
            "seed": res.seed,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "train_seconds": round(res.seconds, 1),
            "val_mae": res.best_val_mae * scaler.y_std,  # in target units
            "history": scaler.history_in_units(res.history),
            "n_parameters": n_parameters(Net(X.shape[1], cfg.arch)),
        })
        shutil.rmtree(ckpt, ignore_errors=True)
        if on_member:
            on_member(k, res)
    return manifest


def _cfg_key(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def train_bundle(td, cfg: TrainConfig, output, *, name: str, units: str = "", description: str = "",
                 target_name: str | None = None, data_info: dict | None = None, citations: list[str] | None = None,
                 command: str | None = None, output_min: float | None = None, resume: bool = False,
                 checkpoint_dir=None, on_epoch=None, members: int | None = None) -> dict:
    """Train an ensemble on :class:`irscreen.data.TrainingData` into the bundle ``output``,
    then score, calibrate and document it (:func:`finalize_bundle`).

    ``members``: stop after that many members and finalize a usable, smaller ensemble;
    its manifest keeps the planned size, so ``resume`` later adds the rest."""
    from irscreen.features import get_preset

    spec = get_preset(td.preset)
    data = {
        "source": str(td.path.name), "file": td.path.name, "rows": int(len(td.y)), "rows_read": td.rows_read,
        "rows_rejected": td.rows_rejected, "rows_left_out": td.rows_left_out,
        "train_rows": int(len(td.train_idx)), "val_rows": int(len(td.val_idx)), "sha256": td.data_sha256,
        "split": td.split, "target_column": td.target, **(data_info or {}),
    }
    manifest = _bundle.new_manifest(
        name=name, target=target_name or td.target, units=units, description=description or f"{td.target} from composition",
        preset=spec.name, scaler=td.scaler, config=asdict(cfg), architecture=parse_arch(cfg.arch).spec, data=data,
        citations=list(citations or [IRNET_CITATION]) + [c for c in spec.citations if c not in (citations or [])],
        hardware=_hardware(cfg.device),
        versions={"irscreen": __version__, "torch": torch.__version__, "python": platform.python_version()},
    )
    if command:
        manifest["command"] = command
    if output_min is not None:
        manifest["output_min"] = float(output_min)
    out = Path(output)
    train_ensemble(td.X, td.y, td.train_idx, td.val_idx, cfg, out, manifest, checkpoint_dir=checkpoint_dir,
                   resume=resume, on_epoch=on_epoch, members=members)
    return finalize_bundle(out, td)


IRNET_CITATION = ("D. Jha et al., Enabling deeper learning on big data for materials informatics applications, "
                  "Sci. Rep. 11, 4244 (2021) [IRNet]")


def element_counts(formulas) -> dict[str, int]:
    """How many of ``formulas`` contain each element (for the extrapolation flag)."""
    from irscreen.composition import SYMBOLS, parse_batch

    z = np.asarray(parse_batch(list(formulas)).elements).astype(np.int64)
    present = np.zeros((len(z), len(SYMBOLS)), dtype=bool)
    rows = np.repeat(np.arange(len(z)), z.shape[1]) if z.size else np.zeros(0, int)
    present[rows, z.ravel()] = True
    counts = present[:, 1:].sum(axis=0)
    return {SYMBOLS[i + 1]: int(c) for i, c in enumerate(counts) if c}


def finalize_bundle(bundle: Path, td, notes: str = "", phases: bool | None = None) -> dict:
    """Score the finished ensemble on the validation rows, calibrate its uncertainty
    there, count the training compositions per element, then write the metrics into the
    manifest, the learning-curve and parity plots, and the model card.

    ``phases``: also store the training and validation rows as the bundle's known phases
    (:mod:`irscreen.phases`); None decides by the target: a formation energy in eV/atom."""
    from irscreen import plots
    from irscreen.evaluate import evaluate_members
    from irscreen.models.calibration import fit_calibration
    from irscreen.models.card import write_card
    from irscreen.models.ensemble import load_model
    from irscreen.phases import is_formation_energy, write_training_phases

    bundle = Path(bundle)
    model = load_model(bundle)
    X_val, y_val = td.X[td.val_idx], td.y[td.val_idx]
    preds = model.predict_members(X_val)
    manifest = model.manifest
    prediction = model.outputs(preds)["prediction"]  # what users get (clipped where the bundle says so)
    manifest["metrics"]["validation"] = evaluate_members(preds, y_val, prediction)
    if len(preds) > 1:
        manifest["calibration"] = fit_calibration(preds.std(0), prediction - y_val)
    manifest["elements"] = {"counts": element_counts([td.formulas[i] for i in td.train_idx]),
                            "min_count": EXTRAPOLATION_MIN_COUNT}
    if phases is None:
        phases = is_formation_energy(manifest.get("target", ""), manifest.get("units", ""))
    if phases:
        write_training_phases(bundle, manifest, td)
    _bundle.write_json_atomic(bundle / _bundle.MANIFEST, manifest)
    units = manifest.get("units", "")
    plots.learning_curve(manifest["members"], units, bundle / "learning_curve.png")
    label = f"{manifest.get('target')} ({units})" if units else str(manifest.get("target"))
    ens = manifest["metrics"]["validation"]
    plots.parity(y_val, prediction, label, bundle / "parity.png",
                 title=f"validation, n = {ens['n']:,}, ensemble MAE = {ens['mae']:.4f}")
    write_card(bundle, manifest, notes)
    return manifest


#: A row with an element seen in fewer training compositions than this is flagged as extrapolation.
EXTRAPOLATION_MIN_COUNT = 20
