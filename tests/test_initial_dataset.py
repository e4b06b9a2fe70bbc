"""End-to-end tests of FHI_AL-initial-ds with GFN2-xTB on water and a tiny MACE ensemble."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest
from ase.io import read

from fhi_al.procedures.common import member_specs
from workflow import kill_when, ledger_ids, make_run_folder, run_cli, start_cli, stored_frames

TAGS = [spec.tag for spec in member_specs(name_exp="water", seed=1, ensemble_size=2)]


def member_sets(folder):
    sets = collections.defaultdict(set)
    for path in (folder / "data" / "initial").glob("*.xyz"):
        tag = path.stem.split("_", 1)[1]
        sets[tag] |= {atoms.info["label_id"] for atoms in read(path, index=":", format="extxyz")}
    return sets


@pytest.fixture(scope="module")
def finished_aimd_run(tmp_path_factory):
    folder = make_run_folder(tmp_path_factory.mktemp("ids") / "run")
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_members_get_disjoint_datasets(finished_aimd_run):
    sets = member_sets(finished_aimd_run)
    assert set(sets) == set(TAGS)
    assert not sets[TAGS[0]] & sets[TAGS[1]]
    # max_initial_epochs 4 / intermediate_epochs 2 = 2 rounds of n_samples 4 frames per member
    assert all(len(ids) == 8 for ids in sets.values())
    valid = read(finished_aimd_run / f"data/initial/valid_{TAGS[0]}.xyz", index=":")
    assert len(valid) == 2  # valid_ratio 0.25 of 8


def test_labels_are_reference_results(finished_aimd_run):
    from tblite.ase import TBLite

    frame = stored_frames(finished_aimd_run)[3]
    atoms = frame.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert atoms.get_potential_energy() == pytest.approx(frame.info["REF_energy"], abs=1e-5)
    # SCF restarts from the previous MD step's density, so forces agree to the SCF tolerance only
    np.testing.assert_allclose(atoms.get_forces(), frame.arrays["REF_forces"], atol=3e-4)


def test_stop_criterion_and_outputs(finished_aimd_run):
    log_text = (finished_aimd_run / "logs" / "initial_dataset.log").read_text()
    assert "Round 1:" in log_text and "Round 2:" in log_text and "Round 3:" not in log_text
    assert "Reached max_initial_epochs = 4" in log_text
    for tag in TAGS:
        assert (finished_aimd_run / "model" / f"{tag}.model").is_file()
        history = [json.loads(line) for line in (finished_aimd_run / "results" / f"{tag}_history.jsonl").open()]
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # warm start: epochs continue across rounds
    assert (finished_aimd_run / "results" / "initial_learning_curve.png").stat().st_size > 1000


def test_every_ab_initio_md_step_is_counted_as_paid(finished_aimd_run):
    from fhi_al.references.ledger import AIMD_STEP, LABEL, ReferenceCost, read_ledger

    entries = read_ledger(finished_aimd_run / "logs" / "reference_ledger.jsonl")
    steps = [e for e in entries if e["purpose"] == AIMD_STEP]
    labels = [e for e in entries if e["purpose"] == LABEL]
    assert len(labels) == 16 and all(e["calls"] == 0 for e in labels)  # read from the MD step's results
    # skip_step_initial 5: 16 frames need 80 MD steps, each one force call, plus the first call at step 0
    assert len(steps) >= 16 * 5 + 1 and all(e["calls"] == 1 for e in steps)
    cost = ReferenceCost.from_ledger(finished_aimd_run / "logs" / "reference_ledger.jsonl")
    assert cost.paid == len(steps) and cost.labels == 16
    log_text = (finished_aimd_run / "logs" / "initial_dataset.log").read_text()
    assert f"{cost.paid} reference calls paid ({cost.paid} aimd step" in log_text


def test_rerun_of_a_finished_run_does_nothing(finished_aimd_run):
    before = sorted(p.stat().st_mtime_ns for p in (finished_aimd_run / "data").rglob("*.xyz"))
    result = run_cli("FHI_AL-initial-ds", finished_aimd_run)
    assert result.returncode == 0
    assert "nothing to do" in result.stderr
    assert sorted(p.stat().st_mtime_ns for p in (finished_aimd_run / "data").rglob("*.xyz")) == before


def test_foundation_model_sampling(finished_aimd_run, tmp_path):
    """mace-mp0 mode with a local model file (the ensemble member trained above stands in for MACE-MP-0)."""
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {
        "initial_sampling": "mace-mp0", "max_initial_epochs": 2,
        "initial_foundational_size": str(finished_aimd_run / "model" / f"{TAGS[0]}.model")}})
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = stored_frames(folder)
    assert len(frames) == 8
    from tblite.ase import TBLite

    atoms = frames[0].copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)  # relabelled by the reference, not the foundation model
    assert atoms.get_potential_energy() == pytest.approx(frames[0].info["REF_energy"], abs=1e-6)
    assert "foundation MD" in (folder / "logs" / "initial_dataset.log").read_text() or len(frames) == 8


def test_missing_foundation_model_file_is_bad_input(tmp_path):
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {
        "initial_sampling": "mace-mp0", "initial_foundational_size": str(tmp_path / "nope.model")}})
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 2
    assert "initial_foundational_size" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("moment", ["sampling", "training"])
def test_sigkill_and_rerun_keeps_every_label_once(tmp_path, moment):
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {"max_initial_epochs": 6}})
    process = start_cli("FHI_AL-initial-ds", folder)
    if moment == "sampling":
        condition = lambda: len(ledger_ids(folder)) >= 3  # noqa: E731
    else:
        condition = lambda: any((folder / "results").glob("*_history.jsonl"))  # noqa: E731
    assert kill_when(process, condition), "the run ended before the kill"
    before_kill = set(ledger_ids(folder))
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(ids) == len(set(ids)), "a label was stored twice"
    assert before_kill <= set(ids), f"labels lost: {before_kill - set(ids)}"
    assert len(ids) == 24  # 3 rounds x 4 samples x 2 members
    assert "Resuming the initial dataset" in (folder / "logs" / "initial_dataset.log").read_text()
