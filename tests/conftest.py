"""Shared fixtures: tiny molecules, tiny hyperparameters, a temporary run folder and seeded RNGs."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import mace  # noqa: E402,F401  - mace before anything that imports e3nn
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def water() -> Atoms:
    return molecule("H2O")


@pytest.fixture
def ethanol() -> Atoms:
    return molecule("CH3CH2OH")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """An empty run folder that is also the working directory."""
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
