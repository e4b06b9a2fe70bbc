"""Active-learning wall time with the ensemble's members trained on 1 and on 2 ML ranks (ACTIVE_LEARNING.ml_ranks).

The quick example (ethanol, GFN2-xTB, two small MACE members, normal-mode initial dataset) with its initial
dataset built once in one process; then `FHI_AL-al` on copies of it, with `ml_ranks: 1` in one process and with
`ml_ranks: 2` under `mpiexec -n 2` (serial mode: rank 0 runs the MD, xTB and one member, rank 1 trains the
other), alternating, all in one invocation so that the ratio compares runs on the same machine state. Each
final ensemble is also scored on one test set of xTB MD frames, because with concurrent training the
trajectories see other weights and take other labels.

    .venv/bin/python scripts/bench_ml_ranks.py [--repeats 2] [--max-md-steps 400]

Writes scripts/results/bench_ml_ranks.json and bench_ml_ranks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
EXAMPLE = REPO / "settings" / "quick_example"
TARGET_RATIO = 0.6
FINISHED = re.compile(r"Active learning finished: (\d+) labels, .* wall time (\d+) s \((.*)\)\.")
TIMING = re.compile(r"(\w+) ([\d.]+) s \(")
TEST_FRAMES, TEST_STRIDE = 40, 25


def env(*, one_process: bool) -> dict:
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    if one_process:
        base = {k: v for k, v in base.items() if not k.startswith(("PMI_", "HYDRA", "MPI"))}
        base["FHI_AL_NO_MPI"] = "1"
    return base


def run(command: list[str], folder: Path, *, one_process: bool) -> float:
    started = time.perf_counter()
    result = subprocess.run(command + ["--run-dir", str(folder)], env=env(one_process=one_process),
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {folder}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def set_al(folder: Path, changes: dict) -> None:
    path = folder / "active_learning_settings.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["ACTIVE_LEARNING"].update(changes)
    path.write_text(yaml.safe_dump(settings))


def initial_dataset(folder: Path, max_md_steps: int) -> float:
    shutil.copytree(EXAMPLE, folder)
    set_al(folder, {"analysis": False, "max_MD_steps": max_md_steps})
    return run([str(BIN / "FHI_AL-initial-ds")], folder, one_process=True)


def test_set(folder: Path) -> list:
    """TEST_FRAMES frames of GFN2-xTB Langevin MD at the example's temperature, TEST_STRIDE steps apart."""
    from ase import units
    from ase.io import read
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tblite.ase import TBLite

    atoms = read(folder / "geometry.in")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=500, rng=np.random.default_rng(7))
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(8))
    dynamics.run(200)  # away from the start
    frames = []
    for _ in range(TEST_FRAMES):
        dynamics.run(TEST_STRIDE)
        frame = atoms.copy()
        frame.arrays["REF_forces"] = atoms.get_forces()
        frames.append(frame)
    return frames


def test_mae(folder: Path, frames: list) -> float:
    """Force MAE (eV/Å) of the run's final ensemble mean on the test frames."""
    from fhi_al.ensemble import EnsembleCalculator, run_model_paths

    calc = EnsembleCalculator.from_files(run_model_paths(folder))
    errors = []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - frame.arrays["REF_forces"]).mean())
    return float(np.mean(errors))


def measure(folder: Path, ml_ranks: int, frames: list, command_s: float) -> dict:
    log_text = (folder / "logs" / "AL.log").read_text()
    match = FINISHED.search(log_text)
    timings = {f"{name}_s": float(value) for name, value in TIMING.findall(match.group(3))}
    from fhi_al.restart import done_info

    done = done_info(folder, "active_learning")
    return {"ml_ranks": ml_ranks, "labels": int(match.group(1)), "al_wall_s": float(match.group(2)),
            "command_wall_s": command_s, "rank0_timings_s": timings,
            "valid_forces_mae_eV_per_A": done["valid_forces_mae"],
            "test_forces_mae_eV_per_A": test_mae(folder, frames)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{r['ml_ranks']} ML rank{'s' if r['ml_ranks'] > 1 else ''}\nrepeat {r['repeat']}" for r in runs]
    colours = ["tab:grey" if r["ml_ranks"] == 1 else "tab:blue" for r in runs]
    left.bar(range(len(runs)), [r["al_wall_s"] for r in runs], color=colours)
    for index, r in enumerate(runs):
        left.text(index, r["al_wall_s"], f"{r['labels']} labels", ha="center", va="bottom", fontsize=8)
    left.set_xticks(range(len(runs)), labels, fontsize=8)
    left.set_ylabel("active-learning wall time (s)")
    left.set_title(f"wall-time ratio 2 / 1 ML ranks: {report['ratio_al_wall']:.2f} (target ≤ {TARGET_RATIO})",
                   fontsize=9)
    right.bar(range(len(runs)), [1e3 * r["test_forces_mae_eV_per_A"] for r in runs], color=colours)
    right.set_xticks(range(len(runs)), labels, fontsize=8)
    right.set_ylabel("test force MAE of the final ensemble (meV/Å)")
    right.set_title(f"{TEST_FRAMES} xTB MD frames at 500 K", fontsize=9)
    fig.suptitle("Quick example, 2 members: members trained on 1 vs 2 ML ranks (scripts/bench_ml_ranks.py)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-md-steps", type=int, default=400, help="per trajectory (the quick example's 400)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhi_al_bench_ml_ranks_"))
    initial_s = initial_dataset(work / "initial", args.max_md_steps)
    frames = test_set(work / "initial")
    print(f"initial dataset {initial_s:.0f} s; test set {len(frames)} frames", flush=True)
    report: dict = {"example": "settings/quick_example", "max_MD_steps": args.max_md_steps,
                    "cpu_cores": os.cpu_count(), "load_average_before": os.getloadavg(), "runs": []}
    for repeat in range(args.repeats):
        for ml_ranks in (1, 2):
            folder = work / f"r{repeat}_ml{ml_ranks}"
            shutil.copytree(work / "initial", folder)
            set_al(folder, {"ml_ranks": ml_ranks})
            if ml_ranks == 1:
                command_s = run([str(BIN / "FHI_AL-al")], folder, one_process=True)
            else:
                command_s = run([str(BIN / "mpiexec"), "-n", str(ml_ranks), str(BIN / "FHI_AL-al")], folder,
                                one_process=False)
            result = {**measure(folder, ml_ranks, frames, command_s), "repeat": repeat}
            report["runs"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "rank0_timings_s"}), flush=True)
    mean = {m: float(np.mean([r["al_wall_s"] for r in report["runs"] if r["ml_ranks"] == m])) for m in (1, 2)}
    per_label = {m: float(np.mean([r["al_wall_s"] / r["labels"] for r in report["runs"] if r["ml_ranks"] == m]))
                 for m in (1, 2)}
    report.update({"mean_al_wall_s": mean, "ratio_al_wall": mean[2] / mean[1],
                   "ratio_al_wall_per_label": per_label[2] / per_label[1], "target_ratio": TARGET_RATIO,
                   "target_reached": mean[2] / mean[1] <= TARGET_RATIO, "load_average_after": os.getloadavg()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_ml_ranks.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, RESULTS / "bench_ml_ranks.png")
    print(f"AL wall time: 1 ML rank {mean[1]:.0f} s, 2 ML ranks {mean[2]:.0f} s: ratio {report['ratio_al_wall']:.2f} "
          f"(target <= {TARGET_RATIO}); per label {report['ratio_al_wall_per_label']:.2f}", flush=True)


if __name__ == "__main__":
    main()
