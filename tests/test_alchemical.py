"""Tests of the alchemical SOAP-BPNN: basis functions against scipy, the compressed power spectrum against a
plain loop with complex harmonics, forces = -dE/dR, invariances, cutoff smoothness, parameter counts that do
not grow with the elements beyond the compression, export, and training through the shared engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.special import eval_legendre, spherical_jn, sph_harm_y

from conformance import ArchitectureConformance, check_export_round_trip, emt_labelled

from fhi_al.architectures.alchemical.basis import (
    CUTOFF_SMOOTHING_WIDTH_A, bessel_zeros, real_spherical_harmonics, spherical_bessel)
from fhi_al.architectures.alchemical.hypers import AlchemicalHypers
from fhi_al.architectures.alchemical.model import AlchemicalArchitecture, AlchemicalCalculator, load_exported
from fhi_al.architectures.base import DatasetStatistics
from fhi_al.architectures.registry import get_architecture_class
from fhi_al.errors import InputError, SettingsError
from fhi_al.settings.typed import build_section

TINY = dict(num_pseudo_species=2, cutoff_radius=3.5, basis_cutoff=50.0, hidden_sizes=[8, 8])
E0_EV = {1: -13.6, 6: -1029.8, 8: -2041.3, 13: -3.0, 14: -7800.0, 28: -5.0, 29: -4.0, 46: -6.0, 47: -3.5,
         78: -7.0, 79: -4.5}


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


def energy_forces(arch, model, atoms):
    result = arch.predict(model, arch.collate([arch.featurize(atoms)]))
    return float(result["energy"][0]), result["forces"].numpy()


def features_of(arch, model, atoms) -> np.ndarray:
    sample = arch.featurize(atoms)
    index = model.element_index(sample.numbers)
    return model.features(sample.positions_A, index, sample.graph).detach().numpy()


@pytest.fixture
def arch() -> AlchemicalArchitecture:
    return AlchemicalArchitecture(AlchemicalHypers(**TINY))


# ---------------------------------------------------------------- basis

def test_bessel_zeros_and_basis_size():
    zeros = bessel_zeros(50.0)
    assert [len(z) for z in zeros] == [2, 1, 1, 1]  # pi, 2 pi; 4.49; 5.76; 6.99 (all squares <= 50)
    np.testing.assert_allclose(zeros[0], [math.pi, 2 * math.pi], rtol=1e-12)
    for l, z in enumerate(bessel_zeros(400.0)):
        np.testing.assert_allclose(spherical_jn(l, z), 0.0, atol=1e-12)
        assert np.all(z ** 2 <= 400.0)


def test_spherical_bessel_and_its_derivative_match_scipy():
    l_max = 15
    x = np.concatenate([np.linspace(1e-3, 25.0, 2000), [0.999, 1.0, 1.001, 14.999, 15.0, 15.001]])
    grid = torch.tensor(x)[:, None].repeat(1, l_max + 1).requires_grad_(True)
    values = spherical_bessel(torch.arange(l_max + 1), grid, l_max)
    (slope,) = torch.autograd.grad(values.sum(), grid)
    expected = np.stack([spherical_jn(l, x) for l in range(l_max + 1)], -1)
    expected_slope = np.stack([spherical_jn(l, x, derivative=True) for l in range(l_max + 1)], -1)
    np.testing.assert_allclose(values.detach().numpy(), expected, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(slope.numpy(), expected_slope, rtol=1e-9, atol=1e-14)


def test_real_spherical_harmonics_obey_addition_theorem_beyond_l11(rng):
    """sum_m Y_lm(u) Y_lm(v) = (2l+1)/4pi P_l(u.v) checks normalisation and every m, up to l = 16."""
    u, v = (torch.nn.functional.normalize(torch.tensor(rng.normal(size=(40, 3))), dim=-1) for _ in range(2))
    cosine = (u * v).sum(-1).numpy()
    for l, (y_u, y_v) in enumerate(zip(real_spherical_harmonics(u, 16), real_spherical_harmonics(v, 16))):
        assert y_u.shape == (40, 2 * l + 1)
        expected = (2 * l + 1) / (4 * math.pi) * eval_legendre(l, cosine)
        np.testing.assert_allclose((y_u * y_v).sum(-1).numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("kind", ["le", "physical"])
def test_radial_functions_vanish_smoothly_at_cutoff(kind):
    hypers = AlchemicalHypers(**{**TINY, "radial_basis_type": kind, "trainable_basis": False})
    basis = AlchemicalArchitecture(hypers).build_model(tiny_stats([1]), seed=0).features.basis
    cutoff, eps = hypers.cutoff_radius, 1e-4
    values = lambda r: torch.cat(basis(torch.tensor([r], dtype=torch.float64)), -1).numpy()  # noqa: E731
    np.testing.assert_allclose(values(cutoff + eps), 0.0, atol=1e-15)
    assert np.abs(values(cutoff - eps)).max() < 1e-6  # value and slope vanish at rc
    assert np.abs(values(cutoff - CUTOFF_SMOOTHING_WIDTH_A - 0.3)).max() > 0.1  # not trivially zero


# ---------------------------------------------------------------- features

def reference_power_spectrum(atoms: Atoms, compression: np.ndarray, species: list[int],
                             hypers: AlchemicalHypers) -> np.ndarray:
    """The compressed power spectrum as plain loops over atoms and neighbours with scipy's complex Y_lm
    (le basis, no mixing, no normalisation), the reference for the torch version."""
    zeros, rc = bessel_zeros(hypers.basis_cutoff), hypers.cutoff_radius
    start = rc - CUTOFF_SMOOTHING_WIDTH_A

    def smooth(r: float) -> float:
        return 1.0 if r < start else 0.5 * (1 + math.cos(math.pi * (r - start) / CUTOFF_SMOOTHING_WIDTH_A))

    rows = []
    for i in range(len(atoms)):
        blocks = []
        for l, z_l in enumerate(zeros):
            density = np.zeros((compression.shape[1], len(z_l), 2 * l + 1), dtype=complex)
            for j in range(len(atoms)):
                vector = atoms.positions[j] - atoms.positions[i]
                r = np.linalg.norm(vector)
                if j == i or r >= rc:
                    continue
                radial = math.sqrt(2) / np.abs(spherical_jn(l + 1, z_l)) * spherical_jn(l, z_l * r / rc) * smooth(r)
                theta, phi = math.acos(vector[2] / r), math.atan2(vector[1], vector[0])
                harmonics = np.array([sph_harm_y(l, m, theta, phi) for m in range(-l, l + 1)])
                weights = compression[species.index(atoms.numbers[j])]
                density += weights[:, None, None] * radial[None, :, None] * harmonics[None, None, :]
            flat = density.reshape(-1, 2 * l + 1)
            full = (flat @ flat.conj().T).real / math.sqrt(2 * l + 1)
            upper = np.triu_indices(len(flat))
            blocks.append(full[upper] * np.where(upper[0] == upper[1], 1.0, math.sqrt(2)))
        rows.append(np.concatenate(blocks))
    return np.array(rows)


def test_power_spectrum_matches_plain_loop_with_complex_harmonics(water, rng):
    hypers = AlchemicalHypers(**{**TINY, "radial_basis_type": "le", "normalize": False, "basis_cutoff": 100.0,
                                 "num_pseudo_species": 3})
    arch = AlchemicalArchitecture(hypers)
    model = arch.build_model(tiny_stats([1, 8]), seed=4)
    atoms = perturbed(water, rng)
    ours = features_of(arch, model, atoms)
    assert ours.shape == (3, model.features.num_features)
    compression = model.features.compression.detach().numpy()
    np.testing.assert_allclose(ours, reference_power_spectrum(atoms, compression, [1, 8], hypers), atol=1e-10)


def test_periodic_features_equal_supercell_features(arch):
    crystal = bulk("Si", "diamond", a=5.43)
    crystal.rattle(0.05, seed=3)
    model = arch.build_model(tiny_stats([14]), seed=1)
    small, large = features_of(arch, model, crystal), features_of(arch, model, crystal.repeat((2, 2, 2)))
    np.testing.assert_allclose(np.tile(small, (8, 1)), large, atol=1e-10)


def test_elements_with_equal_pseudo_species_weights_are_indistinguishable(arch, ethanol, rng):
    """All species information passes through the compression: give C and O the same weights and
    swapping them leaves the energy unchanged."""
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=5)
    with torch.no_grad():
        model.features.compression[2] = model.features.compression[1]
        model.atomic_energies_eV[2] = model.atomic_energies_eV[1]
    atoms = perturbed(ethanol, rng)
    swapped = atoms.copy()
    swapped.numbers = np.where(atoms.numbers == 6, 8, np.where(atoms.numbers == 8, 6, atoms.numbers))
    assert energy_forces(arch, model, swapped)[0] == pytest.approx(energy_forces(arch, model, atoms)[0], abs=1e-10)
    with torch.no_grad():
        model.features.compression[2, 0] += 0.5
    assert abs(energy_forces(arch, model, swapped)[0] - energy_forces(arch, model, atoms)[0]) > 1e-6


# ---------------------------------------------------------------- parameter counts

def parameter_counts(hypers: AlchemicalHypers, species: list[int]) -> dict[str, int]:
    model = AlchemicalArchitecture(hypers).empty_model(species)
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "compression": model.features.compression.numel(),
              "networks": sum(p.numel() for p in model.networks.parameters())}
    counts["features"] = model.features.num_features
    return counts


def test_parameter_count_grows_only_through_the_compression():
    hypers = AlchemicalHypers(**{**TINY, "num_pseudo_species": 3})
    two, six = parameter_counts(hypers, [1, 8]), parameter_counts(hypers, [13, 28, 29, 46, 47, 79])
    assert two["features"] == six["features"] and two["networks"] == six["networks"]
    assert six["compression"] - two["compression"] == (6 - 2) * 3  # num_pseudo_species per extra element
    assert six["total"] - two["total"] == (6 - 2) * 3
    # without centre contraction every element has its own network, as in a plain BPNN
    plain = AlchemicalHypers(**{**TINY, "num_pseudo_species": 3, "contract_center_species": False})
    plain_two, plain_six = parameter_counts(plain, [1, 8]), parameter_counts(plain, [13, 28, 29, 46, 47, 79])
    assert plain_six["networks"] == 3 * plain_two["networks"]


# ---------------------------------------------------------------- model physics

def test_forces_are_minus_energy_gradient_with_default_basis(ethanol, rng):
    """Default hypers (physical basis, l_max 9, layer norm): finite differences and rotation invariance."""
    arch = AlchemicalArchitecture(AlchemicalHypers(hidden_sizes=[8]))
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=3)
    assert model.features.basis.l_max == 9
    atoms = perturbed(ethanol, rng)
    energy, forces = energy_forces(arch, model, atoms)
    step_A = 1e-5
    for atom, axis in [(0, 0), (2, 1), (8, 2)]:
        shifted = [atoms.copy(), atoms.copy()]
        shifted[0].positions[atom, axis] += step_A
        shifted[1].positions[atom, axis] -= step_A
        plus, minus = (energy_forces(arch, model, a)[0] for a in shifted)
        assert forces[atom, axis] == pytest.approx(-(plus - minus) / (2 * step_A), abs=1e-6)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([3.0, -1.0, 7.5])
    energy_moved, forces_moved = energy_forces(arch, model, moved)
    assert energy_moved == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(forces_moved, forces @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-9)


def test_periodic_forces_are_minus_energy_gradient(arch):
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


@pytest.mark.parametrize("kind", ["le", "physical"])
def test_energy_and_forces_are_continuous_when_atom_leaves_cutoff(kind):
    """An H leaves an OH dimer: with two neighbours the spectrum is linear in the leaving atom's radial
    functions, so value and slope of those must vanish at the cutoff for smooth energies and forces."""
    arch = AlchemicalArchitecture(AlchemicalHypers(**{**TINY, "radial_basis_type": kind}))
    model = arch.build_model(tiny_stats([1, 8]), seed=3)
    cutoff = arch.hypers.cutoff_radius
    trimer = lambda d: Atoms("OHH", positions=[[0, 0, 0], [0.97, 0, 0], [0, d, 0]])  # noqa: E731
    (e_in, f_in), (e_out, f_out), (e_far, _) = (energy_forces(arch, model, trimer(d))
                                                 for d in (cutoff - 1e-4, cutoff + 1e-4, cutoff + 1.0))
    assert e_in == pytest.approx(e_out, abs=1e-6)
    assert e_out == pytest.approx(e_far, abs=1e-12)
    assert np.abs(f_in[2]).max() < 1e-4 and np.abs(f_out[2]).max() == 0.0
    np.testing.assert_allclose(f_in[:2], f_out[:2], atol=1e-4)
    separated = energy_forces(arch, model, trimer(cutoff)[:2])[0] + energy_forces(arch, model, Atoms("H"))[0]
    assert e_far == pytest.approx(separated, abs=1e-12)
    _, f_mid = energy_forces(arch, model, trimer(cutoff - 1.0))
    assert np.abs(f_mid[2]).max() > 1e-3  # the leaving atom interacts inside the cutoff


def test_batch_predicts_like_single_structures(arch, ethanol, water, rng):
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=6)
    structures = [perturbed(ethanol, rng), perturbed(water, rng), perturbed(ethanol, rng)]
    batched = arch.predict(model, arch.collate([arch.featurize(a) for a in structures]))
    singles = [energy_forces(arch, model, a) for a in structures]
    np.testing.assert_allclose(batched["energy"].numpy(), [e for e, _ in singles], atol=1e-10)
    np.testing.assert_allclose(batched["forces"].numpy(), np.concatenate([f for _, f in singles]), atol=1e-10)


def test_energy_offsets_follow_statistics(arch, water):
    model = arch.build_model(tiny_stats([1, 8]), seed=1)
    for name in ("weights", "biases"):
        torch.nn.init.zeros_(getattr(model.networks, name)[-1])  # network output zero: E0 + shift remain
    expected = 2 * E0_EV[1] + E0_EV[8] + 3 * 0.2
    assert energy_forces(arch, model, water)[0] == pytest.approx(expected, abs=1e-10)
    weights_before = [p.detach().clone() for p in model.parameters()]
    arch.update_statistics(model, tiny_stats([1, 8], atomic_energies_eV={1: -1.0, 8: -5.0},
                                             per_atom_energy_mean=0.0, forces_rms=2.0))
    assert energy_forces(arch, model, water)[0] == pytest.approx(-7.0, abs=1e-10)
    assert float(model.energy_scale_eV) == 2.0
    assert float(model.features.density_scale) == pytest.approx(1 / math.sqrt(6.0))
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))


def test_seeds_reproduce_and_differ(arch, ethanol):
    stats = tiny_stats([1, 6, 8])
    first, again, other = (arch.build_model(stats, seed=s) for s in (11, 11, 12))
    assert energy_forces(arch, first, ethanol)[0] == energy_forces(arch, again, ethanol)[0]
    assert energy_forces(arch, first, ethanol)[0] != energy_forces(arch, other, ethanol)[0]


def test_unknown_element_is_an_input_error(arch):
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=1)
    with pytest.raises(InputError, match=r"\[7\]"):
        energy_forces(arch, model, molecule("NH3"))


# ---------------------------------------------------------------- settings, export, calculator

def test_hypers_from_settings_with_registry():
    cls = get_architecture_class("Alchemical")
    hypers = build_section(cls.Hypers, {"num_pseudo_species": 3, "radial_basis_type": "LE",
                                        "hidden_sizes": [4, 4]}, "ARCHITECTURE")
    assert hypers.radial_basis_type == "le" and hypers.r_max == hypers.cutoff_radius == 5.0
    assert cls(hypers).cutoff_A == 5.0
    for raw, where in [({"num_pseudo_specie": 3}, "num_pseudo_specie"), ({"basis_cutoff": 5.0}, "basis_cutoff"),
                       ({"output_size": 2}, "output_size"), ({"hidden_sizes": [8, 0]}, "hidden_sizes"),
                       ({"radial_basis_type": "gto"}, "radial_basis_type"), ({"num_pseudo_species": 0},
                                                                            "num_pseudo_species")]:
        with pytest.raises(SettingsError, match=where):
            build_section(cls.Hypers, raw, "ARCHITECTURE")


def test_export_load_and_ase_calculator(arch, ethanol, rng, tmp_path):
    model = arch.build_model(tiny_stats([1, 6, 8]), seed=9)
    loaded = check_export_round_trip(arch, model, perturbed(ethanol, rng), tmp_path / "model" / "alchemical_1.model",
                                     load=load_exported, calculator=AlchemicalCalculator, label="alchemical")
    assert loaded.species == [1, 6, 8]


# ---------------------------------------------------------------- the shared conformance suite, through the engine

class TestAlchemicalConformance(ArchitectureConformance):
    model_name = "alchemical"

    @pytest.fixture
    def tiny_hypers(self) -> AlchemicalHypers:
        return AlchemicalHypers(**TINY)


def six_element_alloy(count: int, *, seed: int) -> list[Atoms]:
    """fcc 8-atom cells of Al, Ni, Cu, Pd, Ag, Au in random order, labelled with EMT."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        cell = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
        cell.numbers = rng.permutation([13, 28, 29, 46, 47, 79, 29, 28])
        structures += emt_labelled(cell, 1, seed=seed * 100 + index, displacement_A=0.05)
    return structures


def test_trainer_trains_a_six_element_alloy_with_two_pseudo_species(run_dir):
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer

    data = six_element_alloy(8, seed=4)
    hypers = AlchemicalHypers(**{**TINY, "cutoff_radius": 4.0})
    trainer = Trainer(TrainingConfig(name_exp="alch", model="alchemical", hypers=hypers, batch_size=2, lr=0.01,
                                     scheduler="none", ema=True, ema_decay=0.9, forces_weight=10.0), run_dir)
    member = trainer.create_member("alch_1", 1, data[:6], data[6:])
    assert member.model.species == [13, 28, 29, 46, 47, 79]
    assert member.model.features.compression.shape == (6, 2)
    before = trainer.evaluate(member, member.train_atoms)
    trainer.train(member, 20)
    after = trainer.evaluate(member, member.train_atoms)
    assert after["loss"] < 0.5 * before["loss"] and after["forces_rmse"] < before["forces_rmse"]


def test_ensemble_calculator_of_alchemical_members(run_dir, ethanol):
    from fhi_al.ensemble import EnsembleCalculator
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer

    data = emt_labelled(ethanol, 4, seed=6)
    trainer = Trainer(TrainingConfig(name_exp="ens", model="alchemical", hypers=AlchemicalHypers(**TINY)), run_dir)
    members = [trainer.create_member(f"ens_{seed}", seed, data) for seed in (1, 2)]
    atoms = data[0].copy()
    atoms.calc = EnsembleCalculator(members)
    forces_comm = atoms.calc.get_property("forces_comm", atoms)
    assert forces_comm.shape == (2, len(atoms), 3)
    singles = [energy_forces(trainer.architecture, m.inference_model(), atoms)[1] for m in members]
    np.testing.assert_allclose(forces_comm, np.stack(singles), atol=1e-12)
    assert atoms.calc.get_property("forces_uncertainty_max", atoms) > 0.0
