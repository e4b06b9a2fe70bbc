"""Serial vs parallel mode with an expensive reference (PySCF PBE/6-31G* on ethanol, ~10 s a call).

Runs FHI_AL-initial-ds under `mpiexec -n RANKS` twice with the same settings, once with
`parallel: false` (rank 0 samples, labels and trains; the other ranks wait) and once with `parallel: true`
(rank 0 samples and trains while RANKS-1 reference groups label), and reports the wall time for the same
number of labels and the busy fraction of each reference group. Sampling uses a foundation model: a small
MACE trained first on xTB data (MACE-MP-0 cannot be downloaded here).

    .venv/bin/python scripts/bench_parallel.py [--ranks 3] [--molecule CH3CH2OH] [--n-samples 4] [--rounds 2]

Writes scripts/results/bench_parallel.json and bench_parallel.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ase.build import molecule
from ase.io import write

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "scripts" / "results"
MACE = {"GENERAL": {"name_exp": "bench", "seed": 1},
        "ARCHITECTURE": {"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0, "num_interactions": 2,
                         "correlation": 2, "radial_MLP": [16], "MLP_irreps": "8x0e"},
        "TRAINING": {"batch_size": 2, "valid_batch_size": 8, "lr": 0.01}}


def al_settings(*, n_samples: int, rounds: int, extra: dict) -> dict:
    return {"ACTIVE_LEARNING": {"desired_acc": 0.0001, "lambda": 1, "n_samples": n_samples, "valid_ratio": 0.2,
                                "ensemble_size": 2, "intermediate_epochs": 5, "max_initial_epochs": 5 * rounds,
                                "skip_step_initial": 10, **extra},
            "MD": {"temperature": 400, "timestep": 0.5, "friction": 0.01, "seed": 3}}


def make_folder(folder: Path, al: dict, reference: dict, name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(MACE))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump({**al, "REFERENCE": reference}))
    write(folder / "geometry.in", molecule(name), format="aims")
    return folder


def run(command: list[str], folder: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    result = subprocess.run(command + ["--run-dir", str(folder)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {folder}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def count_labels(folder: Path) -> int:
    return sum(1 for _ in (folder / "logs" / "reference_ledger.jsonl").open())


def plot(report: dict, usage: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, timeline) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 2.5]})
    modes = ["serial", "parallel"]
    bars.bar(modes, [report[m]["wall_s"] for m in modes], color=["tab:gray", "tab:blue"])
    bars.set_ylabel("wall time (s)")
    for index, mode in enumerate(modes):
        bars.text(index, report[mode]["wall_s"], f"{report[mode]['labels']} labels", ha="center", va="bottom")
    bars.set_title(f"speed-up {report['speedup']:.2f}x")
    for entry in usage["timeline"]:
        timeline.barh(entry["group"], entry["end"] - entry["start"], left=entry["start"] - usage["started_at"],
                      height=0.6, color="tab:blue", edgecolor="white", linewidth=0.3)
    groups = sorted({entry["group"] for entry in usage["timeline"]})
    timeline.set_yticks(groups, [f"group {g}" for g in groups])
    timeline.set_xlabel("wall time (s)")
    fractions = ", ".join(f"{k} {100 * v:.0f}%" for k, v in usage["busy_fractions"].items())
    timeline.set_title(f"PySCF calls per reference group (busy: {fractions})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--molecule", default="CH3CH2OH", help="ase.build.molecule name")
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhi_al_bench_parallel_"))
    foundation = make_folder(work / "foundation", al_settings(n_samples=6, rounds=2, extra={}),
                             {"calculator": "xtb"}, args.molecule)
    run([str(BIN / "FHI_AL-initial-ds")], foundation)
    model = next((foundation / "model").glob("*.model"))
    reference = {"calculator": "pyscf", "pyscf": {"xc": "pbe", "basis": "6-31g*"}}
    report: dict = {"ranks": args.ranks, "reference": "PySCF PBE/6-31G*", "molecule": args.molecule}
    for mode in ("serial", "parallel"):
        al = al_settings(n_samples=args.n_samples, rounds=args.rounds, extra={
            "initial_sampling": "mace-mp0", "initial_foundational_size": str(model), "parallel": mode == "parallel"})
        folder = make_folder(work / mode, al, reference, args.molecule)
        wall_s = run([str(BIN / "mpiexec"), "-n", str(args.ranks), str(BIN / "FHI_AL-initial-ds")], folder)
        report[mode] = {"wall_s": wall_s, "labels": count_labels(folder), "folder": str(folder)}
        print(f"{mode}: {wall_s:.1f} s for {report[mode]['labels']} labels", flush=True)
    usage = json.loads((work / "parallel" / "results" / "initial_reference_usage.json").read_text())
    report["speedup"] = report["serial"]["wall_s"] / report["parallel"]["wall_s"]
    report["busy_fractions"] = usage["busy_fractions"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_parallel.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, usage, RESULTS / "bench_parallel.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
