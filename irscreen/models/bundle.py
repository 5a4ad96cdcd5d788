"""Model bundles: the only way irscreen saves or loads weights.

A bundle is a directory::

    manifest.json          what the model is, how it was trained, how to feed it
    member-0.safetensors   one file per ensemble member (training form, BatchNorm unfolded)
    member-1.safetensors
    README.md              the model card
    learning_curve.png, parity.png

Loading verifies every member's sha256 and the feature labels' hash against the
installed feature engine, and refuses a mismatch with one clear message. Weights are
read with safetensors and the rest with JSON: never pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from irscreen.errors import IrscreenError

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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def shipped_root() -> Path:
    """Where the shipped bundles are installed (the top-level weights/ of the repo)."""
    return Path(str(resources.files("irscreen.weights")))


def shipped_names() -> list[str]:
    root = shipped_root()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A shipped bundle's name (its directory name) or a path to a bundle directory."""
    text = str(name_or_dir)
    if text in shipped_names():
        return shipped_root() / text
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


def check_features(bundle_dir: Path, manifest: dict) -> None:
    """Refuse a bundle whose feature labels differ from what this irscreen computes."""
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
