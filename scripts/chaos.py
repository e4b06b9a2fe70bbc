"""Chaos test: FHI_AL (GFN2-xTB, water, tiny settings) SIGKILLed at random moments and rerun, N cycles,
in serial mode or in parallel mode under `mpiexec -n 3`; after every kill the datasets are checked
against the reference ledger (logs/reference_ledger.jsonl, one fsynced line per completed label).

Invariants checked after every cycle (the run is dead, nothing is repaired before the check):
  - every label in the ledger is in the datasets (data/initial, data/al) exactly once, or its frame is still
    pending in a restart record (computed, not yet acknowledged: it must be stored by a later run);
  - no label is stored twice; every dataset file parses with ase.io (extxyz); no NaN in any label;
  - every checkpoint loads with torch.load.
A run that ends before its kill is checked as final: exit 0 and every ledger label stored. Then a fresh
folder (the next "episode") starts. After the last cycle an uninterrupted rerun must finish with exit 0.

With --explore, trajectory 1 runs with the uncertainty bias and well-tempered metadynamics on the H-O-H angle
(xtb-md initial sampling), and every check also reads its hills (restart/al/hills_1.jsonl): none deposited twice,
none lost between two kills of the same folder.

Usage: python scripts/chaos.py --mode serial --cycles 20 [--seed 0] [--expected-s 60] [--ml-ranks 2] [--explore]
With --ml-ranks N > 1 the members train on N ML ranks (serial mode: `mpiexec -n N`; parallel mode: N ML ranks
and one reference group).
Writes scripts/results/chaos_{mode}.json and chaos_{mode}.png (chaos_{mode}_ml{N}.* with --ml-ranks N > 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "scripts" / "results"
sys.path.insert(0, str(REPO / "tests"))

from workflow import make_run_folder  # noqa: E402

CHAOS_AL = {"ACTIVE_LEARNING": {"n_samples": 3, "max_initial_epochs": 4, "intermediate_epochs": 2,
                                "max_MD_steps": 100, "max_epochs_worker": 2}}
MPI_RANKS = 3
ML_RANKS = 1  # set by --ml-ranks
EXPLORE = False  # set by --explore
EXPLORE_MD = {0: {"temperature": 500, "friction": 0.01, "seed": 3},
              1: {"temperature": 500, "friction": 0.01, "bias": "uncertainty",
                  "metadynamics": {"cvs": [{"angle": [1, 0, 2]}], "pace": 10, "biasfactor": 5}}}
HILLS = Path("restart") / "al" / "hills_1.jsonl"
MIN_DELAY_S = 1.0
RUN_TIMEOUT_S = 900.0
DATA_STAGES = ("initial", "al")  # data/final is rewritten whole at the end, from the members' sets
RECORDS = ("restart/initial_ds/state.json", "restart/al/state.json")
LEDGER = Path("logs") / "reference_ledger.jsonl"


# ------------------------------------------------------------------------------------------ running
def mpi_ranks(mode: str) -> int:
    if mode == "parallel":
        return MPI_RANKS if ML_RANKS == 1 else ML_RANKS + 1
    return ML_RANKS


def command(mode: str, folder: Path) -> list[str]:
    fhi_al = [str(BIN / "FHI_AL"), "--run-dir", str(folder)]
    if mpi_ranks(mode) > 1:
        return [str(BIN / "mpiexec"), "-n", str(mpi_ranks(mode)), *fhi_al]
    return fhi_al


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def start(mode: str, folder: Path, log_path: Path) -> subprocess.Popen:
    handle = open(log_path, "ab")
    return subprocess.Popen(command(mode, folder), stdout=handle, stderr=subprocess.STDOUT, env=child_env(),
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (mpiexec's proxy and ranks live in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the run's whole process tree at once, as a node failure or a scheduler would."""
    tree = descendants(process.pid)
    for pid in [process.pid, *tree]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_until(process: subprocess.Popen, delay_s: float) -> int | None:
    """Exit status if the run ends within `delay_s`, else None after SIGKILLing its process group."""
    try:
        return process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return None


# ------------------------------------------------------------------------------------------ checks
def ledger_ids(folder: Path) -> list[str]:
    from fhi_al.references.ledger import ledger_label_ids

    return ledger_label_ids(folder / LEDGER)


def dataset_files(folder: Path) -> list[Path]:
    return sorted(p for stage in DATA_STAGES for p in (folder / "data" / stage).glob("*.xyz"))


def read_datasets(folder: Path) -> tuple[list[str], list[str], int]:
    """(stored label ids, problems, frames with non-finite labels) of every dataset file, read with ase.io."""
    from ase.io import read

    ids, problems, non_finite = [], [], 0
    for path in dataset_files(folder):
        if path.stat().st_size == 0:
            continue
        try:
            frames = read(path, index=":", format="extxyz")
        except Exception as error:  # noqa: BLE001 - any parse failure is a damaged file
            problems.append(f"{path.relative_to(folder)}: unparsable ({type(error).__name__}: {error})")
            continue
        for atoms in frames:
            ids.append(str(atoms.info.get("label_id")))
            forces = atoms.arrays.get("REF_forces")
            if forces is None or not np.isfinite(forces).all() or not math.isfinite(atoms.info["REF_energy"]):
                non_finite += 1
    return ids, problems, non_finite


def pending_ids(folder: Path) -> set[str]:
    """Label ids whose frames are waiting for (or holding) a label in a restart record."""
    from fhi_al.restart import load_record

    pending: set[str] = set()
    for name in RECORDS:
        record = load_record(folder / name)
        if not record:
            continue
        pending |= set((record.get("pending") or {}).keys())
        for trajectory in record.get("trajectories") or []:
            if trajectory.get("pending"):
                pending.add(trajectory["pending"]["label_id"])
    return pending


def checkpoint_problems(folder: Path) -> tuple[int, list[str]]:
    import torch

    paths = sorted((folder / "checkpoints").glob("*.pt"))
    problems = []
    for path in paths:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001
            problems.append(f"{path.name}: {type(error).__name__}: {error}")
    return len(paths), problems


def check(folder: Path, *, final: bool) -> dict:
    """Invariants of a run folder after a kill (final=False) or after a completed run (final=True)."""
    ledger = set(ledger_ids(folder))
    stored, problems, non_finite = read_datasets(folder)
    stored_set = set(stored)
    duplicated = sorted({i for i in stored if stored.count(i) > 1})
    pending = pending_ids(folder)
    unacknowledged = sorted((ledger - stored_set) & pending)
    lost = sorted(ledger - stored_set - (set() if final else pending))
    n_checkpoints, bad_checkpoints = checkpoint_problems(folder)
    hills, hill_problems = hill_steps(folder)
    return {"hills": hills, "hill_problems": hill_problems, "labels_in_ledger": len(ledger),
            "labels_stored": len(stored), "lost": lost, "duplicated": duplicated,
            "unacknowledged": unacknowledged, "stored_not_in_ledger": sorted(stored_set - ledger),
            "file_problems": problems, "non_finite_frames": non_finite, "checkpoints": n_checkpoints,
            "checkpoint_problems": bad_checkpoints}


def hill_steps(folder: Path) -> tuple[list[int], list[str]]:
    """Steps of the biased trajectory's hills, and problems (a hill twice; a torn line other than the last)."""
    path = folder / HILLS
    if not path.exists():
        return [], []
    lines = path.read_text().splitlines()
    steps, problems = [], []
    for number, line in enumerate(lines):
        try:
            steps.append(int(json.loads(line)["step"]))
        except (json.JSONDecodeError, KeyError, ValueError):
            if number != len(lines) - 1:
                problems.append(f"{HILLS} line {number + 1} unreadable")
    if len(steps) != len(set(steps)):
        problems.append(f"{HILLS}: a hill deposited twice")
    return steps, problems


def violations(result: dict) -> list[str]:
    keys = ("lost", "duplicated", "stored_not_in_ledger", "file_problems", "checkpoint_problems", "hill_problems")
    found = [f"{key}: {result[key]}" for key in keys if result[key]]
    if result["non_finite_frames"]:
        found.append(f"non-finite frames: {result['non_finite_frames']}")
    return found


# ------------------------------------------------------------------------------------------ the loop
def chaos(*, mode: str, cycles: int, seed: int, expected_s: float, workdir: Path, verbose: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    episode, folder = 0, None
    rows: list[dict] = []
    started = time.perf_counter()

    def new_folder() -> Path:
        extra = {"initial_sampling": "xtb-md"} if EXPLORE else {}
        path = make_run_folder(workdir / f"episode_{episode}",
                               al={"ACTIVE_LEARNING": {**CHAOS_AL["ACTIVE_LEARNING"], "parallel": mode == "parallel",
                                                       "ml_ranks": ML_RANKS, **extra}})
        if EXPLORE:
            settings_path = path / "active_learning_settings.yaml"
            settings = yaml.safe_load(settings_path.read_text())
            settings["MD"] = EXPLORE_MD
            settings_path.write_text(yaml.safe_dump(settings))
        return path

    previous_hills: set[int] = set()

    folder = new_folder()
    for cycle in range(cycles):
        delay_s = float(rng.uniform(MIN_DELAY_S, expected_s))
        t0 = time.perf_counter()
        process = start(mode, folder, workdir / f"episode_{episode}.out")
        status = run_until(process, delay_s)
        result = check(folder, final=status == 0)
        lost_hills = sorted(previous_hills - set(result["hills"]))
        if lost_hills:
            result["hill_problems"].append(f"hills of steps {lost_hills} lost after the kill")
        previous_hills = set(result.pop("hills"))
        row = {"cycle": cycle, "episode": episode, "kill_after_s": round(delay_s, 2),
               "killed": status is None, "exit_status": status, "seconds": round(time.perf_counter() - t0, 1),
               **result, "violations": violations(result) + ([f"exit status {status}"] if status not in (None, 0)
                                                              else [])}
        rows.append(row)
        if verbose:
            print_row(row)
        if status is not None:  # the run finished before its kill: start a fresh folder
            episode += 1
            folder = new_folder()
            previous_hills = set()
    final = final_run(mode, folder, workdir / f"episode_{episode}.out")
    if verbose:
        print(f"final uninterrupted run of episode {episode}: exit {final['exit_status']} in {final['seconds']} s, "
              f"{final['labels_stored']} labels stored, lost {len(final['lost'])}, "
              f"duplicated {len(final['duplicated'])}, violations {final['violations']}")
    return summarise(mode=mode, seed=seed, expected_s=expected_s, rows=rows, final=final,
                     wall_s=time.perf_counter() - started)


def final_run(mode: str, folder: Path, log_path: Path) -> dict:
    t0 = time.perf_counter()
    process = start(mode, folder, log_path)
    try:
        status = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        status = None
    result = check(folder, final=True)
    done = sorted(p.name for p in (folder / "restart" / "done").glob("*.done"))
    problems = violations(result) + ([] if status == 0 else [f"exit status {status}"])
    if done != ["active_learning.done", "initial_dataset.done"]:
        problems.append(f"completion markers: {done}")
    return {"exit_status": status, "seconds": round(time.perf_counter() - t0, 1), "markers": done, **result,
            "violations": problems}


def summarise(*, mode, seed, expected_s, rows, final, wall_s) -> dict:
    all_rows = rows + [final]
    return {
        "mode": mode, "mpi_ranks": mpi_ranks(mode), "ml_ranks": ML_RANKS, "seed": seed, "cycles": len(rows),
        "kills": sum(r["killed"] for r in rows), "completed_before_kill": sum(not r["killed"] for r in rows),
        "episodes": 1 + sum(not r["killed"] for r in rows), "expected_run_s": expected_s,
        "kill_times_s": [r["kill_after_s"] for r in rows if r["killed"]],
        "labels_lost": sorted({i for r in all_rows for i in r["lost"]}),
        "labels_duplicated": sorted({i for r in all_rows for i in r["duplicated"]}),
        "unacknowledged_at_kill": sum(len(r["unacknowledged"]) for r in rows),
        "violations": sum(len(r["violations"]) for r in all_rows),
        "final_status": final["exit_status"], "final": final, "rows": rows, "wall_s": round(wall_s, 1),
        "settings": CHAOS_AL,
    }


def print_row(row: dict) -> None:
    what = "killed" if row["killed"] else f"exit {row['exit_status']}"
    print(f"{row['cycle']:>5} {row['episode']:>7} {row['kill_after_s']:>7.1f} {what:>9} {row['labels_in_ledger']:>7} "
          f"{row['labels_stored']:>7} {len(row['unacknowledged']):>7} {len(row['lost']):>5} "
          f"{len(row['duplicated']):>5} {row['checkpoints']:>6}  {'; '.join(row['violations']) or 'ok'}", flush=True)


HEADER = (f"{'cycle':>5} {'episode':>7} {'kill_s':>7} {'outcome':>9} {'ledger':>7} {'stored':>7} {'unack':>7} "
          f"{'lost':>5} {'dup':>5} {'ckpts':>6}  checks")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [r["cycle"] for r in rows]
    ax.plot(x, [r["labels_in_ledger"] for r in rows], "o-", label="labels in ledger")
    ax.plot(x, [r["labels_stored"] for r in rows], "s--", label="labels stored")
    ax.bar(x, [len(r["lost"]) + len(r["duplicated"]) for r in rows], color="red", label="lost + duplicated")
    for r in rows:
        if not r["killed"]:
            ax.axvline(r["cycle"], color="green", alpha=0.3)
    ax.set_xlabel("cycle (green: run finished before its kill, new folder)")
    ax.set_ylabel("labels")
    ax.set_title(f"chaos, {summary['mode']} mode: {summary['kills']} SIGKILLs, "
                 f"{len(summary['labels_lost'])} lost, {len(summary['labels_duplicated'])} duplicated")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("serial", "parallel"), default="serial")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expected-s", type=float, default=None,
                        help="expected duration of an uninterrupted run; kill delays are drawn uniformly in "
                             f"[{MIN_DELAY_S}, expected] (default: 40 serial, 50 parallel)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default scripts/results/chaos_MODE.json)")
    parser.add_argument("--ml-ranks", type=int, default=1, help="ACTIVE_LEARNING.ml_ranks of the runs")
    parser.add_argument("--explore", action="store_true", help="a biased trajectory with metadynamics; hills checked")
    args = parser.parse_args(argv)
    global ML_RANKS, EXPLORE
    ML_RANKS, EXPLORE = args.ml_ranks, args.explore
    expected_s = args.expected_s or (40.0 if args.mode == "serial" else 50.0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos_{args.mode}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos {args.mode}: {args.cycles} cycles in {workdir}\n{HEADER}", flush=True)
    summary = chaos(mode=args.mode, cycles=args.cycles, seed=args.seed, expected_s=expected_s, workdir=workdir)
    suffix = (f"_ml{args.ml_ranks}" if args.ml_ranks > 1 else "") + ("_explore" if args.explore else "")
    out = args.out or RESULTS / f"chaos_{args.mode}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out.with_suffix(".png"))
    print(f"{summary['kills']} kills, {len(summary['labels_lost'])} labels lost, "
          f"{len(summary['labels_duplicated'])} duplicated, {summary['violations']} violations, final exit "
          f"{summary['final_status']}; wrote {out}")
    return 0 if summary["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
