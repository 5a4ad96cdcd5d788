"""irscreen: high-throughput screening of inorganic compositions with IRNet ensembles.

The public Python API is imported lazily so that ``import irscreen`` (and the
``featurize`` command) never pays for importing torch.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["featurize", "feature_labels", "load_model", "screen", "__version__"]


def __getattr__(name: str):
    if name in ("featurize", "feature_labels"):
        from irscreen import features

        return getattr(features, name)
    if name == "load_model":
        from irscreen.models.ensemble import load_model

        return load_model
    if name == "screen":
        from irscreen.screening import screen

        return screen
    raise AttributeError(f"module 'irscreen' has no attribute {name!r}")
