"""Composition features: preset registry and public API.

Two presets:

* ``magpie`` (default): the 145 Magpie descriptors (Ward et al. 2016) exactly as
  matminer's ``MultipleFeaturizer([Stoichiometry(), ElementProperty.from_preset("magpie"),
  ValenceOrbital(props=["frac"]), IonProperty(fast=True)])`` computes them, from a
  vectorized engine (:mod:`irscreen.features.magpie`); ``engine="matminer"`` runs
  matminer itself instead (:mod:`irscreen.features.reference`).
* ``fractions``: ElemNet-style atomic fractions of H..Pu (:mod:`irscreen.features.fractions`).
* ``magpie-fractions``: both, concatenated (145 + 94 = 239 columns). The descriptors
  summarize the chemistry; the fractions say exactly which elements are there. Together
  they predict better than either alone (docs/models.md).

This package never imports torch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from irscreen.composition import FormulaError, ParsedBatch, parse_batch, parse_formula
from irscreen.features import fractions as _fractions
from irscreen.features import magpie as _magpie

__all__ = [
    "PROBE_FORMULAS",
    "PRESETS",
    "DEFAULT_PRESET",
    "Preset",
    "feature_labels",
    "featurize",
    "featurize_parsed",
    "get_preset",
    "element_data_fingerprint",
    "nonfinite_errors",
    "probe_features",
]

WARD_2016 = (
    "L. Ward, A. Agrawal, A. Choudhary, C. Wolverton, A general-purpose machine learning "
    "framework for predicting properties of inorganic materials, npj Comput. Mater. 2, "
    "16028 (2016). doi:10.1038/npjcompumats.2016.28"
)
WARD_2018 = (
    "L. Ward et al., Matminer: An open source toolkit for materials data mining, "
    "Comput. Mater. Sci. 152, 60-69 (2018). doi:10.1016/j.commatsci.2018.05.018"
)
JHA_2018 = (
    "D. Jha, L. Ward, A. Paul, W. Liao, A. Choudhary, C. Wolverton, A. Agrawal, ElemNet: "
    "Deep learning the chemistry of materials from only elemental composition, Sci. Rep. "
    "8, 17593 (2018). doi:10.1038/s41598-018-35934-y"
)


@dataclass(frozen=True)
class Preset:
    """A feature set: its column labels, how to compute it, and what to cite."""

    name: str
    labels: list[str]
    compute: Callable[[ParsedBatch], np.ndarray]
    citations: list[str] = field(default_factory=list)
    description: str = ""
    #: Columns allowed to be missing (NaN) in a usable row. Every other non-finite value
    #: makes the row a reject that names the feature: a model never sees a silently filled
    #: value. Magpie needs none: matminer's imputation of missing element data is part of
    #: the feature definition, and it leaves every covered element's row finite.
    missing_ok: frozenset = frozenset()
    #: The same features feature-major, (F, n) in a dtype, where the engine has that
    #: layout natively (Parquet's layout: no transpose); else derived from ``compute``.
    compute_columns: Callable[[ParsedBatch, Any], np.ndarray] | None = None

    @property
    def labels_hash(self) -> str:
        """sha256 (hex) of the labels joined by newlines: identifies the column layout."""
        return hashlib.sha256("\n".join(self.labels).encode("utf-8")).hexdigest()

    @property
    def n_features(self) -> int:
        return len(self.labels)


DEFAULT_PRESET = "magpie"

PRESETS: dict[str, Preset] = {
    "magpie": Preset(
        name="magpie",
        labels=list(_magpie.LABELS),
        compute=_magpie.featurize_batch,
        compute_columns=_magpie.featurize_columns,
        citations=[WARD_2016, WARD_2018],
        description="145 Magpie descriptors (matminer Stoichiometry, ElementProperty magpie, "
        "ValenceOrbital frac, IonProperty fast)",
    ),
    "fractions": Preset(
        name="fractions",
        labels=list(_fractions.LABELS),
        compute=_fractions.featurize_batch,
        citations=[JHA_2018],
        description="ElemNet-style atomic fractions of the elements H..Pu",
    ),
}



def _magpie_fractions_columns(batch: ParsedBatch, dtype=np.float64) -> np.ndarray:
    frac = np.ascontiguousarray(_fractions.featurize_batch(batch).T, dtype=dtype)
    out = np.concatenate([_magpie.featurize_columns(batch, dtype), frac], axis=0)
    out[:, np.isnan(frac[-1])] = np.nan  # no fraction column for an element: the row cannot be represented
    return out


PRESETS["magpie-fractions"] = Preset(
    name="magpie-fractions",
    labels=list(_magpie.LABELS) + list(_fractions.LABELS),
    compute=lambda batch: _magpie_fractions_columns(batch).T,
    compute_columns=_magpie_fractions_columns,
    citations=[WARD_2016, WARD_2018, JHA_2018],
    description="the 145 Magpie descriptors followed by the 94 element fractions H..Pu",
)

_ENGINES = ("fast", "matminer")
_ERRORS = ("raise", "coerce")


def get_preset(preset: str | Preset = DEFAULT_PRESET) -> Preset:
    """The Preset named ``preset`` (a Preset passes through); ValueError if unknown."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown feature preset {preset!r}; available: {', '.join(PRESETS)}"
        ) from None


def nonfinite_errors(XT: np.ndarray, preset: str | Preset, formulas, errors: list) -> list:
    """``errors`` with a reason added for every row that parsed but has a non-finite
    feature outside the preset's ``missing_ok`` columns. XT is feature-major (F, n)."""
    spec = get_preset(preset)
    if XT.size == 0:
        return errors
    finite = np.isfinite(XT)
    if spec.missing_ok:
        finite[[i for i, label in enumerate(spec.labels) if label in spec.missing_ok]] = True
    bad_rows = np.flatnonzero(~finite.all(axis=0))
    if len(bad_rows) == 0:
        return errors
    errors = list(errors)
    for i in bad_rows:
        if errors[i] is not None:
            continue
        bad = np.flatnonzero(~finite[:, i])
        text = formulas[int(i)]
        text = text.as_py() if hasattr(text, "as_py") else text
        if len(bad) == spec.n_features:
            what = "no finite feature (an element it does not cover)"
        else:
            what = f"feature {spec.labels[bad[0]]!r} is {XT[bad[0], i]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        errors[i] = f"cannot featurize {text!r} with preset {spec.name!r}: {what}"
    return errors


#: Formulas whose features a bundle records, so that loading it under other element data
#: can tell whether the features would change (one per common kind of chemistry, plus
#: elements whose data are often imputed or revised).
PROBE_FORMULAS = (
    "Fe2O3", "NaCl", "Li3FeO4", "Ba0.5Sr0.5TiO3", "Si", "GaAs", "CsPbI3", "MgB2", "Al2O3", "TiO2",
    "LiCoO2", "CuInSe2", "Bi2Te3", "ZrNiSn", "Nd2Fe14B", "H2O", "CH4", "NaN", "UO2", "PuO2", "Xe",
    "KrF2", "HfC", "Mo6S8", "La2CuO4", "Y3Al5O12", "Pt3Ti", "AuCu3", "Ac2O3", "Tc2O7",
)


def probe_features(preset: str | Preset, formulas=PROBE_FORMULAS) -> np.ndarray:
    """Features of the probe formulas, float64 (n, F)."""
    return get_preset(preset).compute(parse_batch(list(formulas))).astype(np.float64)


def element_data_fingerprint() -> dict:
    """sha256 of the element tables every preset is computed from (Magpie properties,
    pymatgen electronegativities and common oxidation states), with the versions of
    matminer and pymatgen they were read from."""
    from importlib.metadata import version

    from irscreen.features import elemdata

    h = hashlib.sha256()
    states, counts = elemdata.common_oxidation_states()
    for table in (elemdata.magpie_table(), elemdata.pymatgen_electronegativity(), states, counts):
        arr = np.ascontiguousarray(table)
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return {"sha256": h.hexdigest(), "matminer": version("matminer"), "pymatgen": version("pymatgen")}


def feature_labels(preset: str = DEFAULT_PRESET) -> list[str]:
    """Column labels of ``preset``, in order (a new list)."""
    return list(get_preset(preset).labels)


def featurize_parsed(batch: ParsedBatch, preset: str = DEFAULT_PRESET) -> np.ndarray:
    """Features of already-parsed formulas: float64 (n, F); rows with errors are NaN."""
    return get_preset(preset).compute(batch)


def featurize_parsed_columns(batch: ParsedBatch, preset: str = DEFAULT_PRESET, dtype=np.float32) -> np.ndarray:
    """Features feature-major, (F, n) in ``dtype``: the layout of Parquet columns."""
    spec = get_preset(preset)
    if spec.compute_columns is not None:
        return spec.compute_columns(batch, dtype)
    return np.ascontiguousarray(spec.compute(batch).T, dtype=dtype)


def _item(formulas: Any, i: int) -> Any:
    if hasattr(formulas, "iloc"):  # pandas
        return formulas.iloc[i]
    value = formulas[i]
    return value.as_py() if hasattr(value, "as_py") else value  # pyarrow scalar


def _raise_first_error(formulas: Any, errors: list[str | None]) -> None:
    for i, message in enumerate(errors):
        if message is None:
            continue
        value = _item(formulas, i)
        parse_formula(value)  # raises the FormulaError naming the formula
        # parse_batch and parse_formula disagree (should not happen): still raise.
        reason = message.split(": ", 1)[1] if ": " in message else message
        raise FormulaError(value, reason)


def featurize(
    formulas: Any,
    preset: str = DEFAULT_PRESET,
    engine: str = "fast",
    errors: str = "raise",
    *,
    n_jobs: int = 1,
):
    """Featurize formulas into a pandas DataFrame (columns = labels, index = range(n)).

    ``formulas``: a sequence of formula strings (list, numpy array, pandas/polars
    Series, pyarrow array) or one string.  ``engine``: "fast" (vectorized) or
    "matminer" (matminer itself, magpie preset only; ``n_jobs`` worker processes).
    ``errors``: "raise" raises :class:`~irscreen.composition.FormulaError` for the
    first formula that does not parse; "coerce" gives that row NaN in every column.
    """
    import pandas as pd

    spec = get_preset(preset)
    if engine not in _ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(_ENGINES)}")
    if errors not in _ERRORS:
        raise ValueError(f"errors must be one of {', '.join(_ERRORS)}, got {errors!r}")
    if isinstance(formulas, str):
        formulas = [formulas]
    if not hasattr(formulas, "__len__") or not hasattr(formulas, "__getitem__"):
        formulas = list(formulas)
    batch = parse_batch(formulas)
    if errors == "raise":
        _raise_first_error(formulas, batch.errors)
    if engine == "matminer":
        if spec.name != "magpie":
            raise ValueError(f"engine 'matminer' supports only the magpie preset, not {spec.name!r}")
        from irscreen.features.reference import featurize_matminer

        values = [_item(formulas, i) for i in range(batch.n_rows)]
        data = featurize_matminer(values, n_jobs=n_jobs)
    else:
        data = spec.compute(batch)
    return pd.DataFrame(data, columns=list(spec.labels), index=pd.RangeIndex(batch.n_rows))
