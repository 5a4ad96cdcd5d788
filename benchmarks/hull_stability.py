"""How well a predicted hull distance tells stable from unstable, on the bundle's own
validation split: for every validation composition, its true hull distance (its DFT
formation energy minus the lower hull of the *training* phases only, at its composition)
next to the predicted one (the model's prediction minus the same hull).

    python benchmarks/hull_stability.py [--model formation-enthalpy] [--data ../shared/data/oqmd_dhf.parquet]

Reported: MAE of the hull distance; precision, recall and F1 of "stable" (hull distance
<= 0) and of "within 0.1 eV/atom" (<= 0.1), for --kappa 0 and 1 (hull distance + kappa
sigma); and the classifier a user gets by chance: a random pick of as many rows as the
model flags, whose precision is the prevalence and whose recall is the flagged fraction.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from irscreen.config import DEFAULT_PRECISION


def classify(true_pos: np.ndarray, flagged: np.ndarray) -> dict:
    tp = int((true_pos & flagged).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(true_pos.sum()), 1)
    prev, frac = float(true_pos.mean()), float(flagged.mean())
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "flagged": int(flagged.sum()),
            "positives": int(true_pos.sum()), "chance_precision": prev, "chance_recall": frac,
            "chance_f1": 2 * prev * frac / (prev + frac) if prev + frac else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="formation-enthalpy")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/oqmd_dhf.parquet"))
    ap.add_argument("--precision", default=DEFAULT_PRECISION, help="inference precision (the default of predict/screen)")
    a = ap.parse_args()

    from irscreen import load_model
    from irscreen.composition import parse_batch
    from irscreen.data import load_training_data
    from irscreen.phases import KnownPhases
    from irscreen.screening.hull import hull_energy

    model = load_model(a.model)
    split = model.manifest["data"]["split"]
    td = load_training_data(a.data, "target", preset=model.preset, split_column=split.get("column"),
                            val_frac=split.get("val_frac", 0.1), seed=split.get("seed", 0))
    if td.data_sha256 != model.manifest["data"]["sha256"]:
        raise SystemExit(f"{a.data} is not the file {a.model} was trained on")
    train, val = td.train_idx, td.val_idx
    phases = KnownPhases.from_formulas([td.formulas[i] for i in train], td.y[train], "training rows")
    b = parse_batch([td.formulas[i] for i in val])
    els, fr = b.elements, b.fractions()
    own = phases.lookup(els, fr)  # a validation composition that is also a training one: against the others
    e_hull = hull_energy(phases, els, fr, exclude=own)
    P = model.predict_members(td.X[val], a.precision)
    pred = P.mean(0).astype(np.float32).astype(np.float64)
    sigma = model.uncertainty(P).astype(np.float32).astype(np.float64)
    true_hd, pred_hd = td.y[val] - e_hull, pred - e_hull
    n_el = (els > 0).sum(1)
    report = {"model": model.name, "validation_rows": len(val), "training_phases": len(phases),
              "validation_also_in_training": int((own >= 0).sum()),
              "mae_hull_distance": float(np.mean(np.abs(pred_hd - true_hd))),
              "mae_formation_energy": float(np.mean(np.abs(pred - td.y[val]))),
              "hull_at_zero": float((e_hull == 0).mean()),
              # the hard cases: true hull distance within 0.05 eV/atom of 0, where the sign decides
              "near_hull_rows": int((np.abs(true_hd) <= 0.05).sum()),
              "near_hull_sign_accuracy": float(((pred_hd <= 0) == (true_hd <= 0))[np.abs(true_hd) <= 0.05].mean()),
              "abs_true_hd_quantiles": np.quantile(np.abs(true_hd), [0.1, 0.25, 0.5]).tolist(), "classes": {}}
    for threshold in (0.0, 0.1):
        for kappa in (0.0, 1.0):
            report["classes"][f"hd<={threshold:g}, kappa {kappa:g}"] = classify(
                true_hd <= threshold, pred_hd + kappa * sigma <= threshold)
    report["by_elements"] = {
        str(k): {"rows": int((n_el == k).sum()), "stable": int(((n_el == k) & (true_hd <= 0)).sum()),
                 **{m: v for m, v in classify((true_hd <= 0)[n_el == k], (pred_hd <= 0)[n_el == k]).items()
                    if m in ("precision", "recall", "f1")}}
        for k in sorted(set(n_el.tolist()))}
    print(json.dumps(report, indent=1))

    print()
    print(f"{len(val):,} validation compositions against {len(phases):,} training phases; MAE of the hull distance "
          f"{report['mae_hull_distance']:.4f} eV/atom (formation energy {report['mae_formation_energy']:.4f}); "
          f"hull at 0 (no training phase below the elements) for {100 * report['hull_at_zero']:.1f}%; "
          f"|true hull distance| quantiles 10/25/50%: "
          f"{', '.join(f'{q:.3f}' for q in report['abs_true_hd_quantiles'])}; "
          f"within 0.05 of the hull: {report['near_hull_rows']:,} rows, sign right for "
          f"{100 * report['near_hull_sign_accuracy']:.1f}%")
    print("| class (true) | rule | positives | flagged | precision | recall | F1 | chance precision | chance recall "
          "| chance F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, c in report["classes"].items():
        t, k = key.split(", ")
        print(f"| {t} | predicted {t} ({k}) | {c['positives']:,} | {c['flagged']:,} | {c['precision']:.3f} | "
              f"{c['recall']:.3f} | {c['f1']:.3f} | {c['chance_precision']:.3f} | {c['chance_recall']:.3f} | "
              f"{c['chance_f1']:.3f} |")


if __name__ == "__main__":
    main()
