"""The shipped bundles: which data, which split, which recipe, what to cite.

Every bundle in ``weights/`` is built by ``irscreen build NAME`` from the training data
in ``../shared/data`` (the CrabNet benchmark sets), so anyone with a clone and the data
reproduces it: the command goes into the manifest and the model card. Building is
resumable member by member (``--resume``), like ``irscreen train``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from irscreen.errors import IrscreenError

IRNET = ("D. Jha, V. Gupta, L. Ward, Z. Yang, C. Wolverton, I. Foster, W. Liao, A. Choudhary, A. Agrawal, "
         "Enabling deeper learning on big data for materials informatics applications, Sci. Rep. 11, 4244 (2021) [IRNet]")
CRABNET = ("A. Y.-T. Wang, S. K. Kauwe, R. J. Murdock, T. D. Sparks, Compositionally restricted attention-based network "
           "for materials property predictions, npj Comput. Mater. 7, 77 (2021) [benchmark splits]")
OQMD = [
    "J. E. Saal, S. Kirklin, M. Aykol, B. Meredig, C. Wolverton, Materials design and discovery with high-throughput "
    "density functional theory: the Open Quantum Materials Database (OQMD), JOM 65, 1501 (2013)",
    "S. Kirklin et al., The Open Quantum Materials Database (OQMD): assessing the accuracy of DFT formation "
    "energies, npj Comput. Mater. 1, 15010 (2015)",
]
MP = ["A. Jain et al., Commentary: The Materials Project: A materials genome approach to accelerating materials "
      "innovation, APL Mater. 1, 011002 (2013)"]
BARTEL = ("C. J. Bartel, A. Trewartha, Q. Wang, A. Dunn, A. Jain, G. Ceder, A critical examination of compound "
          "stability predictions from machine-learned formation energies, npj Comput. Mater. 6, 97 (2020)")


@dataclass(frozen=True)
class Recipe:
    """How one shipped bundle is made."""

    name: str
    data_file: str  # in the data directory
    target: str  # the property's name in predictions and the model card
    units: str
    description: str
    source: str
    license: str
    citations: list[str]
    split_column: str | None = None  # None: seeded random 9:1 split (seed 0)
    preset: str = "magpie-fractions"
    train: dict = field(default_factory=dict)  # TrainConfig fields
    #: Published test MAEs on the held-back test split of this benchmark set (CrabNet paper, Table 2).
    published: dict = field(default_factory=dict)
    #: The property's physical lower bound (a band gap is >= 0): the prediction is clipped to it,
    #: and the bundle's manifest and model card say so.
    output_min: float | None = None

    def command(self, data_dir: str = "../shared/data") -> str:
        """The shell command that builds this bundle from a clone's root."""
        return f"irscreen build {self.name} --data-dir {data_dir} -o weights/{self.name}"


_COMMON = dict(arch="irnet17", epochs=100, batch_size=512, lr=1e-3, ensemble=3)
_TABLE2 = "Wang et al., npj Comput. Mater. 7, 77 (2021), Table 2: test MAE on the held-back split"


def _published(roost, crabnet, hotcrab, elemnet, rf, note=""):
    return {"source": _TABLE2 + (f" ({note})" if note else ""),
            "mae": {"Roost": roost, "CrabNet": crabnet, "HotCrab": hotcrab, "ElemNet": elemnet, "RF (Magpie)": rf}}


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        name="formation-enthalpy", data_file="oqmd_dhf.parquet", target="formation_enthalpy", units="eV/atom",
        description="DFT formation enthalpy (OQMD)",
        source="OQMD formation enthalpies via the CrabNet benchmark set OQMD_Formation_Enthalpy (its validation "
               "split and 90% of its test split; the rest of the test split is held back for judging)",
        license="CC BY 4.0 (OQMD)", citations=[IRNET, *OQMD, CRABNET], train=dict(_COMMON),
        published=_published(0.032, 0.031, 0.031, 0.049, 0.083, "models trained on ~240k rows; 87,681 here"),
    ),
    Recipe(
        name="formation-energy-mp", data_file="bartel_ef.parquet", target="formation_energy", units="eV/atom",
        description="DFT formation energy (Materials Project, Bartel et al. set)",
        source="Materials Project formation energies of the Bartel et al. (2020) critical-examination set, via "
               "the CrabNet benchmark set CritExam__Ef (source train/val split)",
        license="CC BY 4.0 (Materials Project)", citations=[IRNET, *MP, BARTEL, CRABNET], split_column="split",
        train=dict(_COMMON), published=_published(0.055, 0.059, 0.059, 0.071, 0.100),
    ),
    Recipe(
        name="e-above-hull", data_file="mp_ehull.parquet", target="e_above_hull", units="eV/atom",
        description="DFT energy above the convex hull (Materials Project)",
        source="Materials Project energies above the hull via the CrabNet benchmark set mp_e_hull "
               "(source train/val split)",
        license="CC BY 4.0 (Materials Project)", citations=[IRNET, *MP, CRABNET], split_column="split",
        train=dict(_COMMON), published=_published(0.094, 0.089, 0.092, 0.110, 0.126),
    ),
    Recipe(
        name="band-gap", data_file="oqmd_gap.parquet", target="band_gap", units="eV",
        description="DFT band gap (OQMD)",
        source="OQMD band gaps via the CrabNet benchmark set OQMD_Bandgap (source train/val split)",
        license="CC BY 4.0 (OQMD)", citations=[IRNET, *OQMD, CRABNET], split_column="split",
        train=dict(_COMMON, epochs=40), published=_published(0.088, 0.049, 0.048, 0.148, 0.060), output_min=0.0,
    ),
]}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise IrscreenError(f"no recipe for {name!r}; shipped bundles: {', '.join(RECIPES)}") from None


def load_recipe_data(recipe: Recipe, data_dir: str | Path = "../shared/data", *, jobs: int = 1, console=None):
    """The recipe's training data, featurized and split (:class:`irscreen.data.TrainingData`)."""
    from irscreen.data import load_training_data

    path = Path(data_dir) / recipe.data_file
    if not path.is_file():
        raise IrscreenError(f"{path}: no such file (the training data of {recipe.name!r}; pass --data-dir)")
    return load_training_data(path, "target", preset=recipe.preset, jobs=jobs, split_column=recipe.split_column,
                              console=console)


def build(name: str, data_dir: str | Path = "../shared/data", output: str | Path | None = None, *,
          resume: bool = False, jobs: int = 1, overrides: dict | None = None, td=None, console=None,
          on_epoch=None, members: int | None = None, checkpoint_dir=None) -> dict:
    """Train the shipped bundle ``name`` into ``output`` (default ``build/NAME``); returns its manifest.

    ``overrides`` changes TrainConfig fields (for tests and quick trials); the manifest
    records the build command only when there are none, so it never claims a recipe it
    did not run. ``td``: the recipe's data, already loaded. ``members``: build only the first
    N members of the ensemble now (a usable smaller ensemble; ``resume`` adds the rest)."""
    from irscreen.config import TrainConfig
    from irscreen.train import train_bundle

    recipe = get_recipe(name)
    cfg = TrainConfig(**{**recipe.train, **(overrides or {})})
    cfg.validate()
    td = td or load_recipe_data(recipe, data_dir, jobs=jobs, console=console)
    command = None if overrides else recipe.command()
    return train_bundle(td, cfg, Path(output or Path("build") / name), name=name, units=recipe.units,
                        description=recipe.description, target_name=recipe.target, resume=resume,
                        data_info={"source": recipe.source, "license": recipe.license, "published": recipe.published},
                        citations=recipe.citations, command=command, output_min=recipe.output_min,
                        on_epoch=on_epoch, members=members, checkpoint_dir=checkpoint_dir)
