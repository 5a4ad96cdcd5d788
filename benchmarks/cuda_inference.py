"""Time the CUDA inference path of a bundle (and the CPU one, for comparison).

Needs only numpy, torch and safetensors (it reads the bundle directly, so it runs on a
bare GPU machine without the featurization stack):

    python benchmarks/cuda_inference.py --bundle weights/formation-enthalpy --features oqmd_dhf.npz

Featurization stays on the CPU on any machine; this measures the part a GPU changes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from irscreen.models.irnet import FoldedEnsemble, Net, fold, parse_arch  # noqa: E402


def load(bundle: Path):
    m = json.loads((bundle / "manifest.json").read_text())
    arch = parse_arch(m["architecture"])
    folded = []
    for mem in m["members"]:
        net = Net(m["features"]["n_features"], arch)
        state = load_file(str(bundle / mem["file"]))
        net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in state.items()})
        folded.append(fold(net.eval()))
    s = m["scaler"]
    return m, folded, np.array(s["x_mean"], np.float32), np.array(s["x_std"], np.float32), s["y_mean"], s["y_std"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, nargs="*", default=[4096, 16384, 65536])
    a = ap.parse_args()
    m, folded, mu, sd, ym, ys = load(Path(a.bundle))
    d = np.load(a.features)
    Z = np.nan_to_num((d["X"] - mu) / sd).astype(np.float32)
    y = d["y"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "results": []}
    Zt = torch.from_numpy(Z)
    ref = None
    for prec in ("fp32", "mixed", "bf16"):
        eng = FoldedEnsemble(folded, precision=prec, device=dev)
        pred = torch.cat([eng(Zt[i : i + 65536]).mean(0).cpu() for i in range(0, len(Zt), 65536)]).numpy() * ys + ym
        if ref is None:
            ref = pred
        big = Zt.repeat(a.rows // len(Zt) + 1, 1)[: a.rows].to(dev)
        for b in a.batch:
            for i in range(0, min(len(big), 4 * b), b):  # warm-up
                eng(big[i : i + b])
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(0, len(big), b):
                eng(big[i : i + b])
            if dev == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            out["results"].append({
                "precision": prec, "batch": b, "rows_per_s": len(big) / dt,
                "tflops": len(big) * eng.flops_per_row() / dt / 1e12,
                "mae": float(np.mean(np.abs(pred - y))), "mean_abs_diff_vs_fp32": float(np.mean(np.abs(pred - ref))),
            })
            print(json.dumps(out["results"][-1]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
