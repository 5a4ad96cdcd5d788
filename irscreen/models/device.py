"""Which torch device a command runs on (shared by training and inference)."""
from __future__ import annotations

import torch

from irscreen.errors import IrscreenError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str) -> torch.device:
    """``auto`` is the GPU when PyTorch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise IrscreenError(f"unknown device {device!r} ({', '.join(DEVICES)})")
    if device == "cuda" and not torch.cuda.is_available():
        raise IrscreenError("--device cuda was requested but PyTorch sees no CUDA GPU")
    return torch.device(device)
