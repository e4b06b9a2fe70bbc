"""Reliability: SIGKILL chaos cycles, reference fault injection, exploding MD, the run lock and a full disk.

The chaos runs (SIGKILL at random moments, 20 cycles per mode) are scripts/chaos.py; here its invariant check, and
kills at named moments are in test_initial_dataset.py and test_active_learning.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read

from fhi_al.md import BlowUpDetector, kinetic_temperature_K
from fhi_al.procedures.sampling import MDParameters
from fhi_al.procedures.trajectories import make_trajectories
from workflow import BIN, REPO, env, make_run_folder, run_cli, start_cli

sys.path.insert(0, str(REPO / "scripts"))
import chaos  # noqa: E402

SHORT = {"ACTIVE_LEARNING": {"n_samples": 3, "max_initial_epochs": 2, "max_MD_steps": 60}}
LABEL_ID = re.compile(r"\b(initial|al)-t\d+-s\d+\b")
MD_STEP = re.compile(r"ab initio MD step \d+")
INJECTED = "fhi_al.references.faults: injected fault"
TARGET_K = 300.0
MD = MDParameters(temperature_K=TARGET_K, timestep_fs=0.5, friction_per_fs=0.01)


def log_lines(folder: Path) -> list[str]:
    return [line for name in ("initial_dataset.log", "AL.log") if (folder / "logs" / name).exists()
            for line in (folder / "logs" / name).read_text().splitlines()]


def all_frames(folder: Path) -> list:
    return [atoms for path in sorted((folder / "data").rglob("*.xyz")) for atoms in read(path, index=":")]


# ------------------------------------------------------------------------------------------ chaos
def test_chaos_check_sees_a_lost_and_a_duplicated_label(tmp_path):
    """The invariant check itself can fail: a ledger label missing from the data, and one stored twice."""
    folder = make_run_folder(tmp_path / "run")
    (folder / "logs").mkdir()
    from fhi_al.data.store import DatasetStore, label_atoms
    from fhi_al.references.ledger import Ledger

    store, ledger = DatasetStore(folder / "data"), Ledger(folder / "logs" / "reference_ledger.jsonl")
    water = molecule("H2O")
    for label_id in ("initial-t0-s5", "initial-t0-s10", "initial-t0-s15"):
        ledger.record(label_id=label_id, energy_eV=-1.0)
    frame = label_atoms(water, energy_eV=-1.0, forces_eV_per_A=np.zeros((3, 3)), procedure="initial",
                        trajectory=0, md_step=5, reference="xtb", label_id="initial-t0-s5")
    store.append("initial/train_x", [frame, frame])
    result = chaos.check(folder, final=False)
    assert result["duplicated"] == ["initial-t0-s5"]
    assert result["lost"] == ["initial-t0-s10", "initial-t0-s15"]
    from fhi_al.restart import save_record

    save_record(folder / "restart/initial_ds/state.json", {"pending": {"initial-t0-s10": {}}})
    assert chaos.check(folder, final=False)["lost"] == ["initial-t0-s15"]  # s10 is pending: not yet acknowledged
    assert chaos.check(folder, final=True)["lost"] == ["initial-t0-s10", "initial-t0-s15"]


# ------------------------------------------------------------------------------------------ faults
def fault_run(folder: Path, command: str, faults: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), "--run-dir", str(folder)], capture_output=True, text=True,
                          env={**env(), "FHI_AL_FAULTS": faults}, timeout=900)


def fault_events(lines: list[str]) -> list[tuple[str, str]]:
    """(injected fault line, the warning right after it) pairs: each fault must be handled at once."""
    warnings = [line for line in lines if " WARNING " in line and (INJECTED in line or "failed" in line
                                                                    or "frame skipped" in line)]
    return [(line, warnings[i + 1] if i + 1 < len(warnings) else "")
            for i, line in enumerate(warnings) if INJECTED in line]


def assert_every_fault_handled_and_named(folder: Path) -> dict[str, int]:
    events = fault_events(log_lines(folder))
    kinds = {"error": 0, "nan": 0, "hang": 0}
    for fault, handled in events:
        kinds[re.search(r"injected fault (\w+)", fault).group(1)] += 1
        assert handled and INJECTED not in handled, f"fault not handled before the next one:\n{fault}\n{handled}"
        assert LABEL_ID.search(handled) or MD_STEP.search(handled), f"no structure named:\n{handled}"
    return kinds


@pytest.mark.slow
def test_ten_percent_reference_errors_and_nan_forces(tmp_path):
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {
        **SHORT["ACTIVE_LEARNING"], "reference_timeout_s": 5.0}})
    result = fault_run(folder, "FHI_AL", "error=0.1,nan=0.05,seed=4")
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = assert_every_fault_handled_and_named(folder)
    assert kinds["error"] >= 2 and kinds["nan"] >= 1, kinds
    skipped = [line for line in log_lines(folder) if "frame skipped" in line]
    assert all(LABEL_ID.search(line) for line in skipped)
    frames = all_frames(folder)
    assert frames and all(np.isfinite(a.arrays["REF_forces"]).all() and np.isfinite(a.info["REF_energy"])
                          for a in frames)
    check = chaos.check(folder, final=True)
    assert not chaos.violations(check), check


@pytest.mark.slow
def test_hanging_reference_times_out_and_the_run_completes(tmp_path):
    hang_s = 120
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {
        **SHORT["ACTIVE_LEARNING"], "reference_timeout_s": 2.0}})  # xTB water takes ~0.05 s
    started = time.monotonic()
    result = fault_run(folder, "FHI_AL-initial-ds", f"hang=0.1,hang_s={hang_s},seed=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < hang_s  # not one hang ran its course
    kinds = assert_every_fault_handled_and_named(folder)
    assert kinds["hang"] >= 2, kinds
    timeouts = [line for line in log_lines(folder) if "exceeded the timeout of 2.0 s" in line]
    assert len(timeouts) == kinds["hang"]
    assert len(all_frames(folder)) == 6


# ------------------------------------------------------------------------------------------ exploding MD
class SpringCalculator(Calculator):
    """Harmonic springs to reference positions; selected calls return NaN/inf forces or push one atom away."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, positions, *, k_eV_per_A2: float = 5.0, bad_calls=(), bad: str = "nan",
                 push_atom: int = 1, push_eV_per_A: float = 300.0):
        super().__init__()
        self.x0 = np.array(positions)
        self.k = k_eV_per_A2
        self.bad_calls, self.bad = set(bad_calls), bad
        self.push_atom, self.push = push_atom, push_eV_per_A
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        displacement = self.atoms.get_positions() - self.x0
        forces = -self.k * displacement
        if self.calls in self.bad_calls:
            if self.bad == "push":
                forces[self.push_atom] = [self.push, 0.0, 0.0]
            else:
                forces[:] = np.nan if self.bad == "nan" else np.inf
        self.results = {"energy": 0.5 * self.k * float(np.sum(displacement**2)), "forces": forces}


def trajectory_with(calc_kwargs: dict):
    water = molecule("H2O")
    calc = SpringCalculator(water.get_positions(), **calc_kwargs)
    return make_trajectories([water], calc, mds=[MD], seed=5)[0], calc


def assert_reset_to_start(trajectory, start_positions, caplog, reason_text: str, reason: str | None):
    assert reason is not None and reason_text in reason, reason
    np.testing.assert_allclose(trajectory.atoms.get_positions(), start_positions)  # the last good frame (step 0)
    assert np.isfinite(trajectory.atoms.get_momenta()).all()
    assert trajectory.resets == 1 and trajectory.step == 10  # the step counter keeps running
    assert any("back to the frame of step 0 with fresh velocities" in r.getMessage() and reason_text in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    detector = BlowUpDetector(target_temperature_K=TARGET_K)
    assert trajectory.advance(10, detector) is None  # the run goes on from the reset frame
    assert trajectory.step == 20 and trajectory.last_good.state.step == 20
    assert trajectory.resets == 1


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_forces_reset_to_the_last_good_frame(bad, caplog):
    trajectory, calc = trajectory_with({"bad_calls": {4}, "bad": bad})
    start = trajectory.atoms.get_positions()
    before = trajectory.atoms.get_momenta()
    with caplog.at_level(logging.WARNING):
        reason = trajectory.advance(10, BlowUpDetector(target_temperature_K=TARGET_K))
        assert not np.allclose(trajectory.atoms.get_momenta(), before)  # fresh velocities
        assert_reset_to_start(trajectory, start, caplog, "non-finite", reason)
    assert calc.calls > 4


def test_atom_flying_away_resets_the_trajectory(caplog):
    trajectory, _ = trajectory_with({"bad_calls": set(range(2, 12)), "bad": "push"})
    start = trajectory.atoms.get_positions()
    with caplog.at_level(logging.WARNING):
        reason = trajectory.advance(10, BlowUpDetector(target_temperature_K=TARGET_K))
        assert_reset_to_start(trajectory, start, caplog, "farther than 5.0 Å from all others", reason)


def test_overheating_resets_with_velocities_at_the_target_temperature(caplog):
    trajectory, _ = trajectory_with({})
    start = trajectory.atoms.get_positions()
    trajectory.atoms.set_momenta(trajectory.atoms.get_momenta() * 10)  # 100 x the kinetic temperature
    with caplog.at_level(logging.WARNING):
        reason = trajectory.advance(10, BlowUpDetector(target_temperature_K=TARGET_K))
        assert kinetic_temperature_K(trajectory.atoms) < 5 * TARGET_K
        assert_reset_to_start(trajectory, start, caplog, "kinetic temperature", reason)


def test_model_exception_is_a_reset_not_a_crash(caplog):
    class Broken(SpringCalculator):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            if self.calls == 3:
                raise RuntimeError("model exploded")

    water = molecule("H2O")
    trajectory = make_trajectories([water], Broken(water.get_positions()), mds=[MD], seed=5)[0]
    with caplog.at_level(logging.WARNING):
        reason = trajectory.advance(10, BlowUpDetector(target_temperature_K=TARGET_K))
    assert "model evaluation failed: RuntimeError: model exploded" in reason
    np.testing.assert_allclose(trajectory.atoms.get_positions(), water.get_positions())
    assert trajectory.advance(5, BlowUpDetector(target_temperature_K=TARGET_K)) is None


# ------------------------------------------------------------------------------------------ run lock
@pytest.mark.slow
def test_second_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    # active learning that only the kill below ends: the first run must still hold its lock while the second
    # command starts up, however slowly a loaded machine imports torch and mace
    endless = {"ACTIVE_LEARNING": {**SHORT["ACTIVE_LEARNING"], "max_MD_steps": 10**7, "desired_acc": 0.0,
                                   "max_set_size": 10**6}}
    folder = make_run_folder(tmp_path / "run", al=endless)
    lock = folder / ".fhi_al.lock"
    first = start_cli("FHI_AL", folder)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert lock.exists() and first.poll() is None
        second = run_cli("FHI_AL", folder)
        assert second.returncode == 3, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
        message = errors[0]
        assert f"PID {first.pid}" in message and str(lock) in message, message
        assert first.poll() is None  # the running run is untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # left behind by the killed run
    rerun = run_cli("FHI_AL-initial-ds", folder)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"taking over a stale lock left by process {first.pid}" in rerun.stderr
    assert not lock.exists()
    ids = [a.info["label_id"] for a in all_frames(folder)]
    assert len(ids) == len(set(ids))
    assert sum(i.startswith("initial-") for i in ids) == 6  # 2 members x 3 samples x 1 round


# ------------------------------------------------------------------------------------------ disk full
DISK_FULL_AFTER = 4  # dataset appends that succeed before the disk is "full"
FULL_DISK_RUN = """
import errno, sys
import fhi_al.data.store as store
real, calls = store.append_durable, [0]
def append_on_a_full_disk(path, text):
    calls[0] += 1
    if calls[0] > {after}:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    real(path, text)
store.append_durable = append_on_a_full_disk
from fhi_al.cli import main_initial_dataset
sys.exit(main_initial_dataset(["--run-dir", sys.argv[1]]))
"""


@pytest.mark.slow
def test_full_disk_on_dataset_write_exits_2_and_the_rerun_resumes(tmp_path):
    folder = make_run_folder(tmp_path / "run", al=SHORT)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_RUN.format(after=DISK_FULL_AFTER), str(folder)],
                            capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "No space left on device" in errors[0] and "data/initial/" in errors[0] and "rerun" in errors[0]
    frames = all_frames(folder)  # every file parses: no partial frame
    assert len(frames) == DISK_FULL_AFTER
    assert not (folder / "restart" / "done").exists()
    rerun = run_cli("FHI_AL-initial-ds", folder)  # space freed
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    check = chaos.check(folder, final=True)
    assert not chaos.violations(check) and check["labels_stored"] == 6, check
