"""A label carries its structure: built where the reference runs, with REF_* data, the reference's name and the
label id; ab initio MD labels are the step's own results (no second reference call)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.cluster import Icosahedron
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from fhi_al.cli import prepare_context
from fhi_al.labeling import (REF_ENERGY_KEY, REF_FORCES_KEY, SerialLabeler, Services, label_from_results,
                             label_structure)
from fhi_al.references import Ledger, make_reference, read_ledger
from workflow import make_run_folder


class UncachedEMT(EMT):
    """EMT that forgets its results between calls (as a library without ASE's cache would) and records the
    positions of every calculation."""

    name = "emt"

    def __init__(self):
        super().__init__()
        self.positions_computed: list[np.ndarray] = []

    def check_state(self, atoms, tol=1e-15):
        return list(all_changes)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.positions_computed.append(self.atoms.get_positions().copy())


@pytest.fixture
def water():
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    atoms.info["foreign"] = "not part of the label"
    return atoms


def test_label_carries_its_labelled_structure(water):
    calc = make_reference(name="emt")
    result = label_structure(calc, "initial-t0-s5", water)
    assert result.ok and result.atoms is not water and result.atoms.calc is None
    np.testing.assert_array_equal(result.atoms.positions, water.positions)
    np.testing.assert_array_equal(result.atoms.numbers, water.numbers)
    expected = EMT()
    water.calc = expected
    assert result.atoms.info[REF_ENERGY_KEY] == pytest.approx(water.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(result.atoms.arrays[REF_FORCES_KEY], expected.results["forces"], atol=1e-12)
    assert result.atoms.info["reference"] == "emt" and result.atoms.info["label_id"] == "initial-t0-s5"
    assert "foreign" not in result.atoms.info
    assert result.energy_eV == result.atoms.info[REF_ENERGY_KEY]


def test_a_failed_label_has_no_structure(water):
    result = label_structure(make_reference(name="emt", faults="nan=1.0"), "al-t0-s1", water)
    assert not result.ok and result.atoms is None and result.energy_eV is None
    assert "non-finite" in result.error


def test_label_from_results_checks_them_and_calls_nothing(water, tmp_path):
    forces = np.arange(9.0).reshape(3, 3)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    result = label_from_results("initial-t0-s20", water, {"energy": -1.5, "forces": forces}, reference="xtb",
                                ledger=ledger)
    assert result.ok and result.atoms.info[REF_ENERGY_KEY] == -1.5 and result.atoms.info["reference"] == "xtb"
    np.testing.assert_array_equal(result.atoms.arrays[REF_FORCES_KEY], forces)
    bad = label_from_results("initial-t0-s25", water, {"energy": -1.5, "forces": forces * np.nan}, reference="xtb",
                             ledger=ledger)
    assert not bad.ok and "non-finite" in bad.error
    assert [(entry["label_id"], entry["calls"]) for entry in read_ledger(ledger.path)] == [("initial-t0-s20", 0)]


def test_a_ledger_told_not_to_write_writes_nothing(tmp_path):
    Ledger(tmp_path / "ledger.jsonl", writes=False).record(label_id="x", energy_eV=1.0)
    assert not (tmp_path / "ledger.jsonl").exists()


def test_ab_initio_md_labels_are_the_steps_own_results(tmp_path):
    """With a reference that keeps no cache, a second call for the label would compute the frame twice."""
    from fhi_al.procedures.initial_dataset import InitialDataset

    folder = make_run_folder(tmp_path / "run", atoms=Icosahedron("Cu", 2),
                             al={"REFERENCE": {"calculator": "emt"}, "ACTIVE_LEARNING": {"skip_step_initial": 3}})
    reference = UncachedEMT()
    context = prepare_context(folder).with_services(Services(reference=reference,
                                                             labeler=SerialLabeler(reference)))
    procedure = InitialDataset(context)
    procedure.start_or_resume()
    assert procedure.sample_frame() + procedure.sample_frame() == 2
    labels = [atoms for name in procedure.store.names() for atoms in procedure.store.read(name)]
    assert sorted(atoms.info["md_step"] for atoms in labels) == [3, 6]
    computed = reference.positions_computed
    assert len(computed) >= 6
    for atoms in labels:  # (positions as stored in extxyz, to 1e-8 Å)
        times = sum(np.allclose(positions, atoms.positions, rtol=0, atol=1e-6) for positions in computed)
        assert times == 1, f"the labelled frame of step {atoms.info['md_step']} was computed {times} times"
        assert atoms.info["reference"] == "emt" and atoms.info["procedure"] == "initial"
        check = atoms.copy()
        check.calc = EMT()
        # the stored positions carry 8 decimals
        assert atoms.info[REF_ENERGY_KEY] == pytest.approx(check.get_potential_energy(), abs=1e-6)
