"""Shared fixtures: where the real data lives (CI sets HYBRID_DATA_ROOT to ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("HYBRID_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.fail(
            f"real MedMNIST data not found under {root}; set HYBRID_DATA_ROOT to the folder "
            "holding pneumoniamnist.npz (CI uses ../shared/data)"
        )
    return root
