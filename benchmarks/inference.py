"""Inference benchmark: the ensemble's achieved FLOP rate per precision against a plain
bf16 matmul at the model's shapes, measured in the same process, interleaved (these
machines are shared: rates drift between runs), and each precision's effect on the
bundle's validation MAE.

    python benchmarks/inference.py [--model formation-enthalpy] [--data ../shared/data/oqmd_dhf.parquet]

The plain matmul is what the hardware does on this GEMM shape alone (3 members x 512
rows x 1024 x 1024, torch.bmm in bf16: AMX where the CPU has it); the ensemble's rate
counts its GEMM FLOPs (``FoldedEnsemble.flops_per_row``) over its whole forward pass, so
the gap between the two is everything that is not a GEMM (bias, ReLU, shortcuts, dtype
conversions) plus smaller GEMMs at the narrow layers.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def _rate(fn, flops: float, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - t) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="formation-enthalpy")
    ap.add_argument("--data", default="../shared/data/oqmd_dhf.parquet", help="the bundle's training data (for MAE)")
    ap.add_argument("--split-column", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from irscreen.data import load_training_data
    from irscreen.models.ensemble import INFER_BATCH, load_model

    m = load_model(a.model)
    td = load_training_data(a.data, "target", preset=m.preset, split_column=a.split_column)
    Xv, yv = td.X[td.val_idx], td.y[td.val_idx]
    B = INFER_BATCH["cpu"]
    Z = torch.from_numpy(np.ascontiguousarray(m.scaler.transform(Xv[:B])))
    n_members = m.n_members
    a3 = torch.randn(n_members, B, 1024).bfloat16()
    w3 = torch.randn(n_members, 1024, 1024).bfloat16()
    plain_flops = 2 * n_members * B * 1024 * 1024
    precisions = ("fp32", "mixed", "bf16")
    rates = {"plain bf16 bmm": []} | {p: [] for p in precisions}
    for _ in range(a.rounds):  # interleaved: each round measures everything once
        rates["plain bf16 bmm"].append(_rate(lambda: torch.bmm(a3, w3), plain_flops, 20))
        for p in precisions:
            eng = m.engine(p)
            rates[p].append(_rate(lambda: eng(Z), eng.flops_per_row() * B, 5))

    ref = m.outputs(m.predict_members(Xv, "fp32"))["prediction"]
    mae_ref = float(np.abs(ref - yv).mean())
    report = {"model": a.model, "members": n_members, "threads": a.threads, "machine": platform.processor(),
              "amx": "amx_bf16" in open("/proc/cpuinfo").read(), "rows_per_call": B,
              "flops_per_row": m.engine("fp32").flops_per_row(), "val_rows": len(yv), "rates_tflops": rates}
    plain = float(np.median(rates["plain bf16 bmm"]))
    print(f"plain bf16 bmm {n_members}x{B}x1024x1024: median {plain:.3f} TFLOP/s "
          f"(rounds: {', '.join(f'{r:.2f}' for r in rates['plain bf16 bmm'])})")
    print()
    print("| precision | rows/s | TFLOP/s (median of rounds) | % of plain bf16 matmul | validation MAE | change vs fp32 "
          "| mean abs diff vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    report["precisions"] = {}
    for p in precisions:
        r = float(np.median(rates[p]))
        pred = m.outputs(m.predict_members(Xv, p))["prediction"]
        mae = float(np.abs(pred - yv).mean())
        d = float(np.abs(pred - ref).mean())
        report["precisions"][p] = {"tflops": r, "rows_per_s": r * 1e12 / report["flops_per_row"], "val_mae": mae,
                                   "mae_change": mae / mae_ref - 1, "mean_abs_diff": d}
        print(f"| {p} | {r * 1e12 / report['flops_per_row']:,.0f} | {r:.3f} | {100 * r / plain:.0f}% | {mae:.5f} | "
              f"{100 * (mae / mae_ref - 1):+.2f}% | {d:.2e} |")
    print()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
