"""Assemble members trained by train_recipes.py (e.g. on a lent GPU) into a bundle.

    python benchmarks/assemble_bundle.py --runs runs/full-e120-m0 runs/full-e120-m1 runs/full-e120-m2 \
        --data ../shared/data/oqmd_dhf.parquet --features oqmd_dhf.npz --out weights/formation-enthalpy

The members must share one recipe and one training split; the manifest records it,
then the bundle is scored on the validation rows exactly as `irscreen train` does.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from irscreen.features import PRESETS  # noqa: E402
from irscreen.models.bundle import MANIFEST, sha256_file, write_json_atomic  # noqa: E402
from irscreen.models.irnet import Net, n_parameters  # noqa: E402
from irscreen.train import Scaler, TrainConfig, data_hash, finalize_bundle, new_manifest  # noqa: E402

SHIPPED = {
    "formation-enthalpy": dict(
        target="formation_enthalpy",
        units="eV/atom",
        description="DFT formation enthalpy (OQMD)",
        source="OQMD formation enthalpies via the CrabNet benchmark set OQMD_Formation_Enthalpy "
        "(its validation split and 90% of its test split; the remaining 10% is held back for judging)",
        license="CC BY 4.0 (OQMD)",
        citations=[
            "Jha, Gupta, Choudhary, Liao, Agrawal, Choudhary. Enabling deeper learning on big data for materials "
            "informatics applications. Sci. Rep. 11, 4244 (2021) [IRNet]",
            "Ward, Agrawal, Choudhary, Wolverton. A general-purpose machine learning framework for predicting "
            "properties of inorganic materials. npj Comput. Mater. 2, 16028 (2016) [Magpie features]",
            "Ward et al. Matminer: An open source toolkit for materials data mining. Comput. Mater. Sci. 152, 60 (2018)",
            "Saal, Kirklin, Aykol, Meredig, Wolverton. Materials design and discovery with high-throughput density "
            "functional theory: the Open Quantum Materials Database (OQMD). JOM 65, 1501 (2013)",
            "Kirklin et al. The Open Quantum Materials Database (OQMD): assessing the accuracy of DFT formation "
            "energies. npj Comput. Mater. 1, 15010 (2015)",
            "Wang, Kauwe, Murdock, Sparks. Compositionally restricted attention-based network for materials "
            "property predictions. npj Comput. Mater. 7, 77 (2021) [CrabNet benchmark splits]",
        ],
    )
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--data", required=True, help="the training Parquet (for its content hash)")
    ap.add_argument("--features", required=True, help="the .npz the runs were trained on")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hardware", default="")
    ap.add_argument("--notes", default="")
    a = ap.parse_args()
    out = Path(a.out)
    info = SHIPPED[out.name]
    results = [json.loads((Path(r) / "result.json").read_text()) for r in a.runs]
    cfgs = {json.dumps({k: v for k, v in r["config"].items()}, sort_keys=True) for r in results}
    if len(cfgs) != 1:
        raise SystemExit("members were trained with different recipes")
    cfg = TrainConfig(**results[0]["config"])
    cfg.ensemble = len(results)
    d = np.load(a.features)
    X, y, tr, va = d["X"], d["y"], d["train_idx"], d["val_idx"]
    df = pl.read_parquet(a.data)
    assert np.allclose(df["target"].to_numpy(), y)
    preset = PRESETS["magpie"]
    data = {
        "source": info["source"], "license": info["license"], "file": Path(a.data).name,
        "rows": int(len(y)), "train_rows": int(len(tr)), "val_rows": int(len(va)),
        "sha256": data_hash(df["formula"].to_list(), y),
        "split": {"kind": "random", "val_frac": 0.1, "seed": 0},
    }
    manifest = new_manifest(
        name=out.name, target=info["target"], units=info["units"], description=info["description"],
        preset="magpie", labels_hash=preset.labels_hash, n_features=len(preset.labels),
        scaler=Scaler.from_json(results[0]["scaler"]), cfg=cfg, data=data, citations=info["citations"],
    )
    if a.hardware:
        manifest["hardware"] = a.hardware
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for k, (run, r) in enumerate(zip(a.runs, results)):
        dst = out / f"member-{k}.safetensors"
        shutil.copyfile(Path(run) / r["file"], dst)
        manifest["members"].append({
            "file": dst.name, "sha256": sha256_file(dst), "seed": r["seed"], "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"], "train_seconds": round(r["train_seconds"], 1), "val_mae": r["val_mae"],
            "history": r["history"], "n_parameters": n_parameters(Net(X.shape[1], cfg.arch)),
        })
    write_json_atomic(out / MANIFEST, manifest)
    m = finalize_bundle(out, X[va], y[va], notes=a.notes)
    print(json.dumps({k: v for k, v in m["metrics"]["validation"].items() if k != "members"}))


if __name__ == "__main__":
    main()
