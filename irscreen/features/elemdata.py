"""Element property tables, read once from the installed matminer and pymatgen.

Nothing here is copied into the repository: the Magpie tables are read from matminer's
own data files and the electronegativities and oxidation states from pymatgen's
``Element``, the first time each table is asked for (then cached).  Every table is a
numpy array indexed by atomic number Z = 0..118; row 0 (padding) is NaN.

How matminer 0.10 fills gaps, reproduced here exactly:

* ``MagpieData`` reads line Z of ``magpie_elementdata/<Property>.table`` with
  ``float()``; a line that does not parse ("Missing") or does not exist (most tables
  stop at Z = 112) is NaN.  With ``impute_nan=True`` (the default in 0.10, used by
  ``ElementProperty.from_preset("magpie")`` and ``ValenceOrbital``) every NaN is then
  replaced by the ``np.nanmean`` of that property over Z = 1..118.  The tables stop at
  Z = 112, so for Nh..Og even "Number" is imputed (56.5, not 113..118), and every
  property of those elements is the average element's.
* ``PymatgenData.get_elemental_property(el, "X")`` (``IonProperty``) returns
  ``Element.X`` when it is truthy and not NaN, otherwise the ``np.nanmean`` of ``X``
  over all pymatgen elements (noble gases He/Ne/Ar and Z >= 104 get it).
* ``PymatgenData.get_oxidation_states`` returns ``Element.common_oxidation_states``
  with no imputation: elements without common states (He, Ne, Ar, Rn, Db..Og) have
  none, so no charge-balanced combination including them exists.
"""
from __future__ import annotations

import math
import warnings
from functools import cache
from importlib.resources import files

import numpy as np

__all__ = [
    "MAX_Z",
    "MAGPIE_PROPERTIES",
    "magpie_table",
    "magpie_property",
    "pymatgen_electronegativity",
    "common_oxidation_states",
]

MAX_Z = 118

# The 22 properties of matminer's ElementProperty.from_preset("magpie"), in its order.
MAGPIE_PROPERTIES: tuple[str, ...] = (
    "Number",
    "MendeleevNumber",
    "AtomicWeight",
    "MeltingT",
    "Column",
    "Row",
    "CovalentRadius",
    "Electronegativity",
    "NsValence",
    "NpValence",
    "NdValence",
    "NfValence",
    "NValence",
    "NsUnfilled",
    "NpUnfilled",
    "NdUnfilled",
    "NfUnfilled",
    "NUnfilled",
    "GSvolume_pa",
    "GSbandgap",
    "GSmagmom",
    "SpaceGroupNumber",
)


def _magpie_dir():
    return files("matminer.utils") / "data_files" / "magpie_elementdata"


def _read_magpie_raw(name: str) -> np.ndarray:
    """One Magpie table as matminer reads it, before imputation: (119,), NaN gaps."""
    path = _magpie_dir() / f"{name}.table"
    with path.open("r") as fh:  # text mode: universal newlines, as matminer
        lines = fh.readlines()
    values = np.full(MAX_Z + 1, np.nan)
    for z in range(1, MAX_Z + 1):
        try:
            values[z] = float(lines[z - 1])
        except (ValueError, IndexError):
            pass
    return values


@cache
def magpie_property(name: str) -> np.ndarray:
    """Imputed Magpie property ``name`` as matminer's MagpieData(impute_nan=True) has it.

    Returns a read-only (119,) float64 array; entry 0 is NaN.
    """
    values = _read_magpie_raw(name)
    # matminer: np.nanmean(list(dict_by_symbol.values())) over Z = 1..118, in Z order.
    fill = np.nanmean(list(values[1:]))
    real = values[1:]
    real[np.isnan(real)] = fill
    values.setflags(write=False)
    return values


@cache
def magpie_table() -> np.ndarray:
    """(119, 22) float64, columns in MAGPIE_PROPERTIES order, row 0 NaN; read-only."""
    table = np.column_stack([magpie_property(p) for p in MAGPIE_PROPERTIES])
    table = np.ascontiguousarray(table)
    table.setflags(write=False)
    return table


def _elements():
    from pymatgen.core.periodic_table import Element

    return Element


@cache
def pymatgen_electronegativity() -> np.ndarray:
    """Pauling electronegativity as matminer's PymatgenData(impute_nan=True) gives "X".

    (119,) float64, entry 0 NaN; read-only.
    """
    Element = _elements()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without X
        raw = {el.Z: el.X for el in Element}
    # PymatgenData imputes with the nanmean over all pymatgen elements, falsy -> NaN.
    fill = np.nanmean([v if v else float("nan") for v in raw.values()])
    out = np.full(MAX_Z + 1, np.nan)
    for z in range(1, MAX_Z + 1):
        v = raw.get(z)
        out[z] = v if (v and not math.isnan(v)) else fill
    out.setflags(write=False)
    return out


@cache
def common_oxidation_states() -> tuple[np.ndarray, np.ndarray]:
    """pymatgen's ``Element.common_oxidation_states``, as padded arrays.

    Returns ``(states, counts)``: states (119, s_max) float64 with NaN padding, counts
    (119,) int64.  Row 0 (padding column of a formula) holds the single state 0, so a
    padding column contributes nothing to a charge sum; both arrays are read-only.
    """
    Element = _elements()
    by_z = {el.Z: tuple(el.common_oxidation_states) for el in Element}
    s_max = max(max((len(s) for s in by_z.values()), default=1), 1)
    states = np.full((MAX_Z + 1, s_max), np.nan)
    counts = np.zeros(MAX_Z + 1, dtype=np.int64)
    states[0, 0] = 0.0
    counts[0] = 1
    for z in range(1, MAX_Z + 1):
        s = by_z.get(z, ())
        states[z, : len(s)] = s
        counts[z] = len(s)
    states.setflags(write=False)
    counts.setflags(write=False)
    return states, counts
