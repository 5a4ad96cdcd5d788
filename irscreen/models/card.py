"""The model card: README.md inside every bundle, written from its manifest."""
from __future__ import annotations

from pathlib import Path


def write_card(bundle: Path, manifest: dict, notes: str = "") -> None:
    m = manifest
    units = m.get("units", "")
    ens = m.get("metrics", {}).get("validation", {})
    hp = m.get("hyperparameters", {})
    data = m.get("data", {})
    lines = [
        f"# {m.get('name')}: {m.get('description', '')}",
        "",
        f"Predicts **{m.get('target')}** ({units}) from a chemical formula alone, with an ensemble of "
        f"{len(m['members'])} IRNet networks on the `{m['features']['preset']}` composition features.",
        "",
        "## Data",
        f"- Source: {data.get('source', 'unknown')}",
        f"- Rows: {data.get('rows', '?'):,} ({data.get('train_rows', '?'):,} train / {data.get('val_rows', '?'):,} validation)",
        f"- Split: {_split_text(data.get('split', {}))}",
        f"- Content sha256: `{data.get('sha256', '?')}`",
        f"- Licence: {data.get('license', 'see source')}",
        "",
        "## Model",
        f"- Architecture: `{m['architecture']}` ({m.get('arch_name', '')}), "
        f"{m['members'][0].get('n_parameters', 0):,} parameters per member",
        f"- Training: {hp.get('optimizer')} with a {hp.get('schedule')} schedule peaking at lr {hp.get('lr')}, "
        f"batch {hp.get('batch_size')}, {hp.get('epochs')} epochs, MAE loss on the standardized target, "
        f"{hp.get('precision')} autocast, best epoch kept (patience {hp.get('patience')})",
        f"- Hardware: {m.get('hardware', '?')}",
        f"- Weights stored as {hp.get('storage', 'float32')} (BatchNorm statistics float32)",
        "",
        "## Validation",
        "",
        f"| member | seed | best epoch | training time (s) | MAE ({units}) |",
        "|---|---|---|---|---|",
    ]
    val_members = ens.get("members", [])
    for k, mem in enumerate(m["members"]):
        mae = val_members[k]["mae"] if k < len(val_members) else mem.get("val_mae")
        lines.append(f"| {k} | {mem.get('seed')} | {mem.get('best_epoch')} | {mem.get('train_seconds')} | {mae:.4f} |")
    if ens:
        lines += [
            f"| **ensemble mean** | | | | **{ens['mae']:.4f}** |",
            "",
            f"Ensemble on the validation split (n = {ens['n']:,}): MAE {ens['mae']:.4f}, RMSE {ens['rmse']:.4f}, "
            f"R² {ens['r2']:.4f}, max error {ens['max_error']:.3f} {units}.",
        ]
    lines += [
        "",
        "![learning curves](learning_curve.png) ![validation parity](parity.png)",
        "",
        "## Intended use and limits",
        "- Ranking large pools of hypothetical compositions before DFT; not a substitute for DFT.",
        "- Composition only: polymorphs of one formula get the same prediction.",
        "- Trust falls outside the chemistry of the training data; the ensemble spread (`uncertainty`) is a "
        "rough signal of that, not a calibrated error bar.",
    ]
    if notes:
        lines += ["", notes]
    lines += ["", "## Citations"] + [f"- {c}" for c in m.get("citations", [])]
    (Path(bundle) / "README.md").write_text("\n".join(lines) + "\n")


def _split_text(split: dict) -> str:
    if split.get("kind") == "random":
        return f"random {split.get('val_frac', 0.1):.0%} validation (seed {split.get('seed', 0)}), the rest training"
    if split.get("kind") == "column":
        return f"rows marked 'val' in column {split.get('column')!r} validate, the rest train"
    return str(split) or "?"
