"""Normal-mode sampling: relaxation and Hessian through label_call, rigid modes, frequencies of real molecules
(GFN2-xTB, EMT), the harmonic statistics of the samples, the contact guard, restart state and the Hessian record."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.cluster import Octahedron
from ase.vibrations import VibrationsData

from fhi_al.errors import InputError
from fhi_al.procedures import normal_modes as nm
from fhi_al.procedures.state import SamplerState
from fhi_al.procedures.sampling import Frame
from fhi_al.references import make_reference
from fhi_al.restart import load_record, save_record

N_SIGMA = 4.0  # statistical tests accept |deviation| < 4 standard errors (two-sided p ~ 6e-5)


class CountingLabelCall:
    """A label_call on a real calculator that remembers the purpose of every call."""

    def __init__(self, calc):
        self.direct = nm.direct_label_call(calc)
        self.purposes: list[str] = []

    def __call__(self, atoms, purpose):
        assert atoms.calc is None
        self.purposes.append(purpose)
        return self.direct(atoms, purpose)


@pytest.fixture(scope="module")
def xtb():
    return make_reference(name="xtb")


@pytest.fixture(scope="module")
def water_modes(xtb):
    """Relaxed GFN2-xTB water, its Hessian and modes."""
    label_call = nm.direct_label_call(xtb)
    atoms = nm.relax(xtb, molecule("H2O"), fmax_eV_per_A=0.01, label_call=label_call)
    hessian = nm.finite_difference_hessian(atoms, label_call=label_call)
    return atoms, hessian, nm.normal_modes(atoms, hessian, periodic=False)


def rattled_cu_cluster() -> Atoms:
    atoms = Octahedron("Cu", 2)
    atoms.center(vacuum=5.0)
    atoms.rattle(0.05, seed=1)
    return atoms


# ---------------------------------------------------------------- relaxation and Hessian


def test_relax_calls_the_reference_through_label_call(xtb):
    label_call = CountingLabelCall(xtb)
    relaxed = nm.relax(xtb, molecule("H2O"), fmax_eV_per_A=0.01, label_call=label_call)
    assert relaxed.calc is None
    assert len(label_call.purposes) >= 2 and set(label_call.purposes) == {nm.RELAX_PURPOSE}
    _, forces = nm.direct_label_call(xtb)(relaxed, "check")
    assert np.linalg.norm(forces, axis=1).max() < 0.01


def test_relax_stops_at_max_steps_and_says_so(xtb, caplog):
    start = molecule("H2O")
    start.positions[1] += [0.0, 0.2, 0.1]
    label_call = CountingLabelCall(xtb)
    with caplog.at_level(logging.INFO, logger=nm.log.name):
        nm.relax(xtb, start, fmax_eV_per_A=1e-4, max_steps=2, label_call=label_call)
    assert "stopped at max_steps=2" in caplog.text
    assert len(label_call.purposes) == 3  # the start and one per step


def test_hessian_makes_6n_calls_with_purpose_hessian(xtb, water_modes):
    atoms = water_modes[0]
    label_call = CountingLabelCall(xtb)
    nm.finite_difference_hessian(atoms, label_call=label_call)
    assert label_call.purposes == ["hessian"] * (6 * len(atoms))


def directional_force_derivative(atoms, label_call, direction, step_A):
    """-(dF/ds) along the unit vector `direction` by a central difference of step `step_A`."""
    forces = []
    for sign in (1.0, -1.0):
        moved = atoms.copy()
        moved.positions += sign * step_A * direction.reshape(-1, 3)
        forces.append(label_call(moved, "check")[1].ravel())
    return -(forces[0] - forces[1]) / (2.0 * step_A)


def test_hessian_is_symmetric_and_matches_force_derivative_to_second_order():
    # EMT is analytic, so central differences converge as step^2 down to round-off (~1e-13 eV/Å^2 here).
    atoms = rattled_cu_cluster()
    label_call = nm.direct_label_call(EMT())
    direction = np.random.default_rng(0).standard_normal(3 * len(atoms))
    direction /= np.linalg.norm(direction)
    mismatch, asymmetry = {}, {}
    for step_A in (0.01, 0.005):
        raw = nm.finite_difference_hessian(atoms, label_call=label_call, displacement_A=step_A, symmetrize=False)
        asymmetry[step_A] = np.abs(raw - raw.T).max() / np.abs(raw).max()
        hessian = nm.finite_difference_hessian(atoms, label_call=label_call, displacement_A=step_A)
        assert np.array_equal(hessian, 0.5 * (raw + raw.T))
        reference = directional_force_derivative(atoms, label_call, direction, step_A)
        mismatch[step_A] = np.linalg.norm(hessian @ direction - reference) / np.linalg.norm(reference)
    # both errors are O(step^2): halving the step divides them by ~4 (at least 2 allows for higher orders)
    assert asymmetry[0.01] < 1e-3 and asymmetry[0.005] < asymmetry[0.01] / 2
    assert mismatch[0.01] < 1e-3 and mismatch[0.005] < mismatch[0.01] / 2


# ---------------------------------------------------------------- modes


def test_water_frequencies(water_modes):
    atoms, hessian, modes = water_modes
    assert modes.n_rigid == 6 and modes.n_modes == 3 and modes.n_imaginary == 0
    bend, *stretches = modes.wavenumbers_cm
    # experiment: 1595, 3657, 3756 cm^-1; GFN2-xTB is within ~150 cm^-1 of these
    assert 1400 < bend < 1800
    assert all(3300 < w < 4000 for w in stretches)
    # ASE's own analysis of the same Hessian (no projection): the 3 highest agree at a minimum
    ase_cm = VibrationsData.from_2d(atoms, hessian).get_energies().real / units.invcm
    np.testing.assert_allclose(modes.wavenumbers_cm, np.sort(ase_cm)[-3:], atol=1.0)
    np.testing.assert_allclose(modes.vectors.T @ modes.vectors, np.eye(3), atol=1e-12)


def test_linear_co2_drops_five_rigid_modes(xtb):
    label_call = nm.direct_label_call(xtb)
    atoms = nm.relax(xtb, molecule("CO2"), fmax_eV_per_A=0.01, label_call=label_call)
    modes = nm.normal_modes(atoms, nm.finite_difference_hessian(atoms, label_call=label_call), periodic=False)
    assert modes.n_rigid == 5 and modes.n_modes == 4 and modes.n_imaginary == 0
    bend1, bend2, symmetric, asymmetric = modes.wavenumbers_cm
    assert abs(bend1 - bend2) < 1.0  # degenerate bends
    assert 400 < bend1 < symmetric < asymmetric < 3000


def test_periodic_cell_drops_the_three_translations():
    atoms = bulk("Cu", cubic=True)  # 4 atoms
    hessian = nm.finite_difference_hessian(atoms, label_call=nm.direct_label_call(EMT()))
    modes = nm.normal_modes(atoms, hessian, periodic=True)
    assert modes.n_rigid == 3 and modes.n_modes == 9 and modes.n_imaginary == 0
    translations = np.kron(np.sqrt(atoms.get_masses())[:, None], np.eye(3))
    np.testing.assert_allclose(translations.T @ modes.vectors, 0.0, atol=1e-12)
    assert modes.wavenumbers_cm.min() > 100.0  # fcc Cu phonons are 100-250 cm^-1


def diatomic(spring_eV_per_A2: float) -> tuple[Atoms, np.ndarray]:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    hessian = np.zeros((6, 6))
    hessian[np.ix_([2, 5], [2, 5])] = spring_eV_per_A2 * np.array([[1.0, -1.0], [-1.0, 1.0]])
    return atoms, hessian


def test_units_of_a_diatomic_spring():
    spring = 36.0  # eV/Å^2
    modes = nm.normal_modes(*diatomic(spring), periodic=False)
    reduced_kg = molecule("H2").get_masses()[0] / 2 * units._amu
    omega_per_s = math.sqrt(spring * units._e / 1e-20 / reduced_kg)  # SI throughout
    expected_cm = omega_per_s / (2 * math.pi * units._c * 100)
    assert modes.n_rigid == 5 and modes.n_modes == 1
    assert modes.wavenumbers_cm[0] == pytest.approx(expected_cm, rel=1e-6)


def test_soft_and_imaginary_modes_are_bounded(caplog):
    floor = nm.eigenvalue_from_wavenumber(nm.FREQUENCY_FLOOR_CM)
    soft = nm.normal_modes(*diatomic(1e-4), periodic=False)
    assert 0 < soft.wavenumbers_cm[0] < nm.FREQUENCY_FLOOR_CM
    assert soft.eigenvalues_eV_per_A2_amu[0] == floor
    with caplog.at_level(logging.WARNING, logger=nm.log.name):
        unstable = nm.normal_modes(*diatomic(-36.0), periodic=False)
    assert unstable.n_imaginary == 1 and "imaginary" in caplog.text
    stable = nm.normal_modes(*diatomic(36.0), periodic=False)
    assert unstable.eigenvalues_eV_per_A2_amu[0] == pytest.approx(stable.eigenvalues_eV_per_A2_amu[0])


def test_linear_water_is_a_saddle_with_imaginary_bends(xtb, caplog):
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.97, 0, 0], [-0.97, 0, 0]])
    hessian = nm.finite_difference_hessian(atoms, label_call=nm.direct_label_call(xtb))
    with caplog.at_level(logging.WARNING, logger=nm.log.name):
        modes = nm.normal_modes(atoms, hessian, periodic=False)
    assert modes.n_rigid == 5 and modes.n_imaginary == 2 and "imaginary" in caplog.text
    assert np.all(modes.eigenvalues_eV_per_A2_amu > 0)


# ---------------------------------------------------------------- sampling


def sample(atoms, modes, *, temperature_K, seed, count):
    sampler = nm.NormalModeSampler(atoms, modes, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    frames = [sampler.next_frame() for _ in range(count)]
    displacements = np.array([(f.atoms.positions - atoms.positions).ravel() for f in frames])
    return sampler, frames, displacements


def test_frames_follow_the_sampler_interface(water_modes):
    atoms, _, modes = water_modes
    sampler, frames, _ = sample(atoms, modes, temperature_K=300.0, seed=1, count=3)
    assert all(isinstance(f, Frame) and f.results is None and f.atoms.calc is None for f in frames)
    assert [f.md_step for f in frames] == [1, 2, 3] and sampler.step == 3
    assert np.array_equal(frames[0].atoms.numbers, atoms.numbers)


def test_mean_harmonic_energy_is_equipartition(water_modes):
    # E = 0.5 dx^T H dx with the raw Hessian; for untruncated samples E / (kB T / 2) ~ chi^2(n_modes), so the
    # mean over S samples has expectation n kB T / 2 and standard error (kB T / 2) sqrt(2 n / S).
    atoms, hessian, modes = water_modes
    temperature_K, count = 300.0, 2000
    sampler, _, dx = sample(atoms, modes, temperature_K=temperature_K, seed=2, count=count)
    assert sampler.failures == 0  # no redraw, so the distribution is not truncated
    energies = 0.5 * np.einsum("si,ij,sj->s", dx, hessian, dx)
    half_kt = units.kB * temperature_K / 2
    error = half_kt * math.sqrt(2 * modes.n_modes / count)
    assert abs(energies.mean() - modes.n_modes * half_kt) < N_SIGMA * error


def test_doubling_the_temperature_doubles_the_mean_squared_displacement(water_modes):
    # sum |dx|^2 = sum_k c_k z_k^2 with c_k = kB T |M^-1/2 u_k|^2 / omega_k^2: mean sum c, variance 2 sum c^2.
    atoms, _, modes = water_modes
    weights = np.linalg.norm(np.repeat(1 / np.sqrt(modes.masses_amu), 3)[:, None] * modes.vectors, axis=0) ** 2
    count, means, relative_errors = 2000, [], []
    for temperature_K, seed in ((300.0, 3), (600.0, 4)):
        c = units.kB * temperature_K * weights / modes.eigenvalues_eV_per_A2_amu
        _, _, dx = sample(atoms, modes, temperature_K=temperature_K, seed=seed, count=count)
        msd = (dx ** 2).sum(axis=1)
        error = math.sqrt(2 * (c ** 2).sum() / count)
        assert abs(msd.mean() - c.sum()) < N_SIGMA * error
        means.append(msd.mean())
        relative_errors.append(error / c.sum())
    ratio = means[1] / means[0]
    assert abs(ratio - 2.0) < N_SIGMA * 2.0 * math.hypot(*relative_errors)


def test_contact_guard():
    radii_sum = 2 * 0.31  # H covalent radius (ase.data.covalent_radii)
    assert nm.closest_contact_fraction(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.31]])) == pytest.approx(
        0.31 / radii_sum)
    assert nm.closest_contact_fraction(Atoms("H")) == math.inf


def test_hot_samples_are_redrawn_when_atoms_collide(water_modes):
    atoms, _, modes = water_modes
    sampler, frames, _ = sample(atoms, modes, temperature_K=40000.0, seed=5, count=200)
    assert sampler.failures > 0  # at 40000 K a few percent of the raw draws bring two atoms too close
    assert min(nm.closest_contact_fraction(f.atoms) for f in frames) >= nm.MIN_CONTACT_FRACTION


def test_bad_temperature_is_an_input_error(water_modes):
    atoms, _, modes = water_modes
    with pytest.raises(InputError, match="temperature_K"):
        nm.NormalModeSampler(atoms, modes, temperature_K=-1.0, rng=np.random.default_rng(0))


def test_state_and_restore_reproduce_the_next_frames(water_modes, tmp_path):
    atoms, _, modes = water_modes
    sampler, _, _ = sample(atoms, modes, temperature_K=40000.0, seed=6, count=20)
    json.dumps(sampler.state().to_record())
    save_record(tmp_path / "state.json", sampler.state().to_record())
    expected = [sampler.next_frame() for _ in range(5)]
    restored = nm.NormalModeSampler(atoms, modes, temperature_K=40000.0, rng=np.random.default_rng(99))
    restored.restore(SamplerState.from_record(load_record(tmp_path / "state.json")))
    assert restored.step == 20
    again = [restored.next_frame() for _ in range(5)]
    assert [f.md_step for f in again] == [f.md_step for f in expected] == [21, 22, 23, 24, 25]
    for a, b in zip(expected, again):
        assert np.array_equal(a.atoms.positions, b.atoms.positions)
    assert restored.failures == sampler.failures


# ---------------------------------------------------------------- Hessian record


def test_hessian_record_round_trip(water_modes, tmp_path):
    atoms, hessian, _ = water_modes
    record = nm.HessianRecord.from_atoms(atoms, hessian, displacement_A=0.01)
    path = tmp_path / "restart" / "hessian.npz"
    record.save_npz(path)
    assert [p.name for p in path.parent.iterdir()] == ["hessian.npz"]  # no temp file left behind
    loaded = nm.HessianRecord.load_npz(path)
    assert np.array_equal(loaded.hessian_eV_per_A2, hessian) and loaded.displacement_A == 0.01
    assert loaded.atoms() == atoms


def test_damaged_hessian_record_names_the_file(tmp_path):
    path = tmp_path / "hessian.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="hessian.npz"):
        nm.HessianRecord.load_npz(path)
