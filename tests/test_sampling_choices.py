"""End-to-end: the cheap initial dataset and the selection options of issue 15 in one short FHI_AL run with
GFN2-xTB water: normal-mode sampling (no ab initio MD), initial frames shared by all members, and labels spaced
along each trajectory. What is asserted is what the options promise, read back from the run's files."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from ase.io import read

from fhi_al.procedures.common import member_specs
from fhi_al.references.ledger import AIMD_STEP, HESSIAN, LABEL, RELAXATION, ReferenceCost, read_ledger
from workflow import make_run_folder, run_cli

pytestmark = pytest.mark.slow

TAGS = [spec.tag for spec in member_specs(name_exp="water", seed=1, ensemble_size=2)]
SPACING = 15
AL_SETTINGS = {"ACTIVE_LEARNING": {"initial_sampling": "normal-modes", "initial_member_data": "shared",
                                   "label_spacing_steps": SPACING, "skip_step_mlff": 3, "n_samples": 4,
                                   "max_initial_epochs": 4, "intermediate_epochs": 2, "max_MD_steps": 120,
                                   "uncert_not_crossed_limit": 4, "c_x": -0.5}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = make_run_folder(tmp_path_factory.mktemp("choices") / "run", al=AL_SETTINGS)
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_normal_mode_sampling_pays_one_hessian_and_no_md(run):
    entries = read_ledger(run / "logs" / "reference_ledger.jsonl")
    purposes = collections.Counter(e["purpose"] for e in entries)
    assert purposes[AIMD_STEP] == 0
    assert purposes[HESSIAN] == 6 * 3  # central differences for 3 atoms x 3 directions
    assert purposes[RELAXATION] >= 1
    initial = [e for e in entries if e["purpose"] == LABEL and e["label_id"].startswith("initial")]
    assert len(initial) == 2 * 4 and all(e["calls"] == 1 for e in initial)  # 2 rounds x n_samples, shared
    cost = ReferenceCost.from_ledger(run / "logs" / "reference_ledger.jsonl")
    assert cost.paid == purposes[RELAXATION] + purposes[HESSIAN] + cost.labels + cost.failed
    assert (run / "restart" / "initial_ds" / "hessian.npz").is_file()
    log_text = (run / "logs" / "initial_dataset.log").read_text()
    assert "Normal modes: 3 vibrational" in log_text


def test_sampled_frames_are_distinct_harmonic_displacements(run):
    frames = read(run / "data" / "initial" / "train_shared.xyz", index=":")
    frames += read(run / "data" / "initial" / "valid_shared.xyz", index=":")
    positions = np.array([f.get_positions() for f in frames])
    assert len({f.info["label_id"] for f in frames}) == len(frames) == 8
    spread = positions.std(axis=0).max()
    assert 0.005 < spread < 0.3  # displaced at 500 K, but no bond broken
    bond = np.linalg.norm(positions[:, 1] - positions[:, 0], axis=1)
    assert np.all((bond > 0.8) & (bond < 1.2))


def test_every_member_trains_on_every_shared_initial_frame(run):
    assert not list((run / "data" / "initial").glob(f"train_{TAGS[0]}*"))
    shared = {a.info["label_id"] for a in read(run / "data" / "initial" / "train_shared.xyz", index=":")}
    for tag in TAGS:
        final = {a.info["label_id"] for a in read(run / "data" / "final" / f"train_{tag}.xyz", index=":")}
        assert shared <= final


def test_labels_of_a_trajectory_are_spaced(run):
    frames = []
    for name in ("train", "valid"):
        path = run / "data" / "al" / f"{name}.xyz"
        frames += read(path, index=":") if path.is_file() else []
    steps = collections.defaultdict(list)
    for atoms in frames:
        steps[atoms.info["trajectory"]].append(atoms.info["md_step"])
    assert sum(len(v) for v in steps.values()) >= 2
    for trajectory_steps in steps.values():
        assert np.all(np.diff(sorted(trajectory_steps)) >= SPACING)
