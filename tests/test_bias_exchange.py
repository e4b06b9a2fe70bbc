"""The uncertainty bias and replica exchange, pinned by physics: bias forces are −∇ of the bias energy, the bias is
bounded and vanishes where the members agree, the biased calculator adds exactly the bias; the exchange rule
obeys detailed balance and a swap keeps each replica at its own temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from fhi_al.md.bias import (BiasedCalculator, UncertaintyBias, energy_variance_and_gradient, model_results,
                            width_from_spread)
from fhi_al.md.exchange import ReplicaExchange, acceptance_probability, ladders, swap_configurations
from fhi_al.md.dynamics import kinetic_temperature_K


class LJCommittee(Calculator):
    """A committee of Lennard-Jones potentials with different parameters: energies and forces of each member,
    like the ensemble calculator's energy_comm and forces_comm."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, sigmas=(1.0, 1.05, 0.97), epsilons=(1.0, 0.9, 1.1)):
        super().__init__()
        self.members = [LennardJones(sigma=s, epsilon=e, rc=4.0, smooth=True) for s, e in zip(sigmas, epsilons)]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = [], []
        for member in self.members:
            copy = self.atoms.copy()
            copy.calc = member
            energies.append(copy.get_potential_energy())
            forces.append(copy.get_forces())
        energy_comm, forces_comm = np.array(energies), np.array(forces)
        self.results = {"energy": float(energy_comm.mean()), "free_energy": float(energy_comm.mean()),
                        "forces": forces_comm.mean(axis=0), "energy_comm": energy_comm, "forces_comm": forces_comm}


def cluster(seed: int = 0, n: int = 5) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 2.4, size=(n, 3))
    while True:  # no pair closer than 0.95 (LJ stays finite and smooth)
        d = np.linalg.norm(positions[:, None] - positions[None], axis=2) + 10 * np.eye(n)
        if d.min() > 0.95:
            return Atoms("Ar" * n, positions=positions)
        positions = rng.uniform(0.0, 2.6, size=(n, 3))


def numerical_gradient(energy, atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    gradient = np.zeros((len(atoms), 3))
    base = atoms.get_positions()
    for a in range(len(atoms)):
        for c in range(3):
            shifted = base.copy()
            shifted[a, c] += h
            atoms.set_positions(shifted)
            plus = energy(atoms)
            shifted[a, c] -= 2 * h
            atoms.set_positions(shifted)
            minus = energy(atoms)
            gradient[a, c] = (plus - minus) / (2 * h)
    atoms.set_positions(base)
    return gradient


def committee_results(atoms: Atoms) -> dict:
    calc = LJCommittee()
    calc.calculate(atoms)
    return calc.results


def test_energy_variance_gradient_is_the_derivative_of_the_variance():
    atoms = cluster(1)
    variance, gradient = energy_variance_and_gradient(**{k: committee_results(atoms)[k]
                                                         for k in ("energy_comm", "forces_comm")})
    assert variance > 0
    numerical = numerical_gradient(lambda a: float(np.var(committee_results(a)["energy_comm"])), atoms)
    np.testing.assert_allclose(gradient, numerical, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("width_eV", [0.02, 0.2])
def test_uncertainty_bias_forces_are_minus_the_gradient_of_its_energy(width_eV):
    atoms = cluster(2)
    bias = UncertaintyBias(strength_eV=0.3, width_eV=width_eV)
    energy, forces = bias.energy_forces(atoms, committee_results(atoms))
    numerical = numerical_gradient(lambda a: bias.energy_forces(a, committee_results(a))[0], atoms)
    np.testing.assert_allclose(forces, -numerical, rtol=1e-5, atol=1e-8)
    assert -0.3 <= energy <= 0.0


def test_the_bias_is_bounded_and_vanishes_where_the_members_agree():
    atoms = cluster(3)
    bias = UncertaintyBias(strength_eV=0.5, width_eV=0.05)
    agreeing = {"energy_comm": np.array([-1.0, -1.0, -1.0]), "forces_comm": np.zeros((3, len(atoms), 3))}
    energy, forces = bias.energy_forces(atoms, agreeing)
    assert energy == 0.0 and np.all(forces == 0.0)
    disagreeing = {"energy_comm": np.array([-100.0, 0.0, 100.0]), "forces_comm": np.ones((3, len(atoms), 3))}
    energy, forces = bias.energy_forces(atoms, disagreeing)
    assert energy == pytest.approx(-0.5)  # saturated at the depth
    assert np.abs(forces).max() < 1e-12  # and flat there: no pull into ever larger variance
    with pytest.raises(ValueError):
        UncertaintyBias(strength_eV=0.0, width_eV=0.1)


def test_biased_calculator_adds_the_bias_and_keeps_the_model_results():
    atoms = cluster(4)
    bias = UncertaintyBias(strength_eV=0.3, width_eV=0.05)
    atoms.calc = BiasedCalculator(LJCommittee(), [bias])
    total = atoms.get_potential_energy()
    results = atoms.calc.results
    model_energy, model_forces = model_results(results)
    plain = committee_results(atoms)
    assert model_energy == pytest.approx(plain["energy"])
    np.testing.assert_allclose(model_forces, plain["forces"])
    assert total == pytest.approx(model_energy + results["bias_energy"])
    assert results["bias_energy"] < 0.0
    assert "forces_comm" in results  # the uncertainty check still reads the members' forces
    numerical = numerical_gradient(lambda a: a.get_potential_energy(), atoms)
    np.testing.assert_allclose(atoms.get_forces(), -numerical, rtol=1e-5, atol=1e-7)


def test_a_new_hill_refreshes_the_cached_forces_without_a_model_evaluation():
    from fhi_al.md.colvars import CollectiveVariable
    from fhi_al.md.metadynamics import Metadynamics

    atoms = cluster(7)
    metadynamics = Metadynamics([CollectiveVariable("distance", (0, 1))], height_eV=0.05, sigma=[0.2], pace_steps=1,
                                biasfactor=None, temperature_K=300.0)
    committee = LJCommittee()
    atoms.calc = BiasedCalculator(committee, [metadynamics])
    metadynamics.deposit(atoms, step=1)
    positions = atoms.get_positions()
    positions[0] += [0.1, 0.0, 0.0]
    atoms.set_positions(positions)  # off the first hill's centre, where it has a slope
    energy_before = atoms.get_potential_energy()
    metadynamics.deposit(atoms, step=2)  # a second hill here: the energy rises by its height
    atoms.calc.refresh_bias()
    refreshed = atoms.get_forces().copy()  # from the cache: the positions did not change
    assert atoms.get_potential_energy() == pytest.approx(energy_before + 0.05)
    atoms.calc.reset()
    np.testing.assert_allclose(refreshed, atoms.get_forces(), atol=1e-12)


def test_width_from_spread_scales_the_rms_and_has_a_floor():
    assert width_from_spread([0.01, 0.01]) == pytest.approx(0.02)
    assert width_from_spread([]) == pytest.approx(1e-4)
    assert width_from_spread([3.0, 4.0], factor=1.0) == pytest.approx(math.sqrt(12.5))


# ------------------------------------------------------------------------------------------ replica exchange
def test_exchange_probability_obeys_detailed_balance():
    rng = np.random.default_rng(0)
    for _ in range(50):
        e_x, e_y = rng.normal(0.0, 0.3, size=2)
        t_i, t_j = sorted(rng.uniform(200.0, 1000.0, size=2))
        beta_i, beta_j = 1 / (units.kB * t_i), 1 / (units.kB * t_j)
        forward = math.exp(-beta_i * e_x - beta_j * e_y) * acceptance_probability(e_x, e_y, t_i, t_j)
        backward = math.exp(-beta_i * e_y - beta_j * e_x) * acceptance_probability(e_y, e_x, t_i, t_j)
        assert forward == pytest.approx(backward, rel=1e-9)
    assert acceptance_probability(-2.0, -1.0, 300.0, 600.0) < 1.0  # the cold replica would take a higher energy
    assert acceptance_probability(-1.0, -2.0, 300.0, 600.0) == 1.0


def test_a_swap_keeps_each_replica_at_its_temperature():
    rng = np.random.default_rng(1)
    cold, hot = cluster(5, 8), cluster(6, 8)
    for atoms, temperature in ((cold, 300.0), (hot, 900.0)):
        masses = atoms.get_masses()[:, None]
        atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature))
    cold_t, hot_t = kinetic_temperature_K(cold), kinetic_temperature_K(hot)
    cold_positions = cold.get_positions()
    swap_configurations(cold, hot, 300.0, 900.0)
    np.testing.assert_allclose(hot.get_positions(), cold_positions)
    assert kinetic_temperature_K(cold) == pytest.approx(hot_t * 300.0 / 900.0)
    assert kinetic_temperature_K(hot) == pytest.approx(cold_t * 900.0 / 300.0)


def test_ladders_group_and_order_by_temperature():
    assert ladders([600, 300, 900, 300], ["a", "a", "a", "b"]) == [[1, 0, 2]]
    assert ladders([300, 300], [None, "a"]) == []


def test_rounds_alternate_pairs_and_the_state_survives_a_restart():
    exchange = ReplicaExchange(10)
    assert not exchange.due([9, 12]) and exchange.due([10, 12])
    atoms = {i: cluster(i, 4) for i in range(3)}
    temperatures = [300.0, 450.0, 675.0]
    energies = {0: -1.0, 1: -1.0, 2: -1.0}  # equal energies: every attempt is accepted
    rng = np.random.default_rng(0)
    first = exchange.attempt([0, 1, 2], energies, temperatures, atoms, rng)
    exchange.advance()
    second = exchange.attempt([0, 1, 2], energies, temperatures, atoms, rng)
    assert [(i, j) for i, j, _ in first] == [(0, 1)] and [(i, j) for i, j, _ in second] == [(1, 2)]
    assert all(accepted for *_, accepted in first + second)
    restored = ReplicaExchange.from_state_dict(exchange.state_dict(), 10)
    assert restored.summary() == exchange.summary() and restored.next_step == 20 and restored.parity == 1
    assert exchange.summary()["0-1"]["acceptance"] == 1.0
    late = ReplicaExchange(50)
    late.advance(step=421)  # the ladder's slowest trajectory was far past the due step: no burst of rounds
    assert late.next_step == 450 and not late.due([430, 445]) and late.due([450, 460])
    assert ReplicaExchange(10, parity=1).round_pairs([4, 2]) == [(4, 2)]  # a ladder of two tries its pair every round
    assert ReplicaExchange(10, parity=1).round_pairs([0, 1, 2, 3]) == [(1, 2)]


def test_exchange_samples_boltzmann_weights_of_two_states():
    """Two replicas hold one of two configurations of energies 0 and ε; by exchange alone the cold replica must
    hold the low-energy one with the ratio of the Boltzmann factors of the pair (detailed balance in action)."""
    t_cold, t_hot, epsilon = 300.0, 600.0, 0.02
    beta_c, beta_h = 1 / (units.kB * t_cold), 1 / (units.kB * t_hot)
    rng = np.random.default_rng(3)
    cold_has_low, count = True, 0
    steps = 40000
    for _ in range(steps):
        e_cold, e_hot = (0.0, epsilon) if cold_has_low else (epsilon, 0.0)
        if rng.random() < acceptance_probability(e_cold, e_hot, t_cold, t_hot):
            cold_has_low = not cold_has_low
        count += cold_has_low
    weight_low = math.exp(-beta_h * epsilon)  # cold at 0, hot at ε
    weight_high = math.exp(-beta_c * epsilon)  # cold at ε, hot at 0
    assert count / steps == pytest.approx(weight_low / (weight_low + weight_high), abs=0.01)


# ------------------------------------------------------------------------------------------ thresholds from settings
def test_a_restart_record_of_the_other_threshold_mode_is_refused_naming_the_key():
    from types import SimpleNamespace

    from fhi_al.errors import InputError
    from fhi_al.procedures.al_thresholds import make_thresholds
    from fhi_al.settings.schema import ActiveLearningSettings
    from fhi_al.settings.typed import build_section
    from fhi_al.uncertainty import AbsoluteThreshold, ThresholdTracker

    moving = build_section(ActiveLearningSettings, {}, "ACTIVE_LEARNING")
    absolute = build_section(ActiveLearningSettings, {"threshold_mode": "absolute", "threshold_eV_per_A": 0.04,
                                                      "upper_threshold_eV_per_A": 1.0}, "ACTIVE_LEARNING")
    systems = [SimpleNamespace(name="water")]
    fresh = make_thresholds(absolute, systems, None, record="state.json")
    tracker = fresh.tracker("water")
    assert isinstance(tracker, AbsoluteThreshold) and tracker.threshold == 0.04 and tracker.upper_bound == 1.0
    saved = make_thresholds(moving, systems, None, record="state.json")
    assert isinstance(saved.tracker("water"), ThresholdTracker)
    with pytest.raises(InputError, match="ACTIVE_LEARNING.threshold_mode"):
        make_thresholds(absolute, systems, saved.state_dict(), record="state.json")
