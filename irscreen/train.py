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
from irscreen.errors import IrscreenError
from irscreen.models.bundle import FORMAT, MANIFEST, sha256_file, write_json_atomic
from irscreen.models.irnet import Net, n_parameters, parse_arch

DEFAULT_CHECKPOINT_DIR = Path.home() / ".cache" / "irscreen" / "checkpoints"


@dataclass
class TrainConfig:
    """Hyperparameters. Defaults are the fastest-to-accurate recipe measured on a
    2-core AVX-512-BF16 CPU (docs/benchmarks.md); the paper's recipe is
    ``optimizer='adam', lr=1e-4, batch_size=32, schedule='constant', precision='fp32'``."""

    arch: str = "irnet17"
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    schedule: str = "onecycle"  # onecycle | constant
    optimizer: str = "adamw"  # adamw | adam
    weight_decay: float = 1e-4
    patience: int = 30  # epochs without val improvement before stopping; 0 = never stop early
    precision: str = "bf16"  # bf16 | fp32
    device: str = "auto"
    seed: int = 0
    ensemble: int = 1
    storage: str = "float16"  # dtype of Linear weights in the bundle: float16 | float32

    def validate(self) -> None:
        parse_arch(self.arch)
        if self.schedule not in ("onecycle", "constant"):
            raise IrscreenError(f"unknown schedule {self.schedule!r} (onecycle, constant)")
        if self.optimizer not in ("adamw", "adam"):
            raise IrscreenError(f"unknown optimizer {self.optimizer!r} (adamw, adam)")
        if self.precision not in ("bf16", "fp32"):
            raise IrscreenError(f"unknown precision {self.precision!r} (bf16, fp32)")
        if self.storage not in ("float16", "float32"):
            raise IrscreenError(f"unknown storage dtype {self.storage!r} (float16, float32)")
        for name in ("epochs", "batch_size", "ensemble"):
            if getattr(self, name) < 1:
                raise IrscreenError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0:
            raise IrscreenError("--lr must be > 0")
        if self.patience < 0:
            raise IrscreenError("--patience must be >= 0")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise IrscreenError("--device cuda was requested but PyTorch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise IrscreenError(f"unknown device {device!r} (auto, cpu, cuda)")
    return torch.device(device)


def split_indices(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/validation split (the paper's 9:1 by default)."""
    if not 0 < val_frac < 1:
        raise IrscreenError("--val-frac must be between 0 and 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_frac)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def data_hash(formulas, y: np.ndarray) -> str:
    """Content hash of a training set: formulas and targets, in order."""
    h = hashlib.sha256()
    for f in formulas:
        h.update(str(f).encode())
        h.update(b"\n")
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass
class Scaler:
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> "Scaler":
        mean = np.nanmean(X, axis=0)
        std = np.nanstd(X, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        y_std = float(np.std(y)) or 1.0
        return cls(mean.astype(np.float64), std.astype(np.float64), float(np.mean(y)), y_std)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardize; a missing value becomes the training mean (0 after scaling)."""
        Z = (np.asarray(X, dtype=np.float32) - self.x_mean.astype(np.float32)) / self.x_std.astype(np.float32)
        return np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0)

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float64) - self.y_mean) / self.y_std).astype(np.float32)

    def history_in_units(self, history: list[dict]) -> list[dict]:
        """A learning curve (MAEs on the standardized target) in target units."""
        return [{**h, "train_mae": h["train_mae"] * self.y_std, "val_mae": h["val_mae"] * self.y_std} for h in history]

    def to_json(self) -> dict:
        return {"x_mean": self.x_mean.tolist(), "x_std": self.x_std.tolist(), "y_mean": self.y_mean, "y_std": self.y_std}

    @classmethod
    def from_json(cls, d: dict) -> "Scaler":
        return cls(np.asarray(d["x_mean"], float), np.asarray(d["x_std"], float), float(d["y_mean"]), float(d["y_std"]))


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


# --------------------------------------------------------------------------- bundle writing


def _member_tensors(state: dict, storage: str) -> dict:
    """Linear weights/biases in the storage dtype; BatchNorm statistics stay float32
    (a tiny variance would underflow in float16)."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            is_bn = ".bn." in k
            v = v.float() if (is_bn or storage == "float32") else v.to(torch.float16)
        out[k] = v
    return out


def save_member(bundle: Path, index: int, state: dict, storage: str) -> tuple[str, str]:
    name = f"member-{index}.safetensors"
    tmp = bundle / f".{name}.tmp"
    save_file(_member_tensors(state, storage), str(tmp))
    tmp.replace(bundle / name)
    return name, sha256_file(bundle / name)


def new_manifest(*, name, target, units, description, preset, labels_hash, n_features, scaler: Scaler,
                 cfg: TrainConfig, data: dict, citations: list[str]) -> dict:
    return {
        "format": FORMAT,
        "name": name,
        "target": target,
        "units": units,
        "description": description,
        "features": {"preset": preset, "n_features": n_features, "labels_sha256": labels_hash},
        "scaler": scaler.to_json(),
        "architecture": parse_arch(cfg.arch).spec,
        "arch_name": cfg.arch,
        "members": [],
        "data": data,
        "hyperparameters": asdict(cfg),
        "metrics": {},
        "versions": {"irscreen": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "hardware": _hardware(cfg.device),
        "citations": citations,
    }


def _hardware(device: str) -> str:
    if torch.cuda.is_available() and device in ("cuda", "auto"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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
) -> dict:
    """Train ``cfg.ensemble`` members into ``bundle``; returns the final manifest.

    With ``resume``, members already in the bundle's manifest are kept and the first
    unfinished member continues from its checkpoint.
    """
    cfg.validate()
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    existing = bundle / MANIFEST
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

    for k in range(len(manifest["members"]), cfg.ensemble):
        ckpt = ckpt_root / f"{_cfg_key(cfg)}-member-{k}"
        res = train_member(
            Xs[train_idx], ys[train_idx], Xs[val_idx], ys[val_idx], cfg,
            member=k, checkpoint=ckpt, resume=resume, on_epoch=on_epoch,
        )
        fname, digest = save_member(bundle, k, res.state, cfg.storage)
        manifest["members"].append({
            "file": fname,
            "sha256": digest,
            "seed": res.seed,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "train_seconds": round(res.seconds, 1),
            "val_mae": res.best_val_mae * scaler.y_std,  # in target units
            "history": scaler.history_in_units(res.history),
            "n_parameters": n_parameters(Net(X.shape[1], cfg.arch)),
        })
        write_json_atomic(existing, manifest)
        shutil.rmtree(ckpt, ignore_errors=True)
        if on_member:
            on_member(k, res)
    return manifest


def _cfg_key(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def finalize_bundle(bundle: Path, X_val: np.ndarray, y_val: np.ndarray, notes: str = "") -> dict:
    """Score the finished ensemble on the validation rows, then write the metrics into
    the manifest, the learning-curve and parity plots, and the model card."""
    from irscreen import plots
    from irscreen.evaluate import evaluate_members
    from irscreen.models.card import write_card
    from irscreen.models.ensemble import load_model

    bundle = Path(bundle)
    model = load_model(bundle)
    preds = model.predict_members(X_val)
    manifest = model.manifest
    manifest["metrics"]["validation"] = evaluate_members(preds, y_val)
    write_json_atomic(bundle / MANIFEST, manifest)
    units = manifest.get("units", "")
    plots.learning_curve(manifest["members"], units, bundle / "learning_curve.png")
    label = f"{manifest.get('target')} ({units})" if units else str(manifest.get("target"))
    ens = manifest["metrics"]["validation"]
    plots.parity(y_val, preds.mean(0), label, bundle / "parity.png",
                 title=f"validation, n = {ens['n']:,}, ensemble MAE = {ens['mae']:.4f}")
    write_card(bundle, manifest, notes)
    return manifest
