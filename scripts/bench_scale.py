"""Benchmark (issue 17, part 6): whole runs of larger systems, end to end, with the wall time per MD step and per
label that a user pays.

    .venv/bin/python scripts/bench_scale.py                 # both systems: ~15-25 min on 2 cores
    .venv/bin/python scripts/bench_scale.py --case cu64_npt # one of them

Cases (EMT reference, so that the reference is cheap and the ML side's scaling shows):
- `cu64_npt`: a 64-atom fcc Cu supercell (periodic), NPT (MTK barostat, 1 bar, 600 K), trained on stress;
- `cu_slab256`: a 256-atom Cu(111) slab with vacuum (periodic in x and y), NVT at 600 K.

Each case runs `FHI_AL` (initial dataset by ab initio MD, then active learning) with a tiny MACE ensemble. Read
afterwards: the run's ledger (reference calls by purpose, the wall time of each), the active-learning log's
timing line (MLFF MD and training seconds) and the restart record (MLFF MD steps per trajectory).
Writes scripts/results/bench_scale.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from ase.build import bulk, fcc111  # noqa: E402
from ase.io import write  # noqa: E402

from fhi_al.durable import read_json_lines  # noqa: E402
from fhi_al.procedures.state import ActiveLearningState, StateFile  # noqa: E402
from fhi_al.references.ledger import AIMD_STEP, LABEL, ledger_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from workflow import TINY_MACE, deep_update  # noqa: E402
RESULTS = REPO / "scripts" / "results"
BIN = Path(sys.executable).parent
WORK = Path("/tmp") / "fhi_al_bench_scale"
NAME = "bench_scale"

MACE = deep_update(TINY_MACE, {"GENERAL": {"name_exp": "scale", "seed": 1}, "TRAINING": {"batch_size": 2, "valid_batch_size": 4}})  # the tests' tiny MACE
AL = {
    "ACTIVE_LEARNING": {"desired_acc": 0.0, "lambda": 2, "n_samples": 2, "valid_ratio": 0.25, "ensemble_size": 2,
                        "intermediate_epochs": 2, "max_initial_epochs": 4, "skip_step_initial": 5,
                        "skip_step_mlff": 5, "num_trajectories": 2, "max_MD_steps": 100, "max_epochs_worker": 2,
                        "max_set_size": 60, "threshold_warmup_checks": 4, "uncert_not_crossed_limit": 8,
                        "c_x": -0.1, "converge_al": False, "initial_member_data": "shared"},
    "MD": {"temperature": 600, "timestep": 1.0, "friction": 0.01, "seed": 3},
    "REFERENCE": {"calculator": "emt"},
}


def cu64():
    return bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 4)


def cu_slab256():
    return fcc111("Cu", size=(8, 8, 4), vacuum=6.0)


CASES = {
    "cu64_npt": {"atoms": cu64, "mace": {"GENERAL": {"compute_stress": True}},
                 "al": {"MD": {"stat_ensemble": "NPT", "barostat": "mtk", "pressure": 1.0e5}}},
    "cu_slab256": {"atoms": cu_slab256, "mace": {}, "al": {}},
}


def merged(base: dict, changes: dict) -> dict:
    result = json.loads(json.dumps(base))
    for section, values in changes.items():
        result.setdefault(section, {}).update(values)
    return result


def run_case(name: str, case: dict, *, max_md_steps: int) -> dict:
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    atoms = case["atoms"]()
    al = merged(merged(AL, case["al"]), {"ACTIVE_LEARNING": {"max_MD_steps": max_md_steps}})
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(merged(MACE, case["mace"])))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al))
    write(folder / "geometry.in", atoms, format="aims")
    started = time.perf_counter()
    process = subprocess.run([str(BIN / "FHI_AL"), "--run-dir", str(folder)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{name}: FHI_AL exited {process.returncode}\n{process.stderr[-3000:]}")
    return {"n_atoms": len(atoms), "pbc": atoms.pbc.tolist(), "wall_s": wall_s, **read_run(folder)}


def read_run(folder: Path) -> dict:
    entries = read_json_lines(ledger_path(folder))
    # ab initio MD steps are recorded as they happen (no duration): the wall time per step is the spacing
    # of their records, the integrator's share included
    aimd_times = [e["time"] for e in entries if e["purpose"] == AIMD_STEP and e.get("calls", 1)]
    aimd = np.diff(aimd_times).tolist()
    labels = [e["duration_s"] for e in entries if e["purpose"] == LABEL and e.get("calls", 1) and "duration_s" in e]
    state = StateFile(folder / "restart" / "al" / "state.json", ActiveLearningState, enabled=True).load()
    mlff_steps = sum(t.md.step for t in state.trajectories or [])
    timings = al_timings(folder / "logs" / "AL.log")
    return {"aimd_steps": len(aimd_times), "aimd_step_s_median": _median(aimd),
            "labels_paid": len(labels), "label_s_median": _median(labels),
            "mlff_md_steps": mlff_steps, "al_labels": state.labels,
            "mlff_md_step_s": timings.get("md", float("nan")) / max(mlff_steps, 1),
            "training_s_per_al_label": timings.get("training", float("nan")) / max(state.labels, 1),
            "al_timings_s": timings}


def al_timings(log_file: Path) -> dict[str, float]:
    """Seconds per activity from the line 'Active learning finished: ... (reference 1.0 s (5%), md ...)'."""
    line = next((line for line in reversed(log_file.read_text().splitlines()) if "Active learning finished" in line), "")
    return {name: float(value) for name, value in re.findall(r"(\w+) ([0-9.]+) s \(", line)}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(results)
    rows = [("reference MD step", "aimd_step_s_median"), ("reference label", "label_s_median"),
            ("MLFF MD step (ensemble)", "mlff_md_step_s"), ("training per AL label", "training_s_per_al_label")]
    fig, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [results[name][key] * 1e3 for _, key in rows]
        axis.bar(np.arange(len(rows)) + k * width, values, width,
                 label=f"{name} ({results[name]['n_atoms']} atoms)")
    axis.set_xticks(np.arange(len(rows)) + width * (len(names) - 1) / 2, [label for label, _ in rows])
    axis.set_yscale("log")
    axis.set_ylabel("wall time (ms)")
    axis.set_title("Cost per step and per label (EMT reference, tiny MACE ensemble of 2)")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=list(CASES), action="append", help="run only these cases")
    parser.add_argument("--max-md-steps", type=int, default=AL["ACTIVE_LEARNING"]["max_MD_steps"])
    args = parser.parse_args()
    results = {}
    for name in args.case or list(CASES):
        results[name] = run_case(name, CASES[name], max_md_steps=args.max_md_steps)
        sys.stdout.write(json.dumps({name: results[name]}, indent=1) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / f"{NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
