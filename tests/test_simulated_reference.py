"""REFERENCE.simulated_cost_s: a reference that sleeps (no CPU) before returning the wrapped reference's results,
recorded in the ledger like any calculation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase.build import bulk

from fhi_al.errors import SettingsError
from fhi_al.references import compute_label, make_reference, read_ledger, reference_kwargs
from fhi_al.references.simulated import SimulatedCostCalculator
from fhi_al.settings.loader import load_al_settings

COST_S = 0.6


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_it_sleeps_without_cpu_and_returns_the_inner_results(tmp_path):
    plain, slow = make_reference(name="emt"), make_reference(name="emt", simulated_cost_s=COST_S)
    assert isinstance(slow, SimulatedCostCalculator) and slow.name == plain.name == "emt"
    ledger = tmp_path / "ledger.jsonl"
    wall, cpu = time.perf_counter(), time.process_time()
    energy, forces = compute_label(slow, copper(), ledger=ledger, label_id="x")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= COST_S
    assert cpu < 0.25 * COST_S, f"the simulated cost used {cpu:.2f} s of CPU in {wall:.2f} s"
    expected_energy, expected_forces = compute_label(plain, copper())
    assert energy == pytest.approx(expected_energy, abs=1e-12)
    np.testing.assert_allclose(forces, expected_forces, atol=1e-12)
    assert np.abs(forces).max() > 1e-3  # a rattled cell: the forces compared are not all zero
    (entry,) = read_ledger(ledger)
    assert entry["calls"] == 1 and entry["reference"] == "emt" and entry["duration_s"] >= COST_S


def test_stress_passes_through():
    atoms = copper()
    atoms.calc = make_reference(name="emt", simulated_cost_s=0.01)
    stress = atoms.get_stress()
    atoms.calc = make_reference(name="emt")
    np.testing.assert_allclose(stress, atoms.get_stress(), atol=1e-12)


def test_settings_key(tmp_path):
    path = tmp_path / "active_learning_settings.yaml"
    path.write_text("REFERENCE:\n  calculator: emt\n  simulated_cost_s: 2.5\n")
    assert reference_kwargs(load_al_settings(path))["simulated_cost_s"] == 2.5
    path.write_text("REFERENCE:\n  simulated_cost_s: -1\n")
    with pytest.raises(SettingsError, match="REFERENCE.simulated_cost_s"):
        load_al_settings(path)
    path.write_text("REFERENCE:\n  calculator: emt\n")
    assert reference_kwargs(load_al_settings(path))["simulated_cost_s"] is None
