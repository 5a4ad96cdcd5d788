"""The paper's depth experiment on OQMD formation enthalpy (Jha et al. 2021, Fig. 2/Table 2):
plain vs SRNet vs IRNet at 17 and 48 layers under equal epochs, plus the random-forest
baseline, on Magpie features with a seeded 9:1 split.

    python benchmarks/paper_depth.py prepare --data ../shared/data/oqmd_dhf.parquet --out oqmd_dhf.npz
    python benchmarks/paper_depth.py jobs --epochs 40 --device cuda > depth_jobs.json
    python benchmarks/train_recipes.py --features oqmd_dhf.npz --jobs depth_jobs.json --out runs --workers 8
    python benchmarks/paper_depth.py rf --features oqmd_dhf.npz --jobs 16
    python benchmarks/paper_depth.py table runs/

Every network gets the same recipe (AdamW, one-cycle peaking at 1e-3, batch 512, bf16
autocast, MAE loss) and the same number of epochs, so depth and shortcuts are the only
differences.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ARCHS = ["plain17", "srnet17", "irnet17", "plain48", "srnet48", "irnet48"]


def prepare(data: str, out: str) -> None:
    import polars as pl

    from irscreen.composition import parse_batch
    from irscreen.features import featurize_parsed
    from irscreen.data import split_indices

    df = pl.read_parquet(data)
    X = featurize_parsed(parse_batch(df["formula"].to_list())).astype(np.float32)
    y = df["target"].to_numpy()
    tr, va = split_indices(len(y), 0.1, 0)
    np.savez_compressed(out, X=X, y=y, train_idx=tr, val_idx=va)


def jobs(epochs: int, device: str, archs: list[str]) -> list[dict]:
    return [{"name": f"depth-{a}-e{epochs}", "member": 0, "save": False,
             "config": {"arch": a, "epochs": epochs, "batch_size": 512, "lr": 1e-3, "device": device, "patience": 0}}
            for a in archs]


def rf(features: str, n_jobs: int) -> dict:
    from sklearn.ensemble import RandomForestRegressor

    d = np.load(features)
    X, y, tr, va = np.nan_to_num(d["X"]), d["y"], d["train_idx"], d["val_idx"]
    t = time.perf_counter()
    model = RandomForestRegressor(n_estimators=100, max_features=0.33, n_jobs=n_jobs, random_state=0)
    model.fit(X[tr], y[tr])
    fit_s = time.perf_counter() - t
    mae = float(np.mean(np.abs(model.predict(X[va]) - y[va])))
    return {"name": "random forest (100 trees, max_features 0.33)", "val_mae": mae, "fit_seconds": fit_s,
            "n_jobs": n_jobs}


def table(runs: str) -> None:
    rows = []
    for p in sorted(Path(runs).glob("depth-*/result.json")):
        r = json.loads(p.read_text())
        eps = r["epochs_run"]
        rows.append((r["config"]["arch"], eps, r["val_mae"], r["train_seconds"] / eps))
    print("| network | epochs | validation MAE (eV/atom) | seconds/epoch |")
    print("|---|---|---|---|")
    for arch, eps, mae, spe in rows:
        print(f"| {arch} | {eps} | {mae:.4f} | {spe:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("jobs")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", nargs="*", default=ARCHS)
    p = sub.add_parser("rf")
    p.add_argument("--features", required=True)
    p.add_argument("--jobs", type=int, default=2)
    p = sub.add_parser("table")
    p.add_argument("runs")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.data, a.out)
    elif a.cmd == "jobs":
        print(json.dumps(jobs(a.epochs, a.device, a.archs), indent=1))
    elif a.cmd == "rf":
        print(json.dumps(rf(a.features, a.jobs)))
    else:
        table(a.runs)


if __name__ == "__main__":
    main()
