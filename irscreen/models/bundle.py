"""Model bundles: the one module that reads and writes them.

A bundle is a directory::

    manifest.json          what the model is, how it was trained, how to feed it
    member-0.safetensors   one file per ensemble member (training form, BatchNorm unfolded)
    member-1.safetensors
    phases.parquet         known phases (formation-energy bundles): reduced formula and
                           DFT formation energy per atom of every training composition
    student.safetensors    a small network distilled from the ensemble, for screen's cascade
    README.md              the model card
    learning_curve.png, parity.png

Loading verifies every member's sha256 (and the phases file's), the feature labels'
hash, and the element data the features were computed from (a hash of the tables, plus
feature values of a fixed set of probe formulas to compare against when the hash
differs). Weights are safetensors, the phases Parquet, everything else JSON: never pickle.

Manifest fields added over time are optional on reading, so older bundles still load:
``features.element_data`` and ``features.probe`` (element-data check),
``calibration`` (uncertainty scale), ``elements`` (training counts per element),
``phases`` (the known phases file), ``student`` (the cascade's distilled student and its
disagreement bound; ``student.safetensors``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from irscreen.errors import IrscreenError, IrscreenWarning

FORMAT = "irscreen-bundle/1"
MANIFEST = "manifest.json"
_MEMBER = re.compile(r"^member-(\d+)\.safetensors$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    from irscreen.atomic import fsync_dir

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def shipped_root() -> Path:
    """Where the shipped bundles are installed (the top-level weights/ of the repo)."""
    return Path(str(resources.files("irscreen.weights")))


def in_training(manifest: dict) -> bool:
    """A bundle not finalized yet: members are being trained and it has not been scored
    (``irscreen build --resume`` continues it). A finalized bundle may hold fewer members
    than planned (``build --members``); it is usable, and ``--resume`` adds the rest."""
    return "validation" not in manifest.get("metrics", {})


def _shipped() -> dict[str, dict]:
    root = shipped_root()
    return {p.name: json.loads((p / MANIFEST).read_text()) for p in sorted(root.iterdir()) if (p / MANIFEST).is_file()}


def shipped_names() -> list[str]:
    """The shipped bundles ready for use (not those still in training)."""
    return [name for name, m in _shipped().items() if not in_training(m)]


def shipped_in_training() -> dict[str, tuple[int, int]]:
    """Shipped bundles still in training: name -> (members trained, members planned)."""
    return {name: (len(m["members"]), int(m.get("hyperparameters", {}).get("ensemble", len(m["members"]))))
            for name, m in _shipped().items() if in_training(m)}


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A shipped bundle's name (its directory name) or a path to a bundle directory."""
    text = str(name_or_dir)
    if text in shipped_names():
        return shipped_root() / text
    training = shipped_in_training()
    if text in training:
        done, planned = training[text]
        raise IrscreenError(f"model {text!r} is still in training ({done} of {planned} members); "
                            f"`irscreen build {text} --resume -o weights/{text}` continues it")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise IrscreenError(f"{path} is not a model bundle: it has no {MANIFEST}")
        return path
    shipped = ", ".join(shipped_names()) or "none"
    raise IrscreenError(f"unknown model {text!r}: not a shipped model ({shipped}) nor a bundle directory")


def read_manifest(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IrscreenError(f"{bundle_dir} is not a model bundle: it has no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IrscreenError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IrscreenError(f"{path} is not an irscreen bundle manifest (expected format {FORMAT!r})")
    for key in ("architecture", "features", "scaler", "members"):
        if key not in manifest:
            raise IrscreenError(f"{path} is missing the field {key!r}")
    return manifest


def verify_members(bundle_dir: Path, manifest: dict) -> list[Path]:
    """Member files in order; each must exist and match its recorded sha256."""
    bundle_dir = Path(bundle_dir)
    paths = []
    if not manifest["members"]:
        raise IrscreenError(f"model bundle {bundle_dir} has no trained members")
    for i, member in enumerate(manifest["members"]):
        path = bundle_dir / member["file"]
        if member["file"] != f"member-{i}.safetensors":
            raise IrscreenError(f"model bundle {bundle_dir}: member {i} is named {member['file']!r}")
        if not path.is_file():
            raise IrscreenError(f"model bundle {bundle_dir}: {member['file']} is missing")
        digest = sha256_file(path)
        if digest != member["sha256"]:
            raise IrscreenError(
                f"model bundle {bundle_dir}: {member['file']} does not match the sha256 in {MANIFEST} "
                "(the file was modified or truncated)"
            )
        paths.append(path)
    extra = [p.name for p in bundle_dir.iterdir() if _MEMBER.match(p.name) and p not in paths]
    if extra:
        raise IrscreenError(f"model bundle {bundle_dir}: {', '.join(sorted(extra))} not listed in {MANIFEST}")
    return paths


#: Features may drift this much (relative) under other element data before a bundle is refused.
PROBE_RTOL = 1e-5


def check_features(bundle_dir: Path, manifest: dict) -> None:
    """Refuse a bundle whose feature labels differ from what this irscreen computes; warn
    when the element data differ but the probe formulas' features agree to PROBE_RTOL,
    refuse when they do not."""
    from irscreen.features import PRESETS

    feats = manifest["features"]
    preset = feats.get("preset")
    if preset not in PRESETS:
        raise IrscreenError(
            f"model bundle {bundle_dir} expects feature preset {preset!r}, which this irscreen does not have "
            f"({', '.join(PRESETS)})"
        )
    if feats.get("labels_sha256") != PRESETS[preset].labels_hash:
        raise IrscreenError(
            f"model bundle {bundle_dir} was trained on different {preset!r} features than this irscreen computes "
            "(feature label hash mismatch)"
        )
    n = len(PRESETS[preset].labels)
    scaler = manifest["scaler"]
    if feats.get("n_features") != n or len(scaler.get("x_mean", [])) != n or len(scaler.get("x_std", [])) != n:
        raise IrscreenError(f"model bundle {bundle_dir}: scaler and feature count disagree with preset {preset!r} ({n})")

    _check_element_data(bundle_dir, feats)


def _check_element_data(bundle_dir: Path, feats: dict) -> None:
    from irscreen.features import element_data_fingerprint, probe_features

    recorded = feats.get("element_data")
    if not recorded:
        return  # bundles made before the element data were recorded
    current = element_data_fingerprint()
    if recorded.get("sha256") == current["sha256"]:
        return
    versions = (f"bundle: matminer {recorded.get('matminer')}, pymatgen {recorded.get('pymatgen')}; "
                f"installed: matminer {current['matminer']}, pymatgen {current['pymatgen']}")
    probe = feats.get("probe")
    if probe:
        old = np.asarray(probe["values"], dtype=np.float64)
        new = probe_features(feats["preset"], probe["formulas"])
        same_nan = np.array_equal(np.isnan(old), np.isnan(new))
        with np.errstate(invalid="ignore"):
            diff = np.nanmax(np.abs(new - old) / np.maximum(np.abs(old), 1e-12)) if same_nan else np.inf
        if not diff <= PROBE_RTOL:
            raise IrscreenError(
                f"model bundle {bundle_dir} was trained on features from other element data, and they differ "
                f"(relative {diff:.2g} > {PROBE_RTOL:g} on the probe formulas); {versions}"
            )
    warnings.warn(IrscreenWarning(
        f"model bundle {bundle_dir} was trained on other element data ({versions}); the probe formulas' "
        "features agree within the tolerance, so it is used"), stacklevel=3)


# --------------------------------------------------------------------------- writing


def new_manifest(*, name: str, target: str, units: str, description: str, preset: str, scaler, config: dict,
                 architecture: str, data: dict, citations: list[str], hardware: str, versions: dict) -> dict:
    """The manifest of an empty bundle: members are added by :func:`add_member`."""
    from irscreen.features import PROBE_FORMULAS, element_data_fingerprint, get_preset, probe_features

    spec = get_preset(preset)
    return {
        "format": FORMAT,
        "name": name,
        "target": target,
        "units": units,
        "description": description,
        "features": {
            "preset": spec.name, "n_features": spec.n_features, "labels_sha256": spec.labels_hash,
            "element_data": element_data_fingerprint(),
            "probe": {"formulas": list(PROBE_FORMULAS),
                      "values": np.where(np.isnan(v := probe_features(spec.name, PROBE_FORMULAS)), None, v).tolist()},
        },
        "scaler": scaler.to_json(),
        "architecture": architecture,
        "arch_name": config.get("arch", architecture),
        "members": [],
        "data": data,
        "hyperparameters": dict(config),
        "metrics": {},
        "versions": versions,
        "hardware": hardware,
        "citations": list(citations),
    }


def _member_tensors(state: dict, storage: str) -> dict:
    """Linear weights/biases in the storage dtype; BatchNorm statistics stay float32
    (a tiny variance would underflow in float16)."""
    import torch

    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            v = v.float() if (".bn." in k or storage == "float32") else v.to(torch.float16)
        out[k] = v
    return out


def write_member(path: Path, state: dict, storage: str) -> str:
    """One member's weights as safetensors, written atomically and flushed; returns its sha256."""
    from safetensors.torch import save_file

    from irscreen.atomic import fsync_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_member_tensors(state, storage), str(tmp))
    os.chmod(tmp, 0o644)  # bundles are read by every user of an installation
    fsync_file(tmp)
    tmp.replace(path)
    return sha256_file(path)


def add_member(bundle: Path, manifest: dict, state: dict, storage: str, info: dict) -> dict:
    """Write member ``len(manifest['members'])`` and commit the manifest that lists it.

    The member file is complete (and flushed) before the manifest names it; a kill between
    the two leaves a member file the manifest does not list, which loading refuses and
    ``--resume`` overwrites by training that member again."""
    bundle = Path(bundle)
    name = f"member-{len(manifest['members'])}.safetensors"
    write_member(bundle / name, state, storage)
    manifest["members"].append({"file": name, "sha256": sha256_file(bundle / name), **info})
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------- known phases

PHASES = "phases.parquet"


def write_phases(bundle: Path, manifest: dict, table, info: dict) -> dict:
    """The known phases (a pyarrow Table: formula, formation_energy_per_atom) as Parquet
    beside the members, then the manifest that lists the file with its sha256 (the file is
    complete and flushed before the manifest names it)."""
    import pyarrow.parquet as pq

    from irscreen.atomic import fsync_file

    path = Path(bundle) / PHASES
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    fsync_file(tmp)
    tmp.replace(path)
    manifest["phases"] = {"file": PHASES, "sha256": sha256_file(path), "rows": table.num_rows, **info}
    write_json_atomic(Path(bundle) / MANIFEST, manifest)
    return manifest


def verify_phases(bundle_dir: Path, manifest: dict) -> Path | None:
    """The bundle's phases file, checked against its sha256; None for a bundle without one."""
    entry = manifest.get("phases")
    if not entry:
        return None
    path = Path(bundle_dir) / entry.get("file", PHASES)
    if not path.is_file():
        raise IrscreenError(f"model bundle {bundle_dir}: {path.name} is missing")
    if sha256_file(path) != entry.get("sha256"):
        raise IrscreenError(
            f"model bundle {bundle_dir}: {path.name} does not match the sha256 in {MANIFEST} "
            "(the file was modified or truncated)"
        )
    return path


# --------------------------------------------------------------------------- the cascade's student

STUDENT = "student.safetensors"


def write_student(bundle: Path, manifest: dict, state: dict, info: dict) -> dict:
    """The distilled student's weights (float32) beside the members, then the manifest that
    lists it with its sha256 and ``info`` (architecture, disagreement bound, how it was made)."""
    path = Path(bundle) / STUDENT
    write_member(path, state, "float32")
    manifest["student"] = {"file": STUDENT, "sha256": sha256_file(path), **info}
    write_json_atomic(Path(bundle) / MANIFEST, manifest)
    return manifest


def verify_student(bundle_dir: Path, manifest: dict) -> Path | None:
    """The bundle's student file, checked against its sha256; None for a bundle without one."""
    entry = manifest.get("student")
    if not entry:
        return None
    path = Path(bundle_dir) / entry.get("file", STUDENT)
    if not path.is_file() or sha256_file(path) != entry.get("sha256"):
        raise IrscreenError(f"model bundle {bundle_dir}: {path.name} is missing or does not match the sha256 in "
                            f"{MANIFEST}; rebuild it with `irscreen distill {bundle_dir}`")
    return path
