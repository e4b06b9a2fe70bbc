"""End-to-end FHI_AL (initial dataset, then active learning) on water with GFN2-xTB for an ensemble of two
members of each non-MACE architecture, with tiny hyperparameters: the run finishes, AL adds labels, models load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase.io import read

from fhi_al.procedures.common import member_specs
from workflow import make_run_folder, run_cli

ENSEMBLE_SIZE = 2
MAX_INITIAL_EPOCHS = 4  # TINY_AL
TINY_HYPERS = {
    "aenet": dict(rad_order=6, rad_cutoff=4.0, ang_order=3, ang_cutoff=3.0, min_cutoff=0.5, hidden_sizes=[8, 8]),
    "NequIP": dict(r_max=4.0, num_layers=1, l_max=1, num_features=4, num_basis=4, invariant_layers=1,
                   invariant_neurons=8),
    "ALIGNN": dict(cutoff=4.0, hidden_features=16, embedding_features=8, edge_input_features=8,
                   triplet_input_features=6, alignn_layers=1, gcn_layers=1),
    "alchemical": dict(num_pseudo_species=2, cutoff_radius=3.5, basis_cutoff=50.0, hidden_sizes=[8, 8]),
}
AL_SETTINGS = {"ACTIVE_LEARNING": {"ensemble_size": ENSEMBLE_SIZE, "max_MD_steps": 100}}
TAGS = [spec.tag for spec in member_specs(name_exp="water", seed=1, ensemble_size=ENSEMBLE_SIZE)]
NET_FORCE_TOL_EV_PER_A = 1e-8
ROTATION_TOL_EV = 1e-8


def make_folder(folder, model: str):
    """A run folder with TINY settings whose ARCHITECTURE section holds only `model`'s own keys."""
    make_run_folder(folder, al=AL_SETTINGS)
    settings = yaml.safe_load((folder / "mace_settings.yaml").read_text())
    settings["ARCHITECTURE"] = {"model": model, **TINY_HYPERS[model]}
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(settings))
    return folder


@pytest.mark.parametrize("model", sorted(TINY_HYPERS))
def test_active_learning_completes_with_architecture(model, tmp_path):
    from fhi_al.ensemble import EnsembleCalculator

    folder = make_folder(tmp_path / "run", model)
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]

    al_frames = [atoms for path in sorted((folder / "data" / "al").glob("*.xyz"))
                 for atoms in read(path, index=":", format="extxyz")]
    assert al_frames, "active learning added no labels"
    assert all(a.info["procedure"] == "al" and np.isfinite(a.arrays["REF_forces"]).all() for a in al_frames)
    for tag in TAGS:  # members kept training after the initial dataset (warm start, epochs continue)
        history = [json.loads(line) for line in (folder / "results" / f"{tag}_history.jsonl").open()]
        assert history[-1]["epoch"] > MAX_INITIAL_EPOCHS

    calc = EnsembleCalculator.from_files([folder / "model" / f"{tag}.model" for tag in TAGS])
    assert calc.ensemble.architecture.name == model
    atoms = read(folder / "geometry.in")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
    assert np.abs(forces.sum(axis=0)).max() < NET_FORCE_TOL_EV_PER_A  # translation invariance
    assert calc.results["forces_comm"].shape == (ENSEMBLE_SIZE, len(atoms), 3)
    assert calc.results["forces_uncertainty_max"] > 0  # members from different seeds disagree
    energy = atoms.get_potential_energy()
    rotated = atoms.copy()
    rotated.rotate(37.0, (1.0, 2.0, 0.5), center="COM")
    rotated.calc = EnsembleCalculator.from_files([folder / "model" / f"{tag}.model" for tag in TAGS])
    assert rotated.get_potential_energy() == pytest.approx(energy, abs=ROTATION_TOL_EV)


def test_model_files_of_no_architecture_give_input_error(tmp_path):
    """A pickled module that is no fhi_al model must not reach the user as an UnpicklingError of the first
    architecture loader the registry probes."""
    import torch

    from fhi_al.architectures.registry import load_exported
    from fhi_al.errors import InputError

    torch.save(torch.nn.Linear(2, 2), tmp_path / "foreign.model")
    with pytest.raises(InputError, match="not a model file of any fhi_al architecture"):
        load_exported(tmp_path / "foreign.model")
