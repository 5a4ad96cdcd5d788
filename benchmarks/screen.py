"""Screen benchmark: N generated candidates -> top 1000 with the shipped default model,
end to end through the CLI, measured against `irscreen featurize` on the same file in
the same run (featurization is a screen's floor; absolute times on shared machines vary
2x between runs): the default screen (cascade), the same with --exact (the shortlists
must be identical), and a band-gap window (--where) both ways; peak RSS of the process
tree; and the naive pipeline (matminer + a plain fp32 loop over the members) on a subset.

    python benchmarks/screen.py --rows 1000000 [--also 5000000] [--naive-rows 10000]

Inference rates against the plain matmul: benchmarks/inference.py.
"""
from __future__ import annotations

import argparse
import json
import re
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


def naive(model, formulas: list[str], jobs: int) -> dict:
    """matminer (joblib) + a plain fp32 PyTorch loop over the unfolded members."""
    import torch

    from irscreen.features.reference import featurize_matminer

    t = time.perf_counter()
    X = featurize_matminer(formulas, n_jobs=jobs)
    if model.preset == "magpie-fractions":  # + matminer's ElementFraction, H..Pu (the preset's 94 columns)
        from matminer.featurizers.composition import ElementFraction
        from pymatgen.core import Composition

        ef = ElementFraction()
        ef.set_n_jobs(jobs)
        frac = np.asarray(ef.featurize_many([Composition(f) for f in formulas], pbar=False), dtype=np.float64)
        X = np.hstack([X, frac[:, :94]])
    t_feat = time.perf_counter() - t
    Z = torch.from_numpy(model.scaler.transform(X))
    t = time.perf_counter()
    with torch.no_grad():
        preds = [torch.cat([net(Z[i : i + 1024])[:, 0] for i in range(0, len(Z), 1024)]) for net in model.nets]
    t_inf = time.perf_counter() - t
    return {"rows": len(formulas), "featurize_s": t_feat, "inference_s": t_inf,
            "rows_per_s": len(formulas) / (t_feat + t_inf),
            "pred": torch.stack(preds).mean(0).numpy() * model.scaler.y_std + model.scaler.y_mean}


def _screen(src: Path, out: Path, jobs: int, device: str, *extra: str) -> dict:
    r = run([sys.executable, "-m", "irscreen", "screen", str(src), "--top", "1000", "-o", str(out), "--jobs", str(jobs),
             "--device", device, *extra])
    if r["rc"] != 0:
        raise SystemExit(r["stderr"][-3000:])
    cascade = re.search(r"the ensemble ran on ([\d,]+) rows", " ".join(r["stderr"].split()))
    return {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss"] / 2**20, "output": str(out),
            "ensemble_rows": int(cascade.group(1).replace(",", "")) if cascade else None,
            "summary": r["stderr"].strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--also", type=int, nargs="*", default=[], help="more sizes (default screen only: memory flatness)")
    ap.add_argument("--naive-rows", type=int, default=10_000, help="0: skip the naive pipeline")
    ap.add_argument("--window-model", default="band-gap",
                    help="the --where model of the window screen: a shipped name or a bundle directory ('' to skip)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    from irscreen import load_model
    from irscreen.models.bundle import shipped_names

    work = Path(a.workdir or tempfile.mkdtemp(prefix="irscreen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = load_model("formation-enthalpy")
    report = {"model": model.name, "student": bool(model.student), "sizes": []}
    window = []
    if a.window_model and (a.window_model in shipped_names() or Path(a.window_model).is_dir()):
        window = ["--where", f"{a.window_model} >= 1.0", "--where", f"{a.window_model} <= 1.8"]
    for n in [a.rows] + a.also:
        src = work / f"candidates-{n}.parquet"
        if not src.exists():
            generate(src, n)
        size = {"rows": n}
        r = run([sys.executable, "-m", "irscreen", "featurize", str(src), "-o", str(work / f"features-{n}.parquet"),
                 "--jobs", str(a.jobs)])
        if r["rc"] != 0:
            raise SystemExit(r["stderr"][-3000:])
        size["featurize"] = {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss"] / 2**20}
        size["screen"] = _screen(src, work / f"top-{n}.parquet", a.jobs, a.device)
        if n == a.rows:
            size["exact"] = _screen(src, work / f"top-{n}-exact.parquet", a.jobs, a.device, "--exact")
            size["identical"] = pq.read_table(size["screen"]["output"]).equals(pq.read_table(size["exact"]["output"]))
            if window:
                size["window"] = _screen(src, work / f"top-{n}-window.parquet", a.jobs, a.device, *window)
                size["window_exact"] = _screen(src, work / f"top-{n}-window-exact.parquet", a.jobs, a.device, *window,
                                               "--exact")
                size["window_identical"] = pq.read_table(size["window"]["output"]).equals(
                    pq.read_table(size["window_exact"]["output"]))
        report["sizes"].append(size)

    if a.naive_rows:
        formulas = pq.read_table(work / f"candidates-{a.rows}.parquet", columns=["formula"]).column("formula")
        nv = naive(model, formulas.slice(0, a.naive_rows).to_pylist(), a.jobs)
        nv.pop("pred")
        report["naive"] = nv
    print(json.dumps(report, indent=1))
    print()
    print("| rows | run | wall (s) | x featurize | peak RSS, process tree (MB) | ensemble ran on | shortlist = --exact |")
    print("|---|---|---|---|---|---|---|")
    for size in report["sizes"]:
        f = size["featurize"]["seconds"]
        print(f"| {size['rows']:,} | `irscreen featurize` | {f:.1f} | 1.00x | {size['featurize']['peak_rss_mb']:,.0f} | | |")
        for key, label in [("screen", "screen --top 1000"), ("exact", "screen --top 1000 --exact"),
                           ("window", "screen --top 1000, band-gap window"),
                           ("window_exact", "screen --top 1000, band-gap window, --exact")]:
            if key not in size:
                continue
            v = size[key]
            same = {"screen": size.get("identical"), "window": size.get("window_identical")}.get(key)
            rows = f"{v['ensemble_rows']:,}" if v["ensemble_rows"] is not None else "every row"
            print(f"| {size['rows']:,} | {label} | {v['seconds']:.1f} | {v['seconds'] / f:.2f}x | "
                  f"{v['peak_rss_mb']:,.0f} | {rows} | {'' if same is None else 'yes' if same else 'NO'} |")
    if a.naive_rows:
        nv = report["naive"]
        s0 = report["sizes"][0]["screen"]["seconds"]
        print()
        print(f"naive pipeline (matminer + a plain fp32 loop over the members): {nv['rows_per_s']:,.0f} rows/s on "
              f"{nv['rows']:,} rows -> {a.rows / nv['rows_per_s']:,.0f} s per {a.rows:,} rows, "
              f"{a.rows / nv['rows_per_s'] / s0:.0f}x the default screen")


if __name__ == "__main__":
    main()
