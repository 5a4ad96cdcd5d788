"""Screen benchmark: N generated candidates -> top 1000 with the shipped default model,
end to end through the CLI, against the naive pipeline (matminer + a plain fp32
PyTorch loop over the same ensemble) on a subset in the same run.

    python benchmarks/screen.py --rows 1000000 --naive-rows 50000 [--also 5000000]

Also measured in the same run: the bf16 matmul rate of this machine (the yardstick
for inference efficiency), the model's inference rate and FLOP rate per precision,
and the mean |bf16 - fp32| and |mixed - fp32| of the ensemble predictions.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _measure import run  # noqa: E402

ELEMENTS = "Li,Na,K,Mg,Ca,Sr,Ba,Sc,Y,La,Ti,Zr,V,Nb,Cr,Mo,W,Mn,Fe,Co,Ni,Cu,Zn,Al,Ga,In,Si,Ge,Sn,P,Sb,Bi,O,S,Se,N,F,Cl"


def generate(path: Path, n: int, seed: int = 0) -> None:
    cmd = [sys.executable, "-m", "irscreen", "generate", "-o", str(path), "--elements", ELEMENTS,
           "--max-elements", "4", "--max-atoms", "10", "--limit", str(n), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True)


def matmul_peak(threads: int | None = None) -> float:
    """bf16 GEMM rate (GFLOP/s) at the shape of the model's widest layers."""
    import torch

    a = torch.randn(2048, 1024).bfloat16()
    b = torch.randn(1024, 1024).bfloat16()
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 2048 * 1024 * 1024 / (time.perf_counter() - t) / 1e9)
    return best


def inference(model, X: np.ndarray) -> dict:
    out = {}
    for prec in ("fp32", "mixed", "bf16"):
        eng = model.engine(prec)
        model.predict_members(X[:2048], prec)
        t = time.perf_counter()
        P = model.predict_members(X, prec)
        dt = time.perf_counter() - t
        out[prec] = {"rows_per_s": len(X) / dt, "gflops": len(X) * eng.flops_per_row() / dt / 1e9, "pred": P.mean(0)}
    for prec in ("mixed", "bf16"):
        out[prec]["mean_abs_diff_vs_fp32"] = float(np.mean(np.abs(out[prec]["pred"] - out["fp32"]["pred"])))
    for v in out.values():
        v.pop("pred")
    return out


def naive(model, formulas: list[str], jobs: int) -> dict:
    """matminer (joblib) + a plain fp32 PyTorch loop over the unfolded members."""
    import torch

    from irscreen.features.reference import featurize_matminer

    t = time.perf_counter()
    X = featurize_matminer(formulas, n_jobs=jobs)
    t_feat = time.perf_counter() - t
    Z = torch.from_numpy(model.scaler.transform(X))
    t = time.perf_counter()
    with torch.no_grad():
        preds = [torch.cat([net(Z[i : i + 1024])[:, 0] for i in range(0, len(Z), 1024)]) for net in model.nets]
    t_inf = time.perf_counter() - t
    return {"rows": len(formulas), "featurize_s": t_feat, "inference_s": t_inf,
            "rows_per_s": len(formulas) / (t_feat + t_inf),
            "pred": torch.stack(preds).mean(0).numpy() * model.scaler.y_std + model.scaler.y_mean}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--also", type=int, nargs="*", default=[])
    ap.add_argument("--naive-rows", type=int, default=50_000)
    ap.add_argument("--accuracy-rows", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    import torch

    from irscreen import load_model

    work = Path(a.workdir or tempfile.mkdtemp(prefix="irscreen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = load_model("formation-enthalpy")
    report = {"threads": torch.get_num_threads(), "bf16_matmul_gflops": matmul_peak()}

    screens = []
    for n in [a.rows] + a.also:
        src = work / f"candidates-{n}.parquet"
        if not src.exists():
            generate(src, n)
        out = work / f"top-{n}.parquet"
        r = run([sys.executable, "-m", "irscreen", "screen", str(src), "--top", "1000", "-o", str(out),
                 "--jobs", str(a.jobs), "--device", a.device])
        if r["rc"] != 0:
            raise SystemExit(r["stderr"][-3000:])
        screens.append({"rows": n, "seconds": r["seconds"], "rows_per_s": n / r["seconds"],
                        "peak_rss_mb": r["peak_rss"] / 2**20, "summary": r["stderr"].strip().splitlines()[-2:]})
    report["screen"] = screens

    from irscreen.composition import parse_batch
    from irscreen.features import featurize_parsed

    formulas = pq.read_table(work / f"candidates-{a.rows}.parquet", columns=["formula"]).column("formula")
    sub = formulas.slice(0, a.accuracy_rows).to_pylist()
    X = featurize_parsed(parse_batch(sub)).astype(np.float32)
    report["inference"] = inference(model, X)
    report["val_mae"] = model.manifest["metrics"]["validation"]["mae"]

    nv = naive(model, formulas.slice(0, a.naive_rows).to_pylist(), a.jobs)
    ours = model.predict_members(X[: a.naive_rows], "mixed").mean(0)
    nv["max_abs_diff_vs_irscreen"] = float(np.max(np.abs(nv.pop("pred") - ours)))
    report["naive"] = nv
    print(json.dumps(report, indent=1))

    peak = report["bf16_matmul_gflops"]
    s0 = screens[0]
    naive_1m = a.rows / nv["rows_per_s"]
    print()
    print(f"bf16 matmul on this machine: {peak:.0f} GFLOP/s ({report['threads']} threads)")
    print("| rows | irscreen screen wall (s) | rows/s | peak RSS (MB) | naive pipeline, extrapolated (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for s in screens:
        print(f"| {s['rows']:,} | {s['seconds']:.1f} | {s['rows_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} | "
              f"{s['rows'] / nv['rows_per_s']:,.0f} | {s['rows'] / nv['rows_per_s'] / s['seconds']:.1f}x |")
    print()
    print("| precision | rows/s (3 members) | GFLOP/s | % of bf16 matmul | mean abs diff vs fp32 | % of val MAE |")
    print("|---|---|---|---|---|---|")
    for prec, v in report["inference"].items():
        d = v.get("mean_abs_diff_vs_fp32", 0.0)
        print(f"| {prec} | {v['rows_per_s']:,.0f} | {v['gflops']:.0f} | {100 * v['gflops'] / peak:.0f}% | "
              f"{d:.2e} | {100 * d / report['val_mae']:.2f}% |")
    print()
    print(f"naive: matminer {nv['featurize_s']:.1f} s + fp32 loop {nv['inference_s']:.1f} s for {nv['rows']:,} rows "
          f"= {nv['rows_per_s']:,.0f} rows/s -> {naive_1m:,.0f} s per {a.rows:,}; irscreen {s0['seconds']:.1f} s "
          f"({naive_1m / s0['seconds']:.1f}x)")


if __name__ == "__main__":
    main()
