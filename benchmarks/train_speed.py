"""Training speed on this CPU: seconds per epoch of IRNet-17 (full and half width) in
fp32 and bf16 autocast on the OQMD training split, and seconds-to-MAE curves that
combine those rates with recorded learning curves (benchmarks/results/runs.json).

    python benchmarks/paper_depth.py prepare --data ../shared/data/oqmd_dhf.parquet --out oqmd_dhf.npz
    python benchmarks/train_speed.py --features oqmd_dhf.npz [--steps 60]

An epoch is timed from ``--steps`` optimizer steps after a warm-up (the loop is the
one `irscreen train` runs), scaled to the full epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from irscreen.models.irnet import Net  # noqa: E402
from irscreen.train import TrainConfig, make_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "runs.json"


def seconds_per_epoch(X: np.ndarray, y: np.ndarray, arch: str, precision: str, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    net = Net(X.shape[1], arch)
    opt = make_optimizer(net, TrainConfig(arch=arch))  # the optimizer `irscreen train` uses
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    net.train()

    def step(i):
        idx = torch.randint(0, len(Xt), (batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = net(Xt[idx])[:, 0]
        loss = (pred.float() - yt[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(10):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    per_step = (time.perf_counter() - t) / steps
    return per_step * math.ceil(len(X) / batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=512)
    a = ap.parse_args()
    d = np.load(a.features)
    X = np.nan_to_num((d["X"] - d["X"].mean(0)) / (d["X"].std(0) + 1e-12)).astype(np.float32)[d["train_idx"]]
    y = ((d["y"] - d["y"].mean()) / d["y"].std()).astype(np.float32)[d["train_idx"]]
    rates = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(X):,} training rows, batch {a.batch}")
    print("| network | fp32 s/epoch | bf16 s/epoch | bf16 speed-up |")
    print("|---|---|---|---|")
    for arch in ("irnet17", "irnet17-half"):
        r = {p: seconds_per_epoch(X, y, arch, p, a.batch, a.steps) for p in ("fp32", "bf16")}
        rates[arch] = r
        print(f"| {arch} | {r['fp32']:.1f} | {r['bf16']:.1f} | {r['fp32'] / r['bf16']:.2f}x |")
    if RESULTS.exists():
        runs = json.loads(RESULTS.read_text())
        print()
        print("CPU minutes to reach a validation MAE (epochs from the recorded learning curves x the")
        print("measured seconds/epoch above for the run's precision; one-cycle schedules of the given length):")
        print()
        targets = [0.09, 0.08, 0.07, 0.065, 0.06]
        print("| run | " + " | ".join(f"MAE <= {t}" for t in targets) + " |")
        print("|---|" + "---|" * len(targets))
        for run in runs:
            arch = run["config"]["arch"]
            if arch not in rates or run["config"].get("batch_size") != a.batch:
                continue
            spe = rates[arch][run["config"].get("precision", "bf16")]
            cells = []
            for t in targets:
                ep = next((h["epoch"] for h in run["history"] if h["val_mae"] <= t), None)
                cells.append(f"{ep * spe / 60:.1f} min ({ep} ep)" if ep else "-")
            print(f"| {run['name']} m{run['member']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
