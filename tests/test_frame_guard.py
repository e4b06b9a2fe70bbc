"""The frame guard of model-driven MD: its default bounds hold for healthy reference MD, and a deliberately poor
foundation model (an untrained tiny MACE) cannot put atoms too close or huge reference forces into the datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read

from fhi_al import md
from fhi_al.procedures.sampling import LangevinSampler
from fhi_al.references import make_reference
from fhi_al.references.ledger import ReferenceCost
from fhi_al.settings.schema import ActiveLearningSettings
from foundation_helpers import FOUNDATION_HYPERS, xtb_labelled
from workflow import make_run_folder, run_cli


def test_settings_defaults_are_the_guards_defaults():
    defaults = ActiveLearningSettings()
    bounds = md.FrameBounds()
    assert defaults.min_distance_fraction == bounds.min_distance_fraction == md.DEFAULT_MIN_DISTANCE_FRACTION
    assert defaults.max_reference_force == bounds.max_reference_force_eV_per_A
    assert defaults.max_temperature_factor == bounds.max_temperature_factor == md.DEFAULT_MAX_TEMPERATURE_FACTOR


@pytest.mark.parametrize("name", ["H2O", "CH3CH2OH"])
def test_default_bounds_never_reject_healthy_md(name):
    """GFN2-xTB MD at 1000 K (twice the usual sampling temperature): closest contacts stay well above
    min_distance_fraction and the largest force far below max_reference_force."""
    sampler = LangevinSampler(molecule(name), make_reference(name="xtb"), md=md.MDParameters(1000.0, 0.5, 0.01),
                              interval_steps=5, rng=np.random.default_rng(3))
    contacts, forces = [], []
    for _ in range(60):
        frame = sampler.next_frame()
        contacts.append(md.closest_contact_fraction(frame.atoms))
        forces.append(np.linalg.norm(frame.results["forces"], axis=1).max())
    assert sampler.failures == 0
    assert min(contacts) > md.DEFAULT_MIN_DISTANCE_FRACTION + 0.05
    assert max(forces) < 0.6 * md.DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A


def test_detector_rejects_atoms_too_close():
    detector = md.BlowUpDetector(target_temperature_K=300.0)
    water = molecule("H2O")
    assert detector.check(water) is None
    water.positions[1] = water.positions[0] + [0.0, 0.0, 0.6]  # O-H at 0.6 Å: 0.62 of the radii sum
    reason = detector.check(water)
    assert md.rejection_kind(reason) == md.TOO_CLOSE and "0.62" in reason
    assert md.BlowUpDetector(target_temperature_K=300.0, min_distance_fraction=None).check(water) is None


def test_reference_force_bound():
    forces = np.zeros((3, 3))
    forces[2] = [12.0, 16.0, 0.0]  # 20 eV/Å on atom 2
    assert md.reference_force_rejection(forces, 20.0) is None
    assert md.rejection_kind(md.reference_force_rejection(forces, 19.9)) == md.FORCE_ABOVE
    assert md.reference_force_rejection(forces, None) is None


def test_step_back_returns_to_the_good_frame_before_the_rejected_one():
    atoms = molecule("H2O")
    last_good = md.LastGoodFrame(atoms, step=0)
    start = atoms.get_positions()
    atoms.positions += 0.05
    last_good.record(atoms, step=5)
    last_good.step_back()
    assert last_good.state.step == 0
    np.testing.assert_allclose(last_good.state.positions, start)


def test_rejected_labels_are_paid_but_not_stored():
    entries = [{"label_id": "a", "purpose": "label", "calls": 1, "ok": True},
               {"label_id": "b", "purpose": "label", "calls": 1, "ok": True},
               {"label_id": "b", "purpose": "rejected", "calls": 0, "ok": True}]
    cost = ReferenceCost.from_entries(entries)
    assert (cost.paid, cost.labels, cost.rejected) == (2, 1, 1)
    assert "1 labels rejected by the frame guard" in cost.summary()


# ------------------------------------------------------------------------------ a poor foundation, end to end
@pytest.fixture(scope="module")
def poor_foundation(tmp_path_factory) -> Path:
    """An untrained tiny MACE (E0s and statistics from two water frames): its MD squeezes water's atoms to a
    quarter of their covalent radii sum and the reference forces to >1000 eV/Å within 40 steps at 500 K."""
    from fhi_al.architectures.mace.hypers import MaceHypers
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer

    frames = xtb_labelled("H2O", 2, seed=2, displacement_A=0.02)
    config = TrainingConfig(name_exp="poor", hypers=MaceHypers(**FOUNDATION_HYPERS), batch_size=4, scheduler="none",
                            training_plots=False)
    trainer = Trainer(config, tmp_path_factory.mktemp("poor"))
    return trainer.export(trainer.create_member("poor", 1, frames, frames))


def test_poor_foundation_frames_never_reach_the_datasets(tmp_path, poor_foundation):
    folder = make_run_folder(tmp_path / "run", al={
        "ACTIVE_LEARNING": {"initial_sampling": "mace-mp0", "initial_foundational_size": str(poor_foundation),
                            "n_samples": 6, "max_initial_epochs": 2, "initial_member_data": "shared"},
        "MD": {"temperature": 500}})
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = [atoms for path in (folder / "data").rglob("*.xyz") for atoms in read(path, index=":")]
    assert len(stored) >= 6
    for atoms in stored:
        assert md.closest_contact_fraction(atoms) >= md.DEFAULT_MIN_DISTANCE_FRACTION
        assert np.linalg.norm(atoms.arrays["REF_forces"], axis=1).max() <= md.DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A
    log_text = (folder / "logs" / "initial_dataset.log").read_text()
    summary = [line for line in log_text.splitlines() if "Frame guard:" in line]
    assert summary, "the rejections must be summarised"
    rejected_md = int(summary[-1].split("Frame guard: ")[1].split()[0])
    entries = [json.loads(line) for line in (folder / "logs" / "reference_ledger.jsonl").read_text().splitlines()]
    rejected_labels = [e for e in entries if e["purpose"] == "rejected"]
    assert rejected_md + len(rejected_labels) > 0  # the guard had work to do: the test can fail
    for entry in rejected_labels:  # each rejected label was computed (and paid) first
        assert any(e["label_id"] == entry["label_id"] and e["purpose"] == "label" for e in entries)
    assert log_text.count("back to the frame of step") >= rejected_md  # each MD rejection logged with its reason
    assert all(f"label {e['label_id']} not stored" in log_text for e in rejected_labels)


def test_label_book_rejects_a_label_above_the_force_bound(tmp_path):
    """The check active learning and the initial dataset share: the label is recorded as rejected, never stored."""
    from fhi_al.data.store import DatasetStore
    from fhi_al.labeling import LabelResult, labelled_atoms
    from fhi_al.procedures.label_book import LabelBook, Timings

    ledger = tmp_path / "ledger.jsonl"
    book = LabelBook(DatasetStore(tmp_path / "data"), None, pending={}, stage="al", template=lambda _: None,
                     save=lambda: None, timings=Timings(), bounds=md.FrameBounds(), ledger=ledger)
    water = molecule("H2O")
    calm = np.full((3, 3), 1.0)
    wild = calm.copy()
    wild[0] = [0.0, 0.0, 25.0]
    ok = LabelResult("al-t0-s5", labelled_atoms(water, energy_eV=-1.0, forces_eV_per_A=calm, reference="xtb",
                                                label_id="al-t0-s5"))
    bad = LabelResult("al-t0-s10", labelled_atoms(water, energy_eV=-1.0, forces_eV_per_A=wild, reference="xtb",
                                                  label_id="al-t0-s10"))
    assert book.rejection(ok) is None
    assert "25.0 eV/Å" in book.rejection(bad)
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["label_id"], e["purpose"], e["calls"]) for e in entries] == [("al-t0-s10", "rejected", 0)]
    assert book.rejected == 1


def test_active_learning_keeps_labels_above_the_force_bound_out(tmp_path):
    """Active learning from given data with a strict max_reference_force (2 eV/Å, below what water at 500 K
    reaches): labels above it are paid, logged and counted, never stored; the trajectories run on."""
    from ase.io import write

    from foundation_helpers import xtb_labelled

    train = tmp_path / "train.xyz"
    write(train, xtb_labelled("H2O", 6, seed=21, displacement_A=0.03), format="extxyz")
    bound = 2.0
    folder = make_run_folder(tmp_path / "run", al={
        "ACTIVE_LEARNING": {"initial_train_dataset": str(train), "max_reference_force": bound, "max_MD_steps": 100,
                            "threshold_warmup_checks": 2, "c_x": -0.5}, "MD": {"temperature": 500}})
    result = run_cli("FHI_AL-al", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = [json.loads(line) for line in (folder / "logs" / "reference_ledger.jsonl").read_text().splitlines()]
    rejected = {e["label_id"] for e in entries if e["purpose"] == "rejected"}
    assert rejected, "the bound must have rejected labels, else this test shows nothing"
    stored = [atoms for path in (folder / "data" / "al").rglob("*.xyz") for atoms in read(path, index=":")]
    assert not rejected & {atoms.info["label_id"] for atoms in stored}
    for atoms in stored:
        assert np.linalg.norm(atoms.arrays["REF_forces"], axis=1).max() <= bound
    log_text = (folder / "logs" / "AL.log").read_text()
    assert f"{len(rejected)} labels not stored" in log_text
    assert f"{len(rejected)} labels rejected by the frame guard" in log_text
