"""Reference calculators: forces are -dE/dx, units, failures become ReferenceError, fault injection, ledger."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase import units
from ase.units import Bohr, Hartree

from fhi_al.errors import InputError, ReferenceError, SettingsError
from fhi_al.references import (FaultSpec, Ledger, compute_label, make_reference, parse_faults, read_ledger,
                               reference_from_settings, reference_kwargs)
from fhi_al.references.faults import ENV_VAR, FaultInjectingCalculator
from fhi_al.references.ledger import (AIMD_STEP, ANALYSIS, CountingCalculator, ReferenceCost,
                                     ledger_label_ids)

FD_STEP_A = 1e-3
PYSCF_FAST = {"xc": "lda,vwn", "basis": "sto-3g"}


@pytest.fixture
def distorted_water() -> Atoms:
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(7).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def finite_difference_forces(calc, atoms, components=None, step_A=FD_STEP_A):
    """Central differences of compute_label energies for (atom, axis) components (default: all)."""
    components = components or [(i, k) for i in range(len(atoms)) for k in range(3)]
    forces = np.zeros((len(atoms), 3))
    for i, k in components:
        energies = []
        for sign in (1, -1):
            shifted = atoms.copy()
            shifted.positions[i, k] += sign * step_A
            energies.append(compute_label(calc, shifted)[0])
        forces[i, k] = -(energies[0] - energies[1]) / (2 * step_A)
    return forces, components


def assert_forces_match_fd(calc, atoms, *, atol, components=None):
    _, forces = compute_label(calc, atoms)
    fd, components = finite_difference_forces(calc, atoms, components)
    rows, cols = zip(*components)
    assert np.abs(forces[rows, cols]).max() > 0.05, "test geometry should have sizeable forces"
    np.testing.assert_allclose(forces[rows, cols], fd[rows, cols], atol=atol)


# ---- xtb -------------------------------------------------------------------------------------------------

def test_xtb_forces_are_minus_energy_gradient(distorted_water):
    assert_forces_match_fd(make_reference(name="xtb"), distorted_water, atol=1e-4)


def test_xtb_options_reach_tblite(water):
    gfn2 = compute_label(make_reference(name="xtb", options={"method": "GFN2-xTB"}), water)[0]
    gfn1 = compute_label(make_reference(name="xtb", options={"method": "GFN1-xTB"}), water)[0]
    assert abs(gfn1 - gfn2) > 1.0  # different parametrisations: known to differ by ~19 eV on water
    hot = make_reference(name="xtb", options={"electronic_temperature_K": 5000.0, "accuracy": 0.5})
    assert hot.parameters.electronic_temperature == 5000.0 and hot.parameters.accuracy == 0.5


def test_xtb_scf_failure_is_reference_error_and_recoverable(distorted_water):
    failing = make_reference(name="xtb", options={"max_iterations": 1})
    with pytest.raises(ReferenceError, match="SCF not converged") as info:
        compute_label(failing, distorted_water, label_id="t0-s1")
    assert info.value.calculator == "xtb" and "t0-s1" in info.value.structure
    failing.set(max_iterations=250)
    energy, forces = compute_label(failing, distorted_water)
    assert np.isfinite(energy) and np.all(np.isfinite(forces))


def test_unknown_xtb_method_names_the_key():
    with pytest.raises(SettingsError) as info:
        make_reference(name="xtb", options={"method": "GFN3-xTB"})
    assert info.value.where == "REFERENCE.xtb.method"


# ---- pyscf ------------------------------------------------------------------------------------------------

def test_pyscf_forces_are_minus_energy_gradient(distorted_water):
    assert_forces_match_fd(make_reference(name="pyscf", options=PYSCF_FAST), distorted_water, atol=2e-4,
                           components=[(0, 2), (1, 1), (2, 0), (2, 2)])


def test_pyscf_open_shell_uses_unrestricted_and_matches_pyscf():
    from pyscf import gto, scf

    oh = Atoms("OH", positions=[(0, 0, 0), (0, 0, 1.0)])
    calc = make_reference(name="pyscf", options={"xc": "HF", "basis": "sto-3g", "spin": 1})
    energy, forces = compute_label(calc, oh)
    mol = gto.M(atom="O 0 0 0; H 0 0 1.0", basis="sto-3g", spin=1, verbose=0)
    mf = scf.UHF(mol)
    mf.conv_tol = 1e-9
    direct_Ha = mf.kernel()
    assert energy == pytest.approx(direct_Ha * Hartree, abs=1e-6)
    gradient = mf.nuc_grad_method().kernel()
    np.testing.assert_allclose(forces, -gradient * Hartree / Bohr, atol=1e-5)
    assert forces[0, 2] == pytest.approx(-forces[1, 2])  # Newton's third law for a diatomic
    fd, _ = finite_difference_forces(calc, oh, [(1, 2)])
    assert forces[1, 2] == pytest.approx(fd[1, 2], abs=2e-4)


def test_pyscf_non_converged_scf_is_reference_error(water):
    calc = make_reference(name="pyscf", options={**PYSCF_FAST, "max_cycle": 1})
    with pytest.raises(ReferenceError, match="did not converge"):
        compute_label(calc, water)


# ---- generic behaviour --------------------------------------------------------------------------------------

def test_labels_are_raw_forces_not_constraint_adjusted(distorted_water):
    atoms = distorted_water.copy()
    atoms.set_constraint(FixAtoms(indices=[0]))
    _, forces = compute_label(make_reference(name="xtb"), atoms)
    assert np.linalg.norm(forces[0]) > 0.1
    assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-6)  # raw forces of a free molecule sum to zero


def test_emt_matches_ase(distorted_water):
    reference = distorted_water.copy()
    reference.calc = EMT()
    energy, forces = compute_label(make_reference(name="emt"), distorted_water)
    assert energy == pytest.approx(reference.get_potential_energy())
    np.testing.assert_allclose(forces, reference.get_forces())


def test_unknown_calculator_names_the_key():
    with pytest.raises(InputError) as info:
        make_reference(name="vasp")
    assert info.value.where == "REFERENCE.calculator"


def test_reference_from_settings_reads_sections(tmp_path, water):
    settings = SimpleNamespace(al=SimpleNamespace(
        reference=SimpleNamespace(calculator=None, xtb=SimpleNamespace(method="GFN1-xTB", max_iterations=50)),
        active_learning=SimpleNamespace(aims_lib_path=None, species_dir=None)))
    assert reference_kwargs(settings)["name"] == "xtb"  # no aims_lib_path: xtb is the default
    calc = reference_from_settings(settings, tmp_path)
    assert calc.parameters.method == "GFN1-xTB" and calc.parameters.max_iterations == 50
    settings.al.active_learning.aims_lib_path = str(tmp_path / "missing.so")
    assert reference_kwargs(settings)["name"] == "aims"
    with pytest.raises(InputError) as info:
        reference_from_settings(settings, tmp_path)
    assert "aims_lib_path" in info.value.where


# ---- faults and timeout --------------------------------------------------------------------------------------

def test_timeout_interrupts_a_hanging_reference(water):
    calc = make_reference(name="emt", faults=FaultSpec(hang=1.0, hang_s=30.0))
    started = time.perf_counter()
    with pytest.raises(ReferenceError, match="timeout"):
        compute_label(calc, water, timeout_s=0.3)
    assert time.perf_counter() - started < 5.0
    assert compute_label(make_reference(name="emt"), water, timeout_s=5.0)[0] > 0  # no stray alarm left


def test_nan_forces_never_pass(water):
    calc = make_reference(name="emt", faults="nan=1.0")
    with pytest.raises(ReferenceError, match="non-finite"):
        compute_label(calc, water)


def test_fault_fractions_are_honoured_and_nothing_bad_passes(distorted_water):
    # The timeout only has to separate a 5 s hang from a sub-millisecond EMT call; it is generous so that a
    # loaded machine cannot turn a genuine call into a timeout.
    calls, spec = 400, FaultSpec(error=0.1, nan=0.1, hang=0.05, hang_s=5.0, seed=3)
    calc = make_reference(name="emt", faults=spec)
    assert isinstance(calc, FaultInjectingCalculator)
    injected_before = 0
    for step in range(calls):
        atoms = distorted_water.copy()
        atoms.positions[0, 0] += 1e-3 * step
        try:
            energy, forces = compute_label(calc, atoms, timeout_s=0.25)
            failed = False
        except ReferenceError:
            failed = True
        injected = calc.counts["error"] + calc.counts["nan"] + calc.counts["hang"]
        assert failed == (injected > injected_before), f"call {step}: failed={failed}, counts={calc.counts}"
        injected_before = injected
        if not failed:
            assert np.isfinite(energy) and np.all(np.isfinite(forces))
    for name, fraction in (("error", spec.error), ("nan", spec.nan), ("hang", spec.hang)):
        sigma = np.sqrt(calls * fraction * (1 - fraction))
        assert abs(calc.counts[name] - calls * fraction) < 4 * sigma, calc.counts


def test_fault_env_var_and_bad_specs(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "error=0.5,seed=2")
    assert isinstance(make_reference(name="emt"), FaultInjectingCalculator)
    monkeypatch.delenv(ENV_VAR)
    assert not isinstance(make_reference(name="emt"), FaultInjectingCalculator)
    assert parse_faults("error=0.1,nan=0.05,hang=0.02,seed=1") == FaultSpec(error=0.1, nan=0.05, hang=0.02, seed=1)
    for bad in ("errors=0.1", "error=abc", "error=0.7,nan=0.7", "nan=-0.1"):
        with pytest.raises(SettingsError) as info:
            parse_faults(bad)
        assert info.value.where == ENV_VAR


# ---- ledger ------------------------------------------------------------------------------------------------

def test_ledger_records_every_calculation_with_its_purpose(tmp_path, water):
    ledger_path = tmp_path / "ledger.jsonl"
    good = make_reference(name="emt")
    energy, _ = compute_label(good, water, ledger=ledger_path, label_id="initial-t0-s0")
    with pytest.raises(ReferenceError):
        compute_label(make_reference(name="emt", faults="error=1.0"), water, ledger=ledger_path, label_id="x")
    # same structure, same calculator: its cached results are the label, no new calculation
    compute_label(good, water, ledger=Ledger(ledger_path), label_id="initial-t0-s1")
    shifted = water.copy()
    shifted.positions[0, 0] += 0.05
    compute_label(good, shifted, ledger=ledger_path, label_id="analysis-t0-s5", purpose=ANALYSIS)
    with open(ledger_path, "a") as handle:
        handle.write('{"label_id": "torn')  # a kill during an append
    entries = read_ledger(ledger_path)
    assert [entry["label_id"] for entry in entries] == ["initial-t0-s0", "x", "initial-t0-s1", "analysis-t0-s5"]
    assert [entry["calls"] for entry in entries] == [1, 1, 0, 1]
    assert [entry["ok"] for entry in entries] == [True, False, True, True]
    assert entries[1]["energy_eV"] is None
    assert entries[0]["energy_eV"] == pytest.approx(energy) and entries[0]["reference"] == "emt"
    assert json.loads(ledger_path.read_text().splitlines()[0])["n_atoms"] == 3
    assert ledger_label_ids(ledger_path) == ["initial-t0-s0", "initial-t0-s1"]
    cost = ReferenceCost.from_ledger(ledger_path)
    assert cost.paid == 2 and cost.failed == 1 and cost.labels == 2 and cost.calls[ANALYSIS] == 1
    assert "2 reference calls paid" in cost.summary() and "1 analysis-mode" in cost.summary()


def test_old_ledger_lines_without_purpose_are_labels(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"label_id": "al-t0-s3", "energy_eV": -1.0, "time": 1.0, "pid": 1}\n')
    assert ledger_label_ids(path) == ["al-t0-s3"]
    assert ReferenceCost.from_ledger(path).paid == 1


def test_counting_calculator_records_every_md_step_and_failure(tmp_path, water):
    from ase.md.verlet import VelocityVerlet

    ledger_path = tmp_path / "ledger.jsonl"
    atoms = water.copy()
    atoms.calc = CountingCalculator(make_reference(name="emt"), ledger=ledger_path, purpose=AIMD_STEP)
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(7)
    entries = read_ledger(ledger_path)
    assert len(entries) == atoms.calc.count == 8  # the first force call and one per step
    assert {e["purpose"] for e in entries} == {AIMD_STEP} and ledger_label_ids(ledger_path) == []
    failing = water.copy()
    failing.calc = CountingCalculator(make_reference(name="emt", faults="error=1.0"), ledger=ledger_path,
                                      purpose=AIMD_STEP)
    with pytest.raises(ReferenceError):
        failing.get_forces()
    cost = ReferenceCost.from_ledger(ledger_path)
    assert cost.calls[AIMD_STEP] == 9 and cost.failed == 1 and cost.paid == 9 and cost.labels == 0