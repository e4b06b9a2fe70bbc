"""initial_sampling: xtb-md (issue 15): Langevin MD on GFN2-xTB samples the initial frames, a different reference
(Hartree-Fock in PySCF) labels them. The xTB steps cost no reference call; every stored label is the reference's own
result on its frame, not xTB's."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from ase.build import bulk, molecule

from fhi_al import md
from fhi_al.md import MDParameters
from fhi_al.procedures.sampling import LangevinSampler, sampling_driver
from fhi_al.references.ledger import LABEL, ReferenceCost, read_ledger
from fhi_al.references.pyscf_ref import PySCFCalculator
from fhi_al.references.xtb import METHODS, make_xtb
from fhi_al.settings.loader import load_run_settings
from fhi_al.settings.schema import XTB_METHODS
from workflow import make_run_folder, run_cli, stored_frames

N_SAMPLES = 4
ROUNDS = 2  # max_initial_epochs / intermediate_epochs
PYSCF = {"xc": "hf", "basis": "sto-3g", "conv_tol": 1e-12}  # ~0.05 s a call on water
AL_SETTINGS = {"ACTIVE_LEARNING": {"initial_sampling": "xtb-md", "initial_member_data": "shared",
                                   "n_samples": N_SAMPLES, "max_initial_epochs": 2 * ROUNDS, "intermediate_epochs": 2,
                                   "skip_step_initial": 10},
               "REFERENCE": {"calculator": "pyscf", "pyscf": PYSCF}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = make_run_folder(tmp_path_factory.mktemp("xtb_md") / "run", al=AL_SETTINGS)
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_ledger_holds_only_the_labels(run):
    entries = read_ledger(run / "logs" / "reference_ledger.jsonl")
    assert collections.Counter(e["purpose"] for e in entries) == {LABEL: N_SAMPLES * ROUNDS}  # no MD step
    assert all(e["calls"] == 1 and e["ok"] for e in entries)
    assert ReferenceCost.from_entries(entries).paid == N_SAMPLES * ROUNDS
    log_text = (run / "logs" / "initial_dataset.log").read_text()
    assert "Sampling by GFN2-xTB MD (initial_sampling: xtb-md, not reference calls)" in log_text
    assert "labelled by the reference pyscf" in log_text
    assert f"Initial dataset: {N_SAMPLES * ROUNDS} reference calls paid ({N_SAMPLES * ROUNDS} label; 0 failed)" \
        in log_text


@pytest.mark.slow
def test_labels_are_the_reference_results_not_xtb(run):
    frames = stored_frames(run)
    assert len(frames) == N_SAMPLES * ROUNDS
    reference, xtb = PySCFCalculator(**PYSCF), make_xtb()
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = reference
        # extxyz keeps positions to 1e-8 Å, and the SCF started from the previous frame's density (orbital
        # gradient converged to ~1e-6): the recomputed energy may differ by ~1e-8 eV, the forces by ~1e-6 eV/Å
        assert frame.info["REF_energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(frame.arrays["REF_forces"], atoms.get_forces(), rtol=0, atol=1e-5)
        atoms.calc = xtb
        assert abs(frame.info["REF_energy"] - atoms.get_potential_energy()) > 100.0  # another method
        assert np.abs(frame.arrays["REF_forces"] - atoms.get_forces()).max() > 0.1


@pytest.mark.slow
def test_frames_are_distinct_md_frames_with_intact_bonds(run):
    frames = stored_frames(run)
    assert len({frame.info["label_id"] for frame in frames}) == len(frames)
    for a, b in itertools.combinations(frames, 2):
        assert np.abs(a.positions - b.positions).max() > 0.01
    for frame in frames:
        oh = np.linalg.norm(frame.positions[1:] - frame.positions[0], axis=1)
        assert np.all((oh > 0.8) & (oh < 1.3))


def test_xtb_sampling_md_keeps_its_temperature():
    """The sampler on the xtb-md driver: Langevin without FixCom keeps the kinetic temperature of MD.temperature."""
    target_K, interval = 500.0, 5
    driver = sampling_driver("xtb-md", foundation="small", dtype="float64", xtb_method="GFN2-xTB")
    assert driver.name == "GFN2-xTB MD"
    sampler = LangevinSampler(molecule("CH3CH2OH"), driver.calc, rng=np.random.default_rng(1), interval_steps=interval,
                              md=MDParameters(temperature_K=target_K, timestep_fs=1.0, friction_per_fs=0.02))
    temperatures = [md.kinetic_temperature_K(sampler.next_frame().atoms) for _ in range(300)]
    assert np.mean(temperatures[30:]) == pytest.approx(target_K, rel=0.15)


def test_xtb_sampling_md_runs_npt_on_a_periodic_cell():
    """NPT needs the driver's stress (settings.machine checks stress only for aimd): tblite gives it for a cell
    periodic in three directions, so the barostat moves the cell."""
    driver = sampling_driver("xtb-md", foundation="small", dtype="float64", xtb_method="GFN1-xTB")
    silicon = bulk("Si", cubic=True)
    sampler = LangevinSampler(silicon, driver.calc, rng=np.random.default_rng(1), interval_steps=3,
                              md=MDParameters(temperature_K=500.0, timestep_fs=1.0, friction_per_fs=0.02,
                                              stat_ensemble="NPT", pdamp_fs=50.0))
    frame = sampler.next_frame()
    assert frame.results["stress"].shape == (6,)
    assert abs(frame.atoms.cell.volume - silicon.cell.volume) > 1.0


def test_xtb_methods_of_the_settings_are_tblites():
    assert XTB_METHODS == METHODS


def test_xtb_md_with_the_references_own_method_gets_a_note(tmp_path):
    folder = make_run_folder(tmp_path, al={"ACTIVE_LEARNING": {"initial_sampling": "xtb-md"}})  # both GFN2-xTB
    assert any("computed twice" in note for note in load_run_settings(folder).notes)
    cheaper = make_run_folder(tmp_path / "gfn1", al={"ACTIVE_LEARNING": {"initial_sampling": "xtb-md",
                                                                         "initial_xtb_method": "GFN1-xTB"}})
    assert not any("xtb-md" in note for note in load_run_settings(cheaper).notes)  # sampler and reference differ
    folder = make_run_folder(tmp_path / "pyscf", al=AL_SETTINGS)
    assert not any("xtb-md" in note for note in load_run_settings(folder).notes)
