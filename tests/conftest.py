"""Shared fixtures: the real-data folder, seeded RNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real-data folder ``../shared/data`` beside the repository; skips when absent."""
    if not (SHARED_DATA / "tcga_lgg" / "clinical.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}; it ships beside the repository as ../shared/data")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
