"""Helpers for end-to-end tests: a run folder with tiny settings, console scripts run as subprocesses,
killing a run at a chosen moment, and reading back what the run stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from ase.build import molecule
from ase.io import read, write

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_MACE = {
    "GENERAL": {"name_exp": "water", "seed": 1},
    "ARCHITECTURE": {"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0, "num_interactions": 2,
                     "correlation": 2, "radial_MLP": [16], "MLP_irreps": "8x0e"},
    "TRAINING": {"batch_size": 4, "valid_batch_size": 8, "lr": 0.01},
}
TINY_AL = {
    "ACTIVE_LEARNING": {"desired_acc": 0.001, "lambda": 2, "n_samples": 4, "valid_ratio": 0.25,
                        "ensemble_size": 2, "intermediate_epochs": 2, "max_initial_epochs": 4,
                        "skip_step_initial": 5, "skip_step_mlff": 5, "num_trajectories": 2,
                        "max_MD_steps": 150, "max_epochs_worker": 2, "max_set_size": 100,
                        "threshold_warmup_checks": 4, "uncert_not_crossed_limit": 8, "c_x": -0.1,
                        "converge_al": False,
                        "initial_member_data": "split"},  # the tests were written for per-member frames
    "MD": {"temperature": 500, "timestep": 0.5, "friction": 0.01, "seed": 3},
    "REFERENCE": {"calculator": "xtb"},
}


def deep_update(base: dict, changes: dict) -> dict:
    merged = json.loads(json.dumps(base))
    for section, values in changes.items():
        merged.setdefault(section, {}).update(values)
    return merged


def make_run_folder(folder: Path, *, mace: dict | None = None, al: dict | None = None, atoms=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(deep_update(TINY_MACE, mace or {})))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(deep_update(TINY_AL, al or {})))
    write(folder / "geometry.in", atoms if atoms is not None else molecule("H2O"), format="aims")
    return folder


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def run_cli(command: str, folder: Path, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), "--run-dir", str(folder), *args], capture_output=True, text=True,
                          env=env(), timeout=timeout_s)


def start_cli(command: str, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / command), "--run-dir", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env(), start_new_session=True)


def kill_when(process: subprocess.Popen, condition, *, timeout_s: float = 300, poll_s: float = 0.05) -> bool:
    """SIGKILL the process group once `condition()` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(poll_s)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    raise TimeoutError("condition never held")


def stored_frames(folder: Path) -> list:
    frames = []
    for path in sorted((folder / "data").rglob("*.xyz")):
        if "final" in path.parts:
            continue
        frames.extend(read(path, index=":", format="extxyz"))
    return frames


def ledger_ids(folder: Path) -> list[str]:
    """Completed labels in the run's ledger (MD steps, Hessians, analysis, failed calls and labels the frame guard
    rejected left out)."""
    path = folder / "logs" / "reference_ledger.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # torn by a kill
            continue
    rejected = {entry["label_id"] for entry in entries if entry.get("purpose") == "rejected"}  # the frame guard's
    return [entry["label_id"] for entry in entries
            if entry.get("purpose", "label") == "label" and entry.get("ok", True) and entry["label_id"] not in rejected]


def count_lines(path: Path, text: str) -> int:
    return sum(text in line for line in path.read_text().splitlines()) if path.exists() else 0


def world():
    """MPI_COMM_WORLD of an MPI test (mpiexec -n N python -m pytest --with-mpi)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def on_rank_0(work) -> None:
    """Run `work` (set-up or assertions) on rank 0 only, then fail on every rank if it failed there: a failure on
    rank 0 alone would leave the other ranks waiting in the next collective call, and the suite would hang."""
    import pytest

    failure = None
    if world().rank == 0:
        try:
            work()
        except Exception as exc:  # an AssertionError, or whatever the set-up raised
            failure = exc
    message = world().bcast(None if failure is None else f"{type(failure).__name__}: {failure}", root=0)
    if failure is not None:
        raise failure
    if message is not None:
        pytest.fail(f"failed on rank 0: {message}", pytrace=False)


def run_everywhere(main, folder) -> int:
    """Run a console script's main in-process on every rank; every rank must agree on the exit status."""
    status = main(["--run-dir", str(folder)])
    statuses = world().allgather(status)
    assert len(set(statuses)) == 1, statuses
    return status
