"""End-to-end exploration on water with GFN2-xTB: a temperature ladder with replica exchange (trajectories 0 and 1),
a trajectory driven by the uncertainty bias and well-tempered metadynamics on the H-O-H angle (trajectory 2),
an absolute threshold on the calibrated uncertainty; then a kill during the biased MD and a rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from workflow import kill_when, ledger_ids, make_run_folder, run_cli, start_cli, stored_frames

pytestmark = pytest.mark.slow

PACE = 10
THRESHOLD, UPPER = 0.05, 5.0
AL = {"ACTIVE_LEARNING": {"num_trajectories": 3, "replica_exchange_steps": 10, "threshold_mode": "absolute",
                          "threshold_eV_per_A": THRESHOLD, "upper_threshold_eV_per_A": UPPER, "max_MD_steps": 120,
                          "initial_sampling": "xtb-md"}}
MD = {0: {"temperature": 400, "friction": 0.01, "seed": 3}, 1: {"temperature": 800, "friction": 0.01},
      2: {"temperature": 500, "friction": 0.01, "bias": "uncertainty",
          "metadynamics": {"cvs": [{"angle": [1, 0, 2]}], "biasfactor": 5, "pace": PACE}}}


def exploration_folder(path):
    folder = make_run_folder(path, al=AL)
    settings_path = folder / "active_learning_settings.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings["MD"] = MD  # per trajectory, replacing the tiny settings' single block
    settings_path.write_text(yaml.safe_dump(settings))
    return folder


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    folder = exploration_folder(tmp_path_factory.mktemp("explore") / "run")
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_calibration_is_written_with_coverage_and_history(explored):
    record = json.loads((explored / "results" / "calibration.json").read_text())
    fit = next(iter(record["systems"].values()))
    assert fit["scale"] > 0 and fit["n_frames"] >= 1
    for key in ("coverage_68", "coverage_95", "coverage_68_raw", "coverage_95_raw", "miscalibration_area",
                "miscalibration_area_raw"):
        assert 0.0 <= fit[key] <= 1.0, key
    assert len(record["history"]) >= 2  # the start of active learning and at least one refit after training
    assert (explored / "results" / "calibration.png").stat().st_size > 0


def test_absolute_threshold_decides_on_the_calibrated_value(explored):
    checks = [c for c in read_lines(explored / "analysis" / "uncertainty_checks.jsonl") if c["uncertainty"] is not None]
    scales = {round(entry_scale, 9) for entry in json.loads((explored / "results" / "calibration.json").read_text())
              ["history"] for entry_scale in (s["scale"] for s in entry["systems"].values())}
    assert checks
    for check in checks:
        calibrated = check["uncertainty_calibrated_eV_per_A"]
        assert round(calibrated / check["uncertainty"], 9) in scales  # expected error = fitted scale × spread
        assert check["threshold"] == THRESHOLD
        if check["decision"] == "crossed":
            assert THRESHOLD < calibrated <= UPPER
        elif check["decision"] == "none":
            assert calibrated <= THRESHOLD
        elif check["decision"] == "too_uncertain":
            assert calibrated > UPPER


def test_only_the_biased_trajectory_carries_a_bias_and_its_hills_follow_the_pace(explored):
    checks = read_lines(explored / "analysis" / "uncertainty_checks.jsonl")
    assert all(("bias_energy_eV" in c) == (c["trajectory"] == 2) for c in checks if c["uncertainty"] is not None)
    hills = read_lines(explored / "restart" / "al" / "hills_2.jsonl")
    steps = [hill["step"] for hill in hills]
    assert len(hills) >= 5 and len(steps) == len(set(steps)) and all(step % PACE == 0 for step in steps)
    heights = [hill["height_eV"] for hill in hills]
    assert heights[0] == pytest.approx(0.02) and min(heights[1:]) < heights[0]  # well-tempered: heights shrink
    assert not (explored / "restart" / "al" / "hills_0.jsonl").exists()


def test_replica_exchange_reports_acceptance_per_pair(explored):
    report = json.loads((explored / "results" / "replica_exchange.json").read_text())
    assert report["ladders"] == [[0, 1]]
    pair = report["pairs"]["0-1"]
    assert pair["attempts"] >= 3 and 0 <= pair["accepted"] <= pair["attempts"]
    log = "".join(p.read_text() for p in (explored / "logs").glob("*.log"))
    assert "Replica exchange 0-1 (400 K <-> 800 K)" in log


def test_labels_of_the_biased_trajectory_are_bare_reference_calculations(explored):
    from tblite.ase import TBLite

    biased = [f for f in stored_frames(explored) if str(f.info.get("label_id", "")).startswith("al-t2-")]
    assert biased, "the biased trajectory sent no frame to the reference"
    bias_forces = [c["bias_force_max_eV_per_A"] for c in read_lines(explored / "analysis" / "uncertainty_checks.jsonl")
                   if c["trajectory"] == 2 and "bias_force_max_eV_per_A" in c]
    assert np.median(bias_forces) > 0.01  # the bias is large next to the tolerance below (SCF, file precision)
    for frame in biased[:3]:
        atoms = frame.copy()
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        np.testing.assert_allclose(frame.arrays["REF_forces"], atoms.get_forces(), atol=1e-3)
        assert frame.info["REF_energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)


def test_kill_during_biased_md_keeps_hills_and_labels(tmp_path):
    folder = exploration_folder(tmp_path / "run")
    assert run_cli("FHI_AL-initial-ds", folder).returncode == 0
    hills_path = folder / "restart" / "al" / "hills_2.jsonl"
    process = start_cli("FHI_AL", folder)
    assert kill_when(process, lambda: hills_path.exists() and len(hills_path.read_text().splitlines()) >= 3)
    before_hills = {hill["step"] for hill in read_lines(hills_path)}
    before_labels = set(ledger_ids(folder))
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [hill["step"] for hill in read_lines(hills_path)]
    assert before_hills <= set(steps) and len(steps) == len(set(steps)), "a hill was lost or deposited twice"
    ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(ids) == len(set(ids)), "a label was stored twice"
    assert before_labels <= set(ids), "a label was lost"
    log = "".join(p.read_text() for p in (folder / "logs").glob("*.log"))
    assert "Resuming active learning" in log and "hills of 0.02 eV every 10 steps" in log
