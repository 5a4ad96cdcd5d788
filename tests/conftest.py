"""Shared fixtures.

Tests that need the real training data find it at ../shared/data (beside the clone,
as CI has it). On a user's machine without it they skip and say why; under CI=true
its absence is a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("IRSCREEN_DATA", ROOT.parent / "shared" / "data"))


def _require_data(name: str) -> Path:
    path = DATA_DIR / name
    if path.exists():
        return path
    msg = f"training data {path} not found (tests that need ../shared/data run in CI, beside the clone)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " -- CI=true, so this is a failure, not a skip")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data():
    """Callable: shared_data('oqmd_dhf.parquet') -> Path, skipping/failing when absent."""
    return _require_data


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids OpenMP
    spin-waiting against other processes (10x slower steps when the CPU is busy)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
