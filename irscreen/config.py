"""Defaults stated once: training hyperparameters and the inference defaults. The CLI,
the Python API and the library read them from here.

Torch-free, so ``irscreen --help`` and ``featurize`` stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from irscreen.errors import IrscreenError

#: The model ``predict`` and ``screen`` use when none is named.
DEFAULT_MODEL = "formation-enthalpy"
#: Inference precision: the hidden layers in bf16 (GEMMs and residual stream), the output
#: layer fp32. It moves validation MAE by well under 1% and runs ~2x faster than "mixed" on
#: CPUs with AMX (docs/benchmarks.md, "Inference").
DEFAULT_PRECISION = "bf16"


@dataclass
class TrainConfig:
    """Hyperparameters. Defaults are the fastest-to-accurate recipe measured on a
    2-core AVX-512-BF16 CPU (docs/benchmarks.md); the paper's recipe is
    ``optimizer='adam', lr=1e-4, batch_size=32, schedule='constant', precision='fp32'``."""

    arch: str = "irnet17"
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    schedule: str = "onecycle"  # onecycle | constant
    optimizer: str = "adamw"  # adamw | adam
    weight_decay: float = 1e-4
    patience: int = 30  # epochs without val improvement before stopping; 0 = never stop early
    precision: str = "bf16"  # bf16 | fp32
    device: str = "auto"
    seed: int = 0
    ensemble: int = 1
    storage: str = "float16"  # dtype of Linear weights in the bundle: float16 | float32

    def validate(self) -> None:
        from irscreen.models.irnet import parse_arch

        parse_arch(self.arch)
        if self.schedule not in ("onecycle", "constant"):
            raise IrscreenError(f"unknown schedule {self.schedule!r} (onecycle, constant)")
        if self.optimizer not in ("adamw", "adam"):
            raise IrscreenError(f"unknown optimizer {self.optimizer!r} (adamw, adam)")
        if self.precision not in ("bf16", "fp32"):
            raise IrscreenError(f"unknown precision {self.precision!r} (bf16, fp32)")
        if self.storage not in ("float16", "float32"):
            raise IrscreenError(f"unknown storage dtype {self.storage!r} (float16, float32)")
        for name in ("epochs", "batch_size", "ensemble"):
            if getattr(self, name) < 1:
                raise IrscreenError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0:
            raise IrscreenError("--lr must be > 0")
        if self.patience < 0:
            raise IrscreenError("--patience must be >= 0")



TRAIN_DEFAULTS = TrainConfig()
