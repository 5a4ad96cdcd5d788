"""A loaded model bundle: an ensemble of IRNet members ready for inference.

    >>> import irscreen
    >>> model = irscreen.load_model("formation-enthalpy")
    >>> model.predict(["Li3FeO4", "Ba0.5Sr0.5TiO3"])   # DataFrame: prediction, uncertainty

``prediction`` is the ensemble mean and ``uncertainty`` a standard deviation of its error:
the ensemble spread (population std, ddof=0) mapped through the bundle's calibration
(:mod:`irscreen.models.calibration`; the raw spread for bundles without one), both in the
bundle's target units. ``extrapolation`` is true for a row holding an element seen in
fewer than ``min_count`` (20) training compositions of the bundle. ``phases`` are the
known phases a formation-energy bundle carries (:mod:`irscreen.phases`), None otherwise.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from irscreen.config import DEFAULT_PRECISION
from irscreen.errors import IrscreenError
from irscreen.models import bundle as _bundle
from irscreen.models.calibration import calibrated_sigma
from irscreen.models.irnet import FoldedEnsemble, Net, fold, parse_arch
from irscreen.models.scaler import Scaler

#: Rows per inference call: measured fastest on a 2-core AVX-512 CPU (activations stay in cache;
#: docs/benchmarks.md), and large enough to keep a GPU busy with several members.
INFER_BATCH = {"cpu": 512, "cuda": 8192}


class Model:
    def __init__(self, path: Path, manifest: dict, nets: list[Net], phases_file: Path | None = None,
                 student_file: Path | None = None):
        self.path = Path(path)
        self.phases_file = phases_file
        self.student_file = student_file
        self.manifest = manifest
        self.nets = nets
        self.scaler = Scaler.from_json(manifest["scaler"])
        self.preset = manifest["features"]["preset"]
        self._folded = [fold(n) for n in nets]
        self._engines: dict = {}
        self.calibration = manifest.get("calibration")
        self.output_min = manifest.get("output_min")
        self._rare = _rare_elements(manifest.get("elements"))

    # -- description ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def target(self) -> str:
        return self.manifest.get("target", "target")

    @property
    def units(self) -> str:
        return self.manifest.get("units", "")

    @property
    def n_members(self) -> int:
        return len(self.nets)

    @cached_property
    def phases(self):
        """The bundle's known phases (:class:`irscreen.phases.KnownPhases`), read on first
        use (its sha256 was checked at load); None for a bundle without them."""
        if self.phases_file is None:
            return None
        from irscreen.phases import read_bundle_phases

        return read_bundle_phases(self.phases_file)

    @cached_property
    def student(self):
        """The distilled student screen's cascade runs first
        (:class:`irscreen.models.student.Student`); None for a bundle without one."""
        if self.student_file is None:
            return None
        from irscreen.models.student import Student

        info = self.manifest["student"]
        net = Net(self.manifest["features"]["n_features"], parse_arch(info["architecture"]))
        net.load_state_dict(load_file(str(self.student_file)), strict=True)
        return Student(net.eval(), self.scaler, info, self.output_min)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, target={self.target!r}, members={self.n_members}, arch={self.manifest['architecture']!r})"

    # -- inference -------------------------------------------------------------------
    def engine(self, precision: str = "fp32", device: str = "cpu") -> FoldedEnsemble:
        key = (precision, device)
        if key not in self._engines:
            self._engines[key] = FoldedEnsemble(self._folded, precision=precision, device=device)
        return self._engines[key]

    def predict_members(self, X: np.ndarray, precision: str = "fp32", device: str = "cpu",
                        batch: int | None = None) -> np.ndarray:
        """Raw features (n, F) -> per-member predictions (members, n) float32, target units.

        Rows are computed independently of one another: a row's prediction does not
        depend on which other rows share its call (tests check predict == screen)."""
        eng = self.engine(precision, device)
        batch = batch or INFER_BATCH.get(device, 512)
        Z = np.ascontiguousarray(self.scaler.transform(X))  # row slices must be contiguous for the GEMMs
        out = np.empty((self.n_members, len(Z)), dtype=np.float32)
        for i in range(0, len(Z), batch):
            z = Z[i : i + batch]
            n = len(z)
            if n < batch:
                # every call has the same GEMM shape: BLAS picks kernels (and summation order)
                # by shape, so a row's prediction must not depend on how many rows share its call
                z = np.concatenate([z, np.zeros((batch - n, z.shape[1]), z.dtype)])
            y = eng(torch.from_numpy(z))
            out[:, i : i + n] = y[:, :n].cpu().numpy()
        return out * np.float32(self.scaler.y_std) + np.float32(self.scaler.y_mean)

    def uncertainty(self, P: np.ndarray) -> np.ndarray:
        """Calibrated sigma from per-member predictions (members, n)."""
        return calibrated_sigma(P.std(0), self.calibration)

    def extrapolation(self, elements: np.ndarray) -> np.ndarray:
        """Per row of atomic numbers (n, k; 0 = padding): does it hold a rare element?
        Bundles without element counts flag nothing."""
        if self._rare is None:
            return np.zeros(len(elements), dtype=bool)
        return self._rare[np.asarray(elements, dtype=np.intp)].any(axis=1)

    def outputs(self, P: np.ndarray, elements: np.ndarray | None = None, members: bool = False) -> dict[str, np.ndarray]:
        """The prediction columns of ``predict``/``screen`` from per-member predictions."""
        mean = P.mean(0)
        if self.output_min is not None:  # a physical bound (band gap >= 0), stated in the model card
            mean = np.maximum(mean, np.float32(self.output_min))
        out = {"prediction": mean, "uncertainty": self.uncertainty(P)}
        if elements is not None:
            out["extrapolation"] = self.extrapolation(elements)
        if members:
            for k in range(len(P)):
                out[f"member_{k}"] = P[k]
        return out

    def predict(self, formulas, members: bool = False, precision: str = DEFAULT_PRECISION, device: str = "cpu"):
        """Formulas -> pandas DataFrame (formula, prediction, uncertainty[, member_k]).

        Invalid formulas raise :class:`irscreen.composition.FormulaError`; use the CLI
        (or :func:`irscreen.screening.predict_file`) for files with row-level rejects."""
        import pandas as pd

        from irscreen.composition import parse_batch
        from irscreen.features import featurize

        formulas = [formulas] if isinstance(formulas, str) else list(formulas)
        X = featurize(formulas, self.preset).to_numpy(dtype=np.float32)  # FormulaError on a bad formula
        cols = self.outputs(self.predict_members(X, precision, device), parse_batch(formulas).elements, members)
        return pd.DataFrame({"formula": formulas, **cols})


def _rare_elements(info: dict | None) -> np.ndarray | None:
    """Boolean table over atomic numbers: True where the bundle saw the element in fewer
    than ``min_count`` training compositions (index 0, the padding, is False)."""
    if not info:
        return None
    from irscreen.composition import SYMBOLS

    counts = info.get("counts", {})
    rare = np.array([counts.get(sym, 0) < info.get("min_count", 20) for sym in SYMBOLS], dtype=bool)
    rare[0] = False
    return rare


def load_model(name_or_dir: str | Path = "formation-enthalpy") -> Model:
    """Load a shipped bundle by name, or a bundle directory; verify hashes and features."""
    path = _bundle.resolve(name_or_dir)
    manifest = _bundle.read_manifest(path)
    _bundle.check_features(path, manifest)
    files = _bundle.verify_members(path, manifest)
    phases_file = _bundle.verify_phases(path, manifest)
    student_file = _bundle.verify_student(path, manifest)
    arch = parse_arch(manifest["architecture"])
    n_features = manifest["features"]["n_features"]
    nets = []
    for f in files:
        net = Net(n_features, arch)
        try:
            state = load_file(str(f))
            net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in state.items()}, strict=True)
        except (RuntimeError, KeyError) as e:
            raise IrscreenError(f"model bundle {path}: {f.name} does not fit architecture {arch.spec!r} ({str(e).splitlines()[0]})") from None
        net.eval()
        nets.append(net)
    return Model(path, manifest, nets, phases_file, student_file)
