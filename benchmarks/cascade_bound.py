"""How often the cascade's student bounds would have been exceeded, on a large pool of
candidates the student never saw.

    python benchmarks/cascade_bound.py [--model formation-enthalpy] [--rows 1000000] [--seed 424242]

Every row: the ensemble (default precision) and the student. A row exceeds its bound when
the student over- or underestimates the ensemble's mean (or sigma) by more than the bound
of the region its ensemble mean lies in (margin included); the raw maxima (margin 1) are
counted too. Rows with an element the bundle rarely saw are left out: the cascade always
sends them to the ensemble. Also printed: the share of rows a top-1000 minimize screen of
this pool sends to the ensemble.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="formation-enthalpy")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=424242)
    a = ap.parse_args()

    from irscreen.config import DEFAULT_PRECISION
    from irscreen.distill import _elements, _features
    from irscreen.generate import sample_formulas
    from irscreen.models.ensemble import load_model

    m = load_model(a.model)
    st = m.student
    b = st.info["bound"]
    inner = np.asarray(b["edges"])
    total = {"rows": 0, "extrapolation": 0}
    counts = {k: [0, 0] for k in ("mean_over", "mean_under", "sigma_over", "sigma_under")}  # [with margin, raw]
    worst = {k: 0.0 for k in counts}  # largest (difference / bound of its region)
    means, guesses = [], []
    for formulas in sample_formulas(a.rows, a.seed, _elements(m), batch=100_000):
        X, els = _features(formulas, m.preset)
        out = m.outputs(m.predict_members(X, DEFAULT_PRECISION), els)
        keep = ~out["extrapolation"]
        mean, sigma = out["prediction"][keep].astype(float), out["uncertainty"][keep].astype(float)
        s_mean, s_sigma = st.predict(X[keep])
        k = np.searchsorted(inner, mean, side="right")
        diffs = {"mean_over": s_mean - mean, "mean_under": mean - s_mean, "sigma_over": s_sigma - sigma,
                 "sigma_under": sigma - s_sigma}
        allow = b["allowance"][DEFAULT_PRECISION]
        for name, d in diffs.items():
            raw = np.asarray(b[name])[k] + allow[name.split("_")[0]]
            counts[name][0] += int((d > b["margin"] * raw).sum())
            counts[name][1] += int((d > raw).sum())
            worst[name] = max(worst[name], float((d / np.maximum(b["margin"] * raw, 1e-12)).max()))
        total["rows"] += int(keep.sum())
        total["extrapolation"] += int((~keep).sum())
        means.append(mean)
        guesses.append(s_mean)
    mean, guess = np.concatenate(means), np.concatenate(guesses)
    cutoff = np.sort(mean)[min(999, len(mean) - 1)]
    slack = st.bound(DEFAULT_PRECISION, hi=cutoff)["mean_over"]
    to_ensemble = int((guess - slack <= cutoff).sum())
    report = {"model": a.model, "pool": total, "exceeded (with margin, raw)": counts,
              "largest difference / bound": worst, "top-1000 cutoff": float(cutoff), "slack there": slack,
              "rows a top-1000 minimize screen sends to the ensemble": to_ensemble,
              "share": to_ensemble / max(total["rows"], 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
