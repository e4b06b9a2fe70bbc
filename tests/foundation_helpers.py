"""A small MACE "foundation" the tests train themselves (no weights can be downloaded here): a tiny MACE fitted
to GFN2-xTB frames of methanol and ammonia (H, C, N, O), saved as a .model file; water is then fine-tuned from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from fhi_al.architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.references import compute_label, make_reference
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer

FOUNDATION_HYPERS = dict(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16],
                         MLP_irreps="8x0e")
FOUNDATION_EPOCHS = 20
FOUNDATION_ELEMENTS = {1, 6, 7, 8}


def xtb_labelled(name: str, count: int, *, seed: int, displacement_A: float = 0.08) -> list:
    """Randomly displaced copies of molecule `name` labelled with GFN2-xTB (raw calculator results)."""
    calc = make_reference(name="xtb")
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=displacement_A, size=atoms.positions.shape)
        energy, forces = compute_label(calc, atoms)
        atoms.info[REF_ENERGY_KEY], atoms.arrays[REF_FORCES_KEY] = energy, forces
        atoms.info["label_id"] = f"{name}-s{seed}-{index}"
        frames.append(atoms)
    return frames


def train_foundation(folder: Path) -> Path:
    """The tiny foundation's model file (trained on methanol and ammonia, never on water)."""
    train = xtb_labelled("CH3OH", 8, seed=1) + xtb_labelled("NH3", 6, seed=2)
    valid = xtb_labelled("CH3OH", 2, seed=3) + xtb_labelled("NH3", 2, seed=4)
    config = TrainingConfig(name_exp="foundation", hypers=MaceHypers(**FOUNDATION_HYPERS), batch_size=4,
                            scheduler="none", training_plots=False)
    trainer = Trainer(config, folder)
    member = trainer.create_member("foundation", 1, train, valid)
    trainer.train(member, FOUNDATION_EPOCHS, report=False)
    return trainer.export(member)


@pytest.fixture(scope="session")
def foundation_file(tmp_path_factory) -> Path:
    return train_foundation(tmp_path_factory.mktemp("foundation"))


@pytest.fixture(scope="session")
def water_data() -> tuple[list, list]:
    return xtb_labelled("H2O", 6, seed=7), xtb_labelled("H2O", 3, seed=8)
