"""Tests of the NequIP-style network: equivariance of the l=1/l=2 node features under rotations and reflections,
forces = -dE/dR (molecules and crystals), smooth cutoff, statistics buffers, export, the engine's conformance suite."""

from __future__ import annotations


import mace  # noqa: F401  - before e3nn
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from conformance import ArchitectureConformance, check_export_round_trip, emt_labelled

from fhi_al.architectures.base import DatasetStatistics
from fhi_al.architectures.nequip.hypers import NequipHypers
from fhi_al.architectures.nequip.model import NequipArchitecture, NequipCalculator, load_exported
from fhi_al.architectures.nequip.network import hidden_irreps
from fhi_al.architectures.registry import get_architecture_class, hypers_class
from fhi_al.errors import InputError, SettingsError
from fhi_al.settings.typed import build_section

# e3nn 0.4.4 scripts its generated code with torch.jit, which torch 2.13 reports on every module built
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.(script|save|load)` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")]

TINY = dict(r_max=4.0, num_layers=2, l_max=1, num_features=4, num_basis=4, invariant_layers=1, invariant_neurons=8)
E0_EV = {1: -13.6, 6: -1029.8, 8: -2041.3, 14: -7800.0}
FD_STEP_A = 1e-5


def tiny_stats(species, **overrides) -> DatasetStatistics:
    values = dict(species=sorted(species), atomic_energies_eV={z: E0_EV[z] for z in species},
                  atomic_energies_source="settings", num_neighbors_mean=6.0, per_atom_energy_mean=0.2,
                  per_atom_energy_std=0.05, forces_rms=1.3)
    values.update(overrides)
    return DatasetStatistics(**values)


def perturbed(atoms: Atoms, seed: int, amplitude_A: float = 0.1) -> Atoms:
    moved = atoms.copy()
    moved.positions += np.random.default_rng(seed).normal(scale=amplitude_A, size=moved.positions.shape)
    return moved


def energy_forces(arch, model, atoms):
    result = arch.predict(model, arch.collate([arch.featurize(atoms)]))
    return float(result["energy"][0]), result["forces"].numpy()


@pytest.fixture(scope="module")
def arch() -> NequipArchitecture:
    return NequipArchitecture(NequipHypers(**TINY))


@pytest.fixture(scope="module")
def model(arch):
    return arch.build_model(tiny_stats([1, 6, 8]), seed=7)


# ---------------------------------------------------------------- equivariance of the hidden features

@pytest.fixture(scope="module", params=[dict(l_max=2, parity=True, num_layers=3),
                                        dict(l_max=1, parity=False, num_layers=2)], ids=["l2-o3full", "l1-resnet"])
def equivariant(request):
    arch = NequipArchitecture(NequipHypers(**{**TINY, **request.param}))
    return arch, arch.build_model(tiny_stats([1, 6, 8]), seed=3)


@pytest.mark.parametrize("improper", [False, True], ids=["rotation", "rotoreflection"])
def test_node_features_transform_with_wigner_d(equivariant, improper):
    """h(R x) = D(R) h(x) for every layer's l=0,1,2 features (both parities), also for det R = -1."""
    arch, model = equivariant
    atoms = perturbed(molecule("CH3CH2OH"), seed=1)
    matrix = Rotation.random(random_state=11).as_matrix() * (-1.0 if improper else 1.0)
    moved = atoms.copy()
    moved.positions = atoms.positions @ matrix.T + np.array([0.7, -1.1, 0.3])
    original, transformed = arch.node_features(model, atoms), arch.node_features(model, moved)
    irreps_per_layer = model.layer_irreps()
    assert len(original) == model.hypers_dict["num_layers"] + 1
    seen = set()
    for irreps, before, after in zip(irreps_per_layer, original, transformed):
        wigner = irreps.D_from_matrix(torch.tensor(matrix))
        np.testing.assert_allclose(after.numpy(), (before @ wigner.T).numpy(), atol=1e-11)
        for block, (mul, ir) in zip(irreps.slices(), irreps):
            values = before[:, block]
            if ir.l > 0 and float(values.abs().max()) > 1e-3:  # a non-trivial check of this irrep
                seen.add(str(ir))
                assert not torch.allclose(after[:, block], values, atol=1e-6)
    expected = {"1o", "1e", "2e", "2o"} if model.hypers_dict["parity"] else {"1o"}
    assert expected <= seen
    assert model.hypers_dict["parity"] or model.layers[-1].resnet  # the residual path is covered too


def test_odd_features_flip_sign_under_inversion(equivariant):
    arch, model = equivariant
    atoms = perturbed(molecule("CH3CH2OH"), seed=2)
    inverted = atoms.copy()
    inverted.positions = -atoms.positions
    last_irreps = model.layer_irreps()[-1]
    before, after = arch.node_features(model, atoms)[-1], arch.node_features(model, inverted)[-1]
    for block, (_, ir) in zip(last_irreps.slices(), last_irreps):
        np.testing.assert_allclose(after[:, block].numpy(), ir.p * before[:, block].numpy(), atol=1e-11)


def test_forces_rotate_and_reflect_as_vectors(arch, model):
    atoms = perturbed(molecule("CH3CH2OH"), seed=3)
    energy, forces = energy_forces(arch, model, atoms)
    assert np.abs(forces).max() > 1e-4
    for matrix in (Rotation.random(random_state=5).as_matrix(), np.diag([1.0, -1.0, 1.0])):
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T
        moved_energy, moved_forces = energy_forces(arch, model, moved)
        assert moved_energy == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(moved_forces, forces @ matrix.T, atol=1e-10)


def test_hidden_irreps_follow_parity_setting():
    assert str(hidden_irreps(3, 2, True)) == "3x0o+3x0e+3x1o+3x1e+3x2o+3x2e"
    assert str(hidden_irreps(3, 2, False)) == "3x0e+3x1o+3x2e"


# ---------------------------------------------------------------- forces, crystals, cutoff

def test_forces_are_minus_energy_gradient_in_a_crystal():
    arch = NequipArchitecture(NequipHypers(**{**TINY, "r_max": 3.0}))
    model = arch.build_model(tiny_stats([14]), seed=2)
    crystal = bulk("Si", "diamond", a=5.43)
    crystal.rattle(0.1, seed=5)
    energy, forces = energy_forces(arch, model, crystal)
    assert np.abs(forces).max() > 1e-4
    for atom, axis in [(0, 0), (1, 2)]:
        shifted = [crystal.copy(), crystal.copy()]
        shifted[0].positions[atom, axis] += FD_STEP_A
        shifted[1].positions[atom, axis] -= FD_STEP_A
        plus, minus = (energy_forces(arch, model, a)[0] for a in shifted)
        assert forces[atom, axis] == pytest.approx(-(plus - minus) / (2 * FD_STEP_A), abs=1e-7)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10)
    # periodic images are neighbours: the 2x2x2 supercell has 8 times the energy and the same forces
    super_energy, super_forces = energy_forces(arch, model, crystal.repeat((2, 2, 2)))
    assert super_energy == pytest.approx(8 * energy, abs=1e-9)
    np.testing.assert_allclose(super_forces, np.tile(forces, (8, 1)), atol=1e-10)


def test_energy_is_smooth_at_the_cutoff(arch, model):
    """A neighbour crossing r_max changes neither energy nor forces abruptly (polynomial cutoff)."""
    r_max = arch.hypers.r_max

    def dimer(distance_A):
        return energy_forces(arch, model, Atoms("CO", positions=[[0, 0, 0], [distance_A, 0, 0]]))

    isolated = sum(energy_forces(arch, model, Atoms(s, positions=[[0, 0, 0]]))[0] for s in "CO")
    inside, outside = dimer(r_max - 1e-3), dimer(r_max + 1e-3)
    assert outside[0] == pytest.approx(isolated, abs=1e-12)
    np.testing.assert_allclose(outside[1], 0.0, atol=1e-14)
    assert inside[0] == pytest.approx(isolated, abs=1e-9)
    assert np.abs(inside[1]).max() < 1e-7
    assert dimer(0.6 * r_max)[0] != pytest.approx(isolated, abs=1e-6)  # a non-trivial check


# ---------------------------------------------------------------- statistics, seeds, errors

def test_statistics_set_buffers_without_touching_weights(arch):
    model = arch.build_model(tiny_stats([1, 8]), seed=4)
    assert float(model.avg_num_neighbors) == 6.0
    assert model.energy_shift_eV.tolist() == [E0_EV[1], E0_EV[8]]
    assert model.energy_scale_eV.tolist() == [1.3, 1.3]
    water = perturbed(molecule("H2O"), seed=4)
    energy, forces = energy_forces(arch, model, water)
    weights = [p.detach().clone() for p in model.parameters()]
    # E = sum_i shift_Z + scale_Z * out_i: new E0s shift the energy exactly, a doubled force RMS doubles forces
    arch.update_statistics(model, tiny_stats([1, 8], atomic_energies_eV={1: -1.0, 8: -5.0}, forces_rms=2.6))
    new_energy, new_forces = energy_forces(arch, model, water)
    assert new_energy - 2 * (-1.0) - (-5.0) == pytest.approx(2 * (energy - 2 * E0_EV[1] - E0_EV[8]), abs=1e-9)
    np.testing.assert_allclose(new_forces, 2 * forces, atol=1e-12)
    arch.update_statistics(model, tiny_stats([1, 8], num_neighbors_mean=3.0))
    assert float(model.avg_num_neighbors) == 3.0
    assert not np.allclose(energy_forces(arch, model, water)[1], forces, atol=1e-8)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    with pytest.raises(InputError, match=r"\[6\]"):
        arch.update_statistics(model, tiny_stats([1, 6, 8]))


def test_fixed_hypers_override_statistics():
    arch = NequipArchitecture(NequipHypers(**TINY, avg_num_neighbors=2.5, per_type_energy_shift={"H": -1.0, "O": -4.0},
                                           per_type_energy_scale=0.5))
    model = arch.build_model(tiny_stats([1, 8]), seed=1)
    assert float(model.avg_num_neighbors) == 2.5
    assert model.energy_shift_eV.tolist() == [-1.0, -4.0] and model.energy_scale_eV.tolist() == [0.5, 0.5]
    partial = NequipArchitecture(NequipHypers(**TINY, per_type_energy_shift={"H": -1.0}))
    with pytest.raises(InputError, match="per_type_energy_shift"):
        partial.build_model(tiny_stats([1, 8]), seed=1)


def test_seeds_reproduce_and_differ(arch, model):
    atoms = molecule("CH3CH2OH")
    again, other = (arch.build_model(tiny_stats([1, 6, 8]), seed=s) for s in (7, 8))  # `model` has seed 7
    assert energy_forces(arch, again, atoms)[0] == energy_forces(arch, model, atoms)[0]
    assert energy_forces(arch, other, atoms)[0] != energy_forces(arch, model, atoms)[0]


def test_unknown_element_is_an_input_error(arch, model):
    with pytest.raises(InputError, match=r"\[7\]"):
        energy_forces(arch, model, molecule("NH3"))


def test_hypers_from_settings_with_registry():
    assert get_architecture_class("nequip") is NequipArchitecture
    cls = hypers_class("NEQUIP")
    raw = {"l_max": 2, "polynomial_cutoff_p": 5, "per_type_energy_shift": {"H": -13.6, 8: -2041.3},
           "per_type_energy_scale": 2}
    hypers = build_section(cls, raw, "ARCHITECTURE")
    assert hypers.PolynomialCutoff_p == 5 and hypers.per_type_energy_scale == 2.0
    assert hypers.per_type_energy_shift == {1: -13.6, 8: -2041.3}
    with pytest.raises(SettingsError, match="l_max"):
        build_section(cls, {"lmax": 2}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match=r"per_type_energy_shift\.Xx"):
        build_section(cls, {"per_type_energy_shift": {"Xx": 1.0}}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="per_type_energy_scale"):
        build_section(cls, {"per_type_energy_scale": {"H": 0.0}}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="avg_num_neighbors"):
        build_section(cls, {"avg_num_neighbors": 0}, "ARCHITECTURE")


# ---------------------------------------------------------------- export, calculator, engine

def test_export_load_and_ase_calculator(arch, model, tmp_path):
    loaded = check_export_round_trip(arch, model, perturbed(molecule("CH3CH2OH"), seed=6),
                                     tmp_path / "model" / "nequip_1.model", load=load_exported,
                                     calculator=NequipCalculator, label="NequIP")
    assert loaded.species == [1, 6, 8]


class TestNequipConformance(ArchitectureConformance):
    model_name = "NequIP"

    @pytest.fixture
    def tiny_hypers(self) -> NequipHypers:
        return NequipHypers(**TINY)


def test_engine_member_takes_avg_num_neighbors_from_statistics(run_dir):
    """(Training and export through the engine: the conformance suite's test_trains_and_exports_to_a_calculator.)"""
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer

    data = emt_labelled(molecule("CH3CH2OH"), 6, seed=3)
    trainer = Trainer(TrainingConfig(name_exp="nq", model="NequIP", hypers=NequipHypers(**TINY), batch_size=3,
                                     scheduler="none", ema=True, ema_decay=0.9), run_dir)
    assert isinstance(trainer.architecture, NequipArchitecture)
    member = trainer.create_member("nq_1", 1, data[:4], data[4:])
    assert float(member.model.avg_num_neighbors) == pytest.approx(member.stats.num_neighbors_mean)
