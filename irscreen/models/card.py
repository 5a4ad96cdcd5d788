"""The model card: README.md inside every bundle, written from its manifest alone."""
from __future__ import annotations

from pathlib import Path


def write_card(bundle: Path, manifest: dict, notes: str = "") -> None:
    (Path(bundle) / "README.md").write_text(card_text(manifest, notes))


def card_text(m: dict, notes: str = "") -> str:
    units = m.get("units", "")
    ens = m.get("metrics", {}).get("validation", {})
    hp = m.get("hyperparameters", {})
    data = m.get("data", {})
    members = m["members"]
    n_params = members[0].get("n_parameters", 0) if members else 0
    lines = [
        f"# {m.get('name')}: {m.get('description', '')}",
        "",
        f"Predicts **{m.get('target')}** ({units}) from a chemical formula alone, with an ensemble of "
        f"{len(members)} IRNet networks on the `{m['features']['preset']}` composition features "
        f"({m['features']['n_features']} inputs).",
        "",
        "## Data",
        f"- Source: {data.get('source', 'unknown')}",
        f"- Licence: {data.get('license', 'see source')}",
        f"- Rows: {data.get('rows', 0):,} usable ({data.get('train_rows', 0):,} train / {data.get('val_rows', 0):,} "
        f"validation); {data.get('rows_rejected', 0):,} rejected (bad formula or target), "
        f"{data.get('rows_left_out', 0):,} left out by the split",
        f"- Split: {_split_text(data.get('split', {}))}",
        f"- Content sha256: `{data.get('sha256', '?')}`",
        "",
        "## Model",
        f"- Architecture: `{m['architecture']}` ({m.get('arch_name', '')}), {n_params:,} parameters per member, "
        f"~{2 * n_params * len(members) / 1e6:.0f} MFLOP per row for the ensemble",
        f"- Training: {hp.get('optimizer')} with a {hp.get('schedule')} schedule peaking at lr {hp.get('lr')}, "
        f"batch {hp.get('batch_size')}, {hp.get('epochs')} epochs, MAE loss on the standardized target, "
        f"{hp.get('precision')} arithmetic, best epoch kept (patience {hp.get('patience')})",
        f"- Trained on: {m.get('hardware', '?')}; {sum(x.get('train_seconds', 0) for x in members) / 60:.0f} minutes "
        "for all members, one after another",
        f"- Weights stored as {hp.get('storage', 'float32')} (BatchNorm statistics float32)",
    ]
    if m.get("command"):
        lines += [f"- Reproduce from a clone with the training data in `../shared/data`: `{m['command']}`"]
    lines += [
        "",
        "## Validation",
        "",
        f"| member | seed | best epoch | training time (s) | MAE ({units}) |",
        "|---|---|---|---|---|",
    ]
    val_members = ens.get("members", [])
    for k, mem in enumerate(members):
        mae = val_members[k]["mae"] if k < len(val_members) else mem.get("val_mae")
        lines.append(f"| {k} | {mem.get('seed')} | {mem.get('best_epoch')} | {mem.get('train_seconds')} | {mae:.4f} |")
    if ens:
        lines += [
            f"| **ensemble mean** | | | | **{ens['mae']:.4f}** |",
            "",
            f"Ensemble on the validation split (n = {ens['n']:,}): MAE {ens['mae']:.4f}, RMSE {ens['rmse']:.4f}, "
            f"R² {ens['r2']:.4f}, max error {ens['max_error']:.3f} {units}.",
        ]
    pub = data.get("published")
    if pub:
        row = ", ".join(f"{k} {v:.3f}" for k, v in pub["mae"].items())
        lines += ["", f"Published on this benchmark's held-back test split ({pub['source']}): {row} {units}. "
                  "Validation and test MAE are different splits; irscreen's validation MAE has tracked its "
                  "test MAE within ~7%."]
    cal = m.get("calibration")
    lines += ["", "## Uncertainty", ""]
    if cal:
        cv, fit, raw = cal["validation_cross_fitted"], cal["validation_fitted"], cal["raw_spread"]
        lines += [
            f"`uncertainty` is a calibrated standard deviation of the error: sigma = sqrt(({cal['scale']:.3f} x "
            f"ensemble std)^2 + {cal['floor']:.4f}^2), fitted on the validation split: 1 sigma covers 68% of the "
            "errors by construction, and the floor brings 2 sigma as close to 95% as this form allows. Materials "
            "errors are heavy-tailed (DFT outliers, polymorphs sharing a formula), so 2 sigma falls short of 95% "
            "(docs/models.md, \"Uncertainty\").",
            "",
            "| on the validation split | within 1 sigma | within 2 sigma | Spearman(sigma, abs error) |",
            "|---|---|---|---|",
            f"| raw ensemble std | {raw['within_1_sigma']:.1%} | {raw['within_2_sigma']:.1%} | {raw['spearman_sigma_abs_error']:.2f} |",
            f"| calibrated, fitted on all of it | {fit['within_1_sigma']:.1%} | {fit['within_2_sigma']:.1%} | {fit['spearman_sigma_abs_error']:.2f} |",
            f"| calibrated, 2-fold cross-fitted | {cv['within_1_sigma']:.1%} | {cv['within_2_sigma']:.1%} | {cv['spearman_sigma_abs_error']:.2f} |",
        ]
    else:
        lines += ["`uncertainty` is the ensemble standard deviation (not calibrated)."]
    el = m.get("elements")
    lines += [
        "",
        "![learning curves](learning_curve.png) ![validation parity](parity.png)",
        "",
        "## Intended use and limits",
        "- Ranking large pools of hypothetical compositions before DFT; not a substitute for DFT.",
        "- Composition only: polymorphs of one formula get the same prediction.",
    ]
    if m.get("output_min") is not None:
        lines += [f"- `prediction` is the ensemble mean clipped at {m['output_min']:g} {units}, the property's lower "
                  "bound; `member_k` columns and `uncertainty` are not clipped."]
    if el:
        rare = sorted((s for s, c in el["counts"].items() if c < el["min_count"]), key=str)
        lines += [f"- `extrapolation` is true for a row holding an element seen in fewer than {el['min_count']} "
                  f"training compositions ({len(el['counts'])} elements seen; rare: {', '.join(rare) or 'none'}; "
                  "never seen: every other element). Such rows are still predicted; trust them less."]
    if m.get("phases"):
        from irscreen.phases import phases_note

        lines += ["", phases_note(m)]
    if m.get("student"):
        lines += ["", _student_text(m["student"], units)]
    if notes:
        lines += ["", notes]
    lines += ["", "## Citations"] + [f"- {c}" for c in m.get("citations", [])]
    return "\n".join(lines) + "\n"


def _student_text(st: dict, units: str) -> str:
    d, b = st["disagreement"], st["bound"]
    m = b["margin"]
    lo, hi = b["edges"][0], b["edges"][-1]
    return "\n".join([
        "## Cascade student (`screen`)",
        "",
        f"`student.safetensors` is a small network (`{st['architecture']}`, {st['flops_per_row'] / 1e6:.2f} MFLOP per "
        f"row against the ensemble's {st['ensemble_flops_per_row'] / 1e6:.0f}) distilled from this ensemble. `screen` "
        "runs it on every row and the ensemble only on rows that, within the bounds below, could still enter the "
        "shortlist or meet a condition, so the shortlist is the one the ensemble on every row gives (`--exact` "
        "checks it).",
        "",
        f"| abs(student - ensemble) on {d['rows']:,} held-out rows ({units}) | median | 99th percentile | "
        "99.9th percentile | largest |",
        "|---|---|---|---|---|",
        *(f"| {k} | {d[k]['median']:.4f} | {d[k]['p99']:.4f} | {d[k]['p99.9']:.4f} | {d[k]['max']:.4f} |"
          for k in ("mean", "sigma")),
        "",
        f"Bounds on the mean, margin included ({m}x, {st['labels_precision']}): the student overestimates it by at "
        f"most {m * b['mean_over'][0]:.4f} where the ensemble mean is below {lo:.3g} (the lowest of "
        f"{len(b['mean_over'])} regions), {m * max(b['mean_over']):.4f} anywhere; underestimates it by at most "
        f"{m * b['mean_under'][-1]:.4f} above {hi:.3g}, {m * max(b['mean_under']):.4f} anywhere. "
        f"How: {st['how']}." + (f" Reproduce: `{st['command']}`." if st.get("command") else ""),
    ])


def _split_text(split: dict) -> str:
    if split.get("kind") == "random":
        return f"random {split.get('val_frac', 0.1):.0%} validation (seed {split.get('seed', 0)}), the rest training"
    if split.get("kind") == "column":
        return f"column {split.get('column')!r}: 'train' rows train, 'val' rows validate, other labels are left out"
    return str(split) or "?"
