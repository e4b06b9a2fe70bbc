"""End-to-end tests of FHI_AL (initial dataset, then active learning) with GFN2-xTB on water."""

from __future__ import annotations

import json
import re

import pytest
from ase.io import read

from fhi_al.procedures.common import member_specs
from workflow import kill_when, ledger_ids, make_run_folder, run_cli, start_cli, stored_frames

TAGS = [spec.tag for spec in member_specs(name_exp="water", seed=1, ensemble_size=2)]
AL_SETTINGS = {"ACTIVE_LEARNING": {"n_samples": 6, "max_initial_epochs": 20, "intermediate_epochs": 10,
                                   "max_epochs_worker": 4, "skip_step_initial": 10, "max_MD_steps": 100,
                                   "analysis": True, "analysis_skip": 20}}
MACE_SETTINGS = {"TRAINING": {"batch_size": 2}}
CONSOLE_FILE = "console.txt"  # the run's stderr, next to the run folder
FIXED_CONSOLE_LINES = 25  # besides one line per AL label: start, rounds, summaries, warnings (3 per kind at most)


def checks(folder):
    return [json.loads(line) for line in (folder / "analysis" / "uncertainty_checks.jsonl").open()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = make_run_folder(tmp_path_factory.mktemp("al") / "run", mace=MACE_SETTINGS, al=AL_SETTINGS)
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder.parent / CONSOLE_FILE).write_text(result.stderr)
    return folder


def test_labels_come_from_threshold_crossings(finished_run):
    al_frames = read(finished_run / "data/al/train.xyz", index=":") + read(finished_run / "data/al/valid.xyz",
                                                                          index=":")
    requested = {(c["trajectory"], c["md_step"]) for c in checks(finished_run)
                 if c["decision"] in ("crossed", "forced", "blow-up")}
    stored = {(a.info["trajectory"], a.info["md_step"]) for a in al_frames}
    assert stored and stored <= requested
    crossed = [c for c in checks(finished_run) if c["decision"] == "crossed"]
    assert crossed and all(c["uncertainty"] > c["threshold"] for c in crossed)
    warmup = checks(finished_run)[:4]
    assert all(c["threshold"] is None for c in warmup)  # threshold_warmup_checks = 4


def test_datasets_grew_and_members_trained_with_warm_start(finished_run):
    for tag in TAGS:
        initial = len(read(finished_run / f"data/initial/train_{tag}.xyz", index=":"))
        final = len(read(finished_run / f"data/final/train_{tag}.xyz", index=":"))
        assert final > initial
        epochs = [json.loads(line)["epoch"] for line in (finished_run / f"results/{tag}_history.jsonl").open()]
        assert epochs == list(range(1, len(epochs) + 1))  # AL continues the initial epochs: never re-initialised
        assert len(epochs) > 20


def test_outputs_present(finished_run):
    for name in ("al_learning_curve.png", "uncertainty_trace.png", "labels_per_trajectory.png",
                 "initial_learning_curve.png"):
        assert (finished_run / "results" / name).stat().st_size > 1000
    assert (finished_run / "analysis" / "calibration.png").is_file()
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=[str(finished_run / "model" / f"{tag}.model") for tag in TAGS],
                          device="cpu", default_dtype="float64")
    atoms = read(finished_run / "geometry.in")
    atoms.calc = calc
    assert abs(atoms.get_potential_energy()) > 0
    summary = [line for line in (finished_run / "logs").glob("*.log") for line in line.read_text().splitlines()
               if "Active learning finished" in line]
    assert summary and "labels" in summary[0] and "training" in summary[0]


def test_console_has_rounds_labels_and_summary_and_the_log_has_the_epochs(finished_run):
    console = (finished_run.parent / CONSOLE_FILE).read_text().splitlines()
    logged = "".join(path.read_text() for path in (finished_run / "logs").glob("*.log")).splitlines()
    per_epoch = re.compile(r"water_\d+ epoch \d+: loss")
    assert not [line for line in console if per_epoch.search(line)]
    assert sum(bool(per_epoch.search(line)) for line in logged) > 20
    labels = len(read(finished_run / "data/al/train.xyz", index=":")) + len(read(finished_run / "data/al/valid.xyz",
                                                                                index=":"))
    assert sum(" stored in " in line for line in console) == labels
    for text in ("Round 1:", "Initial dataset complete", "Active learning finished", "Models: model/water_"):
        assert any(text in line for line in console), text
    assert len(console) <= labels + FIXED_CONSOLE_LINES, "\n".join(console)


def test_trained_ensemble_beats_its_threshold_on_md_frames(finished_run):
    """The ensemble mean's force error on unseen reference frames is modest after AL (tiny model, water)."""
    import numpy as np
    from tblite.ase import TBLite

    from fhi_al.ensemble import EnsembleCalculator

    calc = EnsembleCalculator.from_files([finished_run / "model" / f"{tag}.model" for tag in TAGS])
    frames = read(finished_run / "data/al/valid.xyz", index=":")
    errors = []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - frame.arrays["REF_forces"]).mean())
    assert np.mean(errors) < 0.3  # eV/Å; an untrained model is off by > 1 eV/Å on these frames


def test_sigkill_at_several_moments_then_rerun(tmp_path):
    folder = make_run_folder(tmp_path / "run", mace=MACE_SETTINGS, al=AL_SETTINGS)
    assert run_cli("FHI_AL-initial-ds", folder).returncode == 0
    moments = {  # killed once a label is paid but maybe not stored, then while members train on labels
        "reference": lambda: sum(i.startswith("al-") for i in ledger_ids(folder)) >= 2,
        "training": lambda: sum(i.startswith("al-") for i in ledger_ids(folder)) >= 4,
    }
    for name, condition in moments.items():
        process = start_cli("FHI_AL", folder)
        assert kill_when(process, condition), f"the run ended before the kill at {name}"
    before = set(ledger_ids(folder))
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(ids) == len(set(ids)), "a label was stored twice"
    assert before <= set(ids) | {i for i in before if i.startswith("analysis-")}, "a label was lost"
    assert {i for i in ids if i.startswith("al-")}
    assert "Resuming active learning" in "".join(p.read_text() for p in (folder / "logs").glob("*.log"))


def test_every_label_is_paid_and_analysis_is_counted_apart(finished_run):
    from fhi_al.references.ledger import ANALYSIS, LABEL, ReferenceCost, read_ledger

    entries = read_ledger(finished_run / "logs" / "reference_ledger.jsonl")
    al_labels = [e for e in entries if e["purpose"] == LABEL and e["label_id"].startswith("al-")]
    # an analysis point at a labelled frame must not hide the label's cost in the analysis count
    assert al_labels and all(e["calls"] == 1 for e in al_labels)
    analysis = [e for e in entries if e["purpose"] == ANALYSIS]
    assert analysis and all(e["label_id"].startswith("analysis-") for e in analysis)
    cost = ReferenceCost.from_ledger(finished_run / "logs" / "reference_ledger.jsonl")
    assert cost.calls[ANALYSIS] == sum(e["calls"] for e in analysis)
    assert cost.paid == sum(e["calls"] for e in entries if e["purpose"] != ANALYSIS)
    assert "analysis-mode calls (not part of the cost)" in (finished_run / "logs" / "AL.log").read_text()


def test_the_learning_curve_per_system_is_recorded_along_active_learning(finished_run):
    """A single-system run records its system's validation force MAE after every label's training, with the
    reference calls paid so far, and draws the learning curve per system."""
    from fhi_al.procedures.system_metrics import CURVE_FILE, METRICS_FILE
    from fhi_al.references.ledger import ReferenceCost

    entries = json.loads((finished_run / "results" / METRICS_FILE).read_text())
    initial = [e for e in entries if e["stage"] == "initial"]
    al = [e for e in entries if e["stage"] == "al"]
    assert initial and all(set(e["forces_mae"]) == {"geometry"} for e in entries)
    al_labels = len(read(finished_run / "data/al/train.xyz", index=":")) + len(
        read(finished_run / "data/al/valid.xyz", index=":"))
    assert len(al) >= 2 + min(al_labels, 1)  # start, after a label's training, end
    calls = [e["reference_calls"] for e in entries]
    assert calls == sorted(calls) and calls[-1] == ReferenceCost.from_ledger(
        finished_run / "logs" / "reference_ledger.jsonl").paid
    assert al[-1]["labels"] == al_labels and al[-1]["labels_stored"] == initial[-1]["labels_stored"] + al_labels
    assert all(0 < e["forces_mae"]["geometry"] < 5 for e in entries)
    assert (finished_run / "results" / CURVE_FILE).stat().st_size > 1000
