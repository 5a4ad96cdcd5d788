"""Train several recipes (or ensemble members) concurrently on one machine.

Used for the training-recipe studies in docs/benchmarks.md and docs/models.md on a lent
GPU, where one small network leaves the GPU mostly idle, so several training processes
share it. Each job is one (recipe, member) pair and writes its best weights, validation
predictions and learning curve. (Shipped bundles are built by ``irscreen build``.)

Inputs are pre-featurized arrays so this runs where only numpy + torch exist:

    python benchmarks/train_recipes.py --features X.npz --jobs jobs.json --out runs/ --workers 4

X.npz holds ``X`` (n, F) float32, ``y`` (n,), ``train_idx``, ``val_idx``.
jobs.json is a list of {"name": ..., "member": k, "config": {TrainConfig fields}}.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _run(job: dict, features: str, out: str) -> dict:
    import torch

    from irscreen.config import TrainConfig
    from irscreen.models.bundle import write_member
    from irscreen.models.scaler import Scaler
    from irscreen.train import train_member

    torch.set_num_threads(job.get("threads", 1))
    d = np.load(features)
    X, y, tr, va = d["X"], d["y"], d["train_idx"], d["val_idx"]
    cfg = TrainConfig(**job["config"])
    scaler = Scaler.fit(X[tr], y[tr])
    Xs = scaler.transform(X)
    ys = scaler.transform_y(y)
    t0 = time.perf_counter()
    res = train_member(Xs[tr], ys[tr], Xs[va], ys[va], cfg, member=job["member"])
    wall = time.perf_counter() - t0
    run_dir = Path(out) / f"{job['name']}-m{job['member']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    name = digest = None
    if job.get("save", True):
        name = f"member-{job['member']}.safetensors"
        digest = write_member(run_dir / name, res.state, cfg.storage)
    # validation predictions of the best epoch, to score ensembles of finished members
    from irscreen.models.irnet import Net

    net = Net(X.shape[1], cfg.arch)
    net.load_state_dict(res.state)
    net.eval()
    with torch.inference_mode():
        pred = net(torch.as_tensor(Xs[va]))[:, 0].double().numpy() * scaler.y_std + scaler.y_mean
    np.save(run_dir / "val_pred.npy", pred)
    info = {
        "name": job["name"], "member": job["member"], "config": asdict(cfg), "seed": res.seed,
        "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "train_seconds": res.seconds, "wall": wall,
        "val_mae": res.best_val_mae * scaler.y_std, "file": name, "sha256": digest,
        "history": scaler.history_in_units(res.history),
        "scaler": scaler.to_json(),
    }
    (run_dir / "result.json").write_text(json.dumps(info))
    print(f"{job['name']} m{job['member']}: val MAE {info['val_mae']:.4f} best epoch {res.best_epoch} "
          f"{res.seconds:.0f}s", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    jobs = json.loads(Path(a.jobs).read_text())
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        results = pool.starmap(_run, [(j, a.features, a.out) for j in jobs])
    summary = [{k: r[k] for k in ("name", "member", "val_mae", "best_epoch", "train_seconds", "wall")} for r in results]
    (Path(a.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    for r in summary:
        print(r)


if __name__ == "__main__":
    main()
