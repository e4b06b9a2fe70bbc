"""Tests of the aenet-style network: descriptor against a plain loop of aenet's formula, forces = -dE/dR,
invariances, smoothness at the cutoffs, per-element parameters, normalisation, export and the ASE calculator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from conformance import ArchitectureConformance, check_export_round_trip

from fhi_al.architectures.aenet.descriptors import ChebyshevDescriptor, build_graph, chebyshev, type_spins
from fhi_al.architectures.aenet.hypers import AenetHypers
from fhi_al.architectures.aenet.model import AenetArchitecture, AenetCalculator, load_exported
from fhi_al.architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY, DatasetStatistics
from fhi_al.architectures.registry import get_architecture_class
from fhi_al.errors import InputError, SettingsError
from fhi_al.settings.typed import build_section

TINY = dict(rad_order=6, rad_cutoff=4.0, ang_order=3, ang_cutoff=3.0, min_cutoff=0.5, hidden_sizes=[8, 8])
E0_EV = {1: -13.6, 6: -1029.8, 8: -2041.3, 14: -7800.0}


def tiny_stats(species, **overrides) -> DatasetStatistics:
    values = dict(species=sorted(species), atomic_energies_eV={z: E0_EV[z] for z in species},
                  atomic_energies_source="settings", num_neighbors_mean=6.0, per_atom_energy_mean=0.2,
                  per_atom_energy_std=0.05, forces_rms=1.3)
    values.update(overrides)
    return DatasetStatistics(**values)


def perturbed(atoms: Atoms, rng, amplitude_A: float = 0.08) -> Atoms:
    moved = atoms.copy()
    moved.positions += rng.normal(scale=amplitude_A, size=moved.positions.shape)
    return moved


@pytest.fixture
def arch() -> AenetArchitecture:
    return AenetArchitecture(AenetHypers(**TINY))


@pytest.fixture
def fitted(arch, ethanol, rng):
    """A model of H, C, O with random weights and descriptor normalisation fitted on a few ethanols."""
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=7)
    samples = [arch.featurize(perturbed(ethanol, rng)) for _ in range(4)]
    assert arch.fit_feature_statistics(model, samples)
    return model


def energy_forces(arch, model, atoms):
    result = arch.predict(model, arch.collate([arch.featurize(atoms)]))
    return float(result["energy"][0]), result["forces"].numpy()


def reference_descriptor(atoms: Atoms, species: list[int], hypers: AenetHypers) -> np.ndarray:
    """aenet's sfb_eval written as plain loops (non-periodic), the reference for the torch version."""
    spin = dict(zip(species, type_spins(len(species))))
    fc = lambda r, rc: 0.5 * (math.cos(math.pi * r / rc) + 1.0) if r < rc else 0.0  # noqa: E731
    cheb = lambda x, n: np.polynomial.chebyshev.chebvander(x, n)[0]  # noqa: E731
    lo, hi = hypers.min_cutoff, hypers.rad_cutoff
    rows = []
    for i, centre in enumerate(atoms.positions):
        rad, ang = np.zeros(hypers.rad_order + 1), np.zeros(hypers.ang_order + 1)
        rad_w, ang_w = np.zeros_like(rad), np.zeros_like(ang)
        others = [j for j in range(len(atoms)) if j != i]
        for a, j in enumerate(others):
            r_ij = atoms.positions[j] - centre
            d_ij = np.linalg.norm(r_ij)
            s_j = spin[atoms.numbers[j]]
            term = cheb((2 * d_ij - (lo + hi)) / (hi - lo), hypers.rad_order) * fc(d_ij, hi)
            rad, rad_w = rad + term, rad_w + s_j * term
            for k in others[a + 1:]:
                r_ik = atoms.positions[k] - centre
                d_ik = np.linalg.norm(r_ik)
                cos = r_ij @ r_ik / (d_ij * d_ik)
                term = cheb(cos, hypers.ang_order) * fc(d_ij, hypers.ang_cutoff) * fc(d_ik, hypers.ang_cutoff)
                ang, ang_w = ang + term, ang_w + s_j * spin[atoms.numbers[k]] * term
        rows.append(np.concatenate([rad, ang, rad_w, ang_w]))
    return np.array(rows)


def descriptor_of(atoms: Atoms, species: list[int], hypers: AenetHypers) -> np.ndarray:
    descriptor = ChebyshevDescriptor(rad_order=hypers.rad_order, rad_cutoff_A=hypers.rad_cutoff,
                                     ang_order=hypers.ang_order, ang_cutoff_A=hypers.ang_cutoff,
                                     min_cutoff_A=hypers.min_cutoff, num_species=len(species)).double()
    graph = build_graph(atoms, rad_cutoff_A=hypers.rad_cutoff, ang_cutoff_A=hypers.ang_cutoff)
    index = torch.tensor([species.index(z) for z in atoms.numbers])
    return descriptor(torch.tensor(atoms.positions), index, graph).detach().numpy()


# ---------------------------------------------------------------- descriptor

def test_type_spins_follow_aenet():
    assert type_spins(1) == [0.0]
    assert type_spins(2) == [-1.0, 1.0]
    assert type_spins(3) == [-1.0, 0.0, 1.0]
    assert type_spins(4) == [-2.0, -1.0, 1.0, 2.0]


def test_chebyshev_matches_numpy():
    x = np.linspace(-1.3, 1.3, 17)
    ours = chebyshev(torch.tensor(x), 7).numpy()
    np.testing.assert_allclose(ours, np.polynomial.chebyshev.chebvander(x, 7), atol=1e-12)


def test_descriptor_matches_plain_loop_of_aenet_formula(ethanol, rng):
    hypers = AenetHypers(**TINY)
    atoms = perturbed(ethanol, rng)
    ours = descriptor_of(atoms, [1, 6, 8], hypers)
    assert ours.shape == (9, 2 * (7 + 4))
    np.testing.assert_allclose(ours, reference_descriptor(atoms, [1, 6, 8], hypers), atol=1e-10)


def test_single_element_has_no_weighted_channel():
    hypers = AenetHypers(**TINY)
    atoms = Atoms("H3", positions=[[0, 0, 0], [0.9, 0, 0], [0.2, 1.1, 0.1]])
    features = descriptor_of(atoms, [1], hypers)
    assert features.shape == (3, 7 + 4)
    np.testing.assert_allclose(features, reference_descriptor(atoms, [1], hypers)[:, :11], atol=1e-12)


def test_periodic_descriptor_equals_supercell_descriptor():
    hypers = AenetHypers(**TINY)
    cell = bulk("Si", "diamond", a=5.43)
    cell.rattle(0.05, seed=3)
    small = descriptor_of(cell, [14], hypers)
    large = descriptor_of(cell.repeat((2, 2, 2)), [14], hypers)
    assert np.abs(small).max() > 1.0  # neighbours from periodic images were found
    np.testing.assert_allclose(np.tile(small, (8, 1)), large, atol=1e-10)


@pytest.mark.parametrize("kind", ["radial", "angular"])
def test_descriptor_vanishes_smoothly_at_cutoff(kind):
    """Value and slope of every feature go to zero as a neighbour crosses its cutoff."""
    hypers = AenetHypers(**TINY)
    cutoff = hypers.rad_cutoff if kind == "radial" else hypers.ang_cutoff

    def features(distance):
        if kind == "radial":
            atoms = Atoms("H2", positions=[[0, 0, 0], [distance, 0, 0]])
            return descriptor_of(atoms, [1], hypers)[0, :7]
        atoms = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [0, distance, 0]])
        return descriptor_of(atoms, [1], hypers)[0, 7:]

    eps = 1e-4
    inside, outside = features(cutoff - eps), features(cutoff + eps)
    np.testing.assert_allclose(outside, 0.0, atol=1e-14)
    assert np.abs(inside).max() < 1e-6  # fc ~ (pi eps / 2 Rc)^2: value and slope vanish
    slope = (features(cutoff - eps) - features(cutoff - 2 * eps)) / eps
    assert np.abs(slope).max() < 1e-3


# ---------------------------------------------------------------- model physics

def test_forces_are_minus_energy_gradient(arch, fitted, ethanol, rng):
    atoms = perturbed(ethanol, rng)
    _, forces = energy_forces(arch, fitted, atoms)
    step_A = 1e-5
    for atom, axis in [(0, 0), (2, 1), (8, 2), (5, 0)]:
        shifted = [atoms.copy(), atoms.copy()]
        shifted[0].positions[atom, axis] += step_A
        shifted[1].positions[atom, axis] -= step_A
        plus, minus = (energy_forces(arch, fitted, a)[0] for a in shifted)
        assert forces[atom, axis] == pytest.approx(-(plus - minus) / (2 * step_A), abs=1e-6)
    assert np.abs(forces).max() > 1e-3  # a non-trivial check


def test_periodic_forces_are_minus_energy_gradient(rng):
    arch = AenetArchitecture(AenetHypers(**TINY))
    crystal = bulk("Si", "diamond", a=5.43)
    crystal.rattle(0.1, seed=5)
    model = arch.build_model(tiny_stats([14]), seed=2)
    _, forces = energy_forces(arch, model, crystal)
    shifted = [crystal.copy(), crystal.copy()]
    shifted[0].positions[1, 2] += 1e-5
    shifted[1].positions[1, 2] -= 1e-5
    plus, minus = (energy_forces(arch, model, a)[0] for a in shifted)
    assert forces[1, 2] == pytest.approx(-(plus - minus) / 2e-5, abs=1e-6)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10)


def test_rotation_translation_and_permutation_invariance(arch, fitted, ethanol, rng):
    atoms = perturbed(ethanol, rng)
    energy, forces = energy_forces(arch, fitted, atoms)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([3.0, -1.0, 7.5])
    energy_moved, forces_moved = energy_forces(arch, fitted, moved)
    assert energy_moved == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(forces_moved, forces @ rotation.T, atol=1e-9)
    hydrogens = np.flatnonzero(atoms.numbers == 1)
    order = np.arange(len(atoms))
    order[hydrogens] = hydrogens[::-1]
    energy_perm, forces_perm = energy_forces(arch, fitted, atoms[order])
    assert energy_perm == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(forces_perm, forces[order], atol=1e-9)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-9)  # no net force on an isolated molecule


def test_energy_is_continuous_when_atom_leaves_cutoff(arch):
    model = arch.build_model(tiny_stats([1, 8]), seed=3)
    cutoff = arch.hypers.rad_cutoff
    energies = [energy_forces(arch, model, Atoms("OH", positions=[[0, 0, 0], [d, 0, 0]]))[0]
                for d in (cutoff - 1e-4, cutoff + 1e-4, cutoff + 1.0)]
    assert energies[0] == pytest.approx(energies[1], abs=1e-6)
    assert energies[1] == pytest.approx(energies[2], abs=1e-12)


def test_batch_predicts_like_single_structures(arch, fitted, ethanol, water, rng):
    structures = [perturbed(ethanol, rng), perturbed(water, rng), perturbed(ethanol, rng)]
    batched = arch.predict(fitted, arch.collate([arch.featurize(a) for a in structures]))
    singles = [energy_forces(arch, fitted, a) for a in structures]
    np.testing.assert_allclose(batched["energy"].numpy(), [e for e, _ in singles], atol=1e-10)
    np.testing.assert_allclose(batched["forces"].numpy(), np.concatenate([f for _, f in singles]), atol=1e-10)


# ---------------------------------------------------------------- parameters and statistics

def test_one_network_per_element_and_only_its_atoms_use_it(arch, fitted):
    assert len(fitted.mlps) == 3 and fitted.species == [1, 6, 8]
    assert [m[0].in_features for m in fitted.mlps] == [fitted.descriptor.num_features] * 3
    methane = molecule("CH4")
    batch = arch.collate([arch.featurize(methane)])
    result = arch.predict(fitted, batch, training=True)
    (result["energy"].sum() + result["forces"].pow(2).sum()).backward()
    oxygen_grads = [p.grad for p in fitted.mlps[2].parameters()]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in oxygen_grads)
    assert all(float(p.grad.abs().max()) > 0.0 for p in fitted.mlps[0].parameters())


def test_energy_offsets_follow_statistics(arch):
    model = arch.build_model(tiny_stats([1, 8]), seed=1)
    for mlp in model.mlps:  # network output zero: only E0 + shift remain
        torch.nn.init.zeros_(mlp[-1].weight)
        torch.nn.init.zeros_(mlp[-1].bias)
    water = molecule("H2O")
    expected = 2 * E0_EV[1] + E0_EV[8] + 3 * 0.2
    assert energy_forces(arch, model, water)[0] == pytest.approx(expected, abs=1e-10)
    weights_before = [p.detach().clone() for p in model.parameters()]
    arch.update_statistics(model, tiny_stats([1, 8], atomic_energies_eV={1: -1.0, 8: -5.0},
                                             per_atom_energy_mean=0.0, forces_rms=2.0))
    assert energy_forces(arch, model, water)[0] == pytest.approx(-7.0, abs=1e-10)
    assert float(model.energy_scale_eV) == 2.0
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))


def test_feature_normalisation_is_fitted_once(arch, ethanol, rng):
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=1)
    samples = [arch.featurize(perturbed(ethanol, rng)) for _ in range(6)]
    assert arch.fit_feature_statistics(model, samples)
    batch = arch.collate(samples)
    species = model.species_index(batch.inputs.numbers)
    normalised = model.features(batch.inputs.positions_A, species, batch.inputs.graph)
    hydrogens = normalised[species == 0]
    varying = model.feature_std[0] != 1.0
    np.testing.assert_allclose(hydrogens.mean(0).numpy(), 0.0, atol=1e-10)
    np.testing.assert_allclose(hydrogens.std(0, unbiased=False)[varying].numpy(), 1.0, atol=1e-10)
    mean_before = model.feature_mean.clone()
    assert not arch.fit_feature_statistics(model, samples[:2])  # later training sets keep the scaling
    assert torch.equal(mean_before, model.feature_mean)


def test_seeds_reproduce_and_differ(arch, ethanol):
    stats = tiny_stats([1, 6, 8])
    first, again, other = (arch.build_model(stats, seed=s) for s in (11, 11, 12))
    assert energy_forces(arch, first, ethanol)[0] == energy_forces(arch, again, ethanol)[0]
    assert energy_forces(arch, first, ethanol)[0] != energy_forces(arch, other, ethanol)[0]


def test_labels_and_unlabelled_structures(arch, water):
    labelled = water.copy()
    labelled.info[REF_ENERGY_KEY] = -14.5
    labelled.arrays[REF_FORCES_KEY] = np.arange(9.0).reshape(3, 3)
    batch = arch.collate([arch.featurize(labelled), arch.featurize(water)])
    assert batch.energy_eV.tolist() == [-14.5, 0.0]
    assert batch.energy_weight.tolist() == [1.0, 0.0] and batch.forces_weight.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(batch.forces_eV_per_A[:3].numpy(), labelled.arrays[REF_FORCES_KEY])
    assert batch.structure_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.energy_eV.dtype == torch.float64


def test_unknown_element_is_an_input_error(arch, fitted):
    with pytest.raises(InputError, match=r"\[7\]"):
        energy_forces(arch, fitted, molecule("NH3"))


# ---------------------------------------------------------------- settings, export, calculator

def test_hypers_from_settings_with_registry():
    cls = get_architecture_class("AENET")
    hypers = build_section(cls.Hypers, {"rad_order": 8, "hidden_sizes": [4, 4, 4], "activation": "MTANH"},
                           "ARCHITECTURE")
    assert hypers.activation == "mtanh" and hypers.hidden_sizes == [4, 4, 4]
    with pytest.raises(SettingsError, match="rad_order"):
        build_section(cls.Hypers, {"rad_ordr": 8}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="ARCHITECTURE.min_cutoff"):
        build_section(cls.Hypers, {"min_cutoff": 6.0, "rad_cutoff": 5.0}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="hidden_sizes"):
        build_section(cls.Hypers, {"hidden_sizes": [8, 0]}, "ARCHITECTURE")


def test_export_load_and_ase_calculator(arch, fitted, ethanol, rng, tmp_path):
    loaded = check_export_round_trip(arch, fitted, perturbed(ethanol, rng), tmp_path / "model" / "aenet_1.model",
                                     load=load_exported, calculator=AenetCalculator, label="aenet")
    assert loaded.species == [1, 6, 8]
    assert bool(loaded.feature_stats_fitted)


# ---------------------------------------------------------------- the shared conformance suite, through the engine

class TestAenetConformance(ArchitectureConformance):
    model_name = "aenet"

    @pytest.fixture
    def tiny_hypers(self) -> AenetHypers:
        return AenetHypers(**TINY)
