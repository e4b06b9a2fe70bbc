"""Busy fraction of the reference groups in parallel-mode active learning, with a reference of simulated cost.

Builds one initial dataset (water, GFN2-xTB, tiny MACE, one process), then runs `mpiexec -n K+1 FHI_AL-al` on
copies of it for each K, with `parallel: true` and `REFERENCE.simulated_cost_s` (every calculation sleeps that
long, then returns xTB's result), all in one invocation so that the ratios compare. For each K it measures each
group's busy fraction (time in the reference over the window from the first AL label sent to the last one back)
and the ML rank's per-label MD, training and other time, the inputs of `scripts/des_model.py`.

    .venv/bin/python scripts/bench_parallel_busy.py [--groups 2 4] [--cost-s 4] [--labels-per-group 8]

Writes scripts/results/bench_parallel_busy.json and bench_parallel_busy.png.
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

import yaml
from ase.build import molecule
from ase.io import write

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from workflow import TINY_MACE, deep_update  # noqa: E402
BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "scripts" / "results"
TARGET_BUSY = 0.9
MACE = deep_update(TINY_MACE, {"GENERAL": {"name_exp": "busy", "seed": 1}})  # the tests' tiny MACE
AL = {"ACTIVE_LEARNING": {"desired_acc": 0.0, "lambda": 2, "n_samples": 4, "valid_ratio": 0.25, "ensemble_size": 2,
                          "intermediate_epochs": 2, "max_initial_epochs": 4, "skip_step_initial": 5,
                          "skip_step_mlff": 5, "max_MD_steps": 100000, "max_epochs_worker": 1,
                          "threshold_warmup_checks": 2, "uncert_not_crossed_limit": 4, "c_x": -0.1,
                          "converge_al": False},
      "MD": {"temperature": 500, "timestep": 0.5, "friction": 0.01, "seed": 3},
      "REFERENCE": {"calculator": "xtb"}}
FINISHED = re.compile(r"Active learning finished: (\d+) labels, .* wall time (\d+) s \((.*)\)\.")
TIMING = re.compile(r"(\w+) ([\d.]+) s \(")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}


def run(command: list[str], folder: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command + ["--run-dir", str(folder)], env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {folder}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def write_settings(folder: Path, al: dict) -> None:
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(MACE))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al))


def initial_dataset(folder: Path) -> int:
    """One-process initial dataset with plain xTB; -> the training-set size per member."""
    folder.mkdir(parents=True)
    write_settings(folder, AL)
    write(folder / "geometry.in", molecule("H2O"), format="aims")
    env_one = {k: v for k, v in env().items() if not k.startswith(("PMI_", "HYDRA", "MPI"))}
    result = subprocess.run([str(BIN / "FHI_AL-initial-ds"), "--run-dir", str(folder)],
                            env={**env_one, "FHI_AL_NO_MPI": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"initial dataset failed:\n{result.stderr[-3000:]}")
    from ase.io import read

    return max(len(read(path, ":")) for path in (folder / "data").rglob("*train*.xyz"))


def al_settings(*, groups: int, cost_s: float, max_set_size: int, trajectories: int) -> dict:
    settings = json.loads(json.dumps(AL))
    settings["ACTIVE_LEARNING"].update({"parallel": True, "num_trajectories": trajectories,
                                        "max_set_size": max_set_size})
    settings["REFERENCE"]["simulated_cost_s"] = cost_s
    return settings


def ml_timings(log_text: str) -> dict:
    """Labels, wall time and per-activity seconds of the ML rank from the AL log's summary line."""
    match = FINISHED.search(log_text)
    if match is None:
        raise SystemExit("no 'Active learning finished' line in the AL log")
    timings = {f"{name}_s": float(value) for name, value in TIMING.findall(match.group(3))}
    return {"labels": int(match.group(1)), "wall_s": float(match.group(2)), **timings}


def busy_in(timeline: list[dict], groups: int, start: float, end: float) -> dict[int, float]:
    """Each group's time in the reference within [start, end], as a fraction of it."""
    return {g: sum(max(min(t["end"], end) - max(t["start"], start), 0.0) for t in timeline if t["group"] == g)
            / (end - start) for g in range(groups)}


def measure(folder: Path, groups: int) -> dict:
    usage = json.loads((folder / "results" / "al_reference_usage.json").read_text())
    timeline = usage["timeline"]
    first, last = min(t["start"] for t in timeline), max(t["end"] for t in timeline)
    window_s = last - first
    busy = busy_in(timeline, groups, first, last)
    # steady state: from the moment every group has its first label to the moment the first group runs dry at
    # the end (the ramp-up and the finite run's last, partly filled round are not the ML side's doing)
    steady = (max(min(t["start"] for t in timeline if t["group"] == g) for g in range(groups)),
              min(max(t["end"] for t in timeline if t["group"] == g) for g in range(groups)))
    steady_busy = busy_in(timeline, groups, *steady)
    ml = ml_timings((folder / "logs" / "AL.log").read_text())
    # in parallel mode the summary's "reference" is the groups' time, overlapping the ML rank's. The ML rank's
    # other work per label (bookkeeping, datasets, checkpoints) is its time in the label window not spent in MD,
    # training or waiting for labels; start-up and final reports fall outside the window
    waited_s = usage["ml_rank_waited_s"]
    ml_other_s = max(window_s - waited_s - ml["md_s"] - ml["training_s"], 0.0)
    labels = len(timeline)
    return {"groups": groups, "labels": labels, "window_s": window_s,
            "busy_fraction": {f"group_{g}": value for g, value in busy.items()},
            "busy_fraction_min": min(busy.values()), "busy_fraction_mean": sum(busy.values()) / groups,
            "steady_window_s": steady[1] - steady[0],
            "steady_busy_fraction": {f"group_{g}": value for g, value in steady_busy.items()},
            "steady_busy_fraction_min": min(steady_busy.values()),
            "busy_fraction_al_phase": {k: v for k, v in usage["busy_fractions"].items() if k.startswith("group")},
            "per_label_s": {"reference": sum(t["end"] - t["start"] for t in timeline) / labels,
                            "md": ml["md_s"] / labels, "training": ml["training_s"] / labels,
                            "other": ml_other_s / labels},
            "ml_rank": {**ml, "waited_s": waited_s, "busy_fraction": usage["busy_fractions"]["ml_rank"]},
            "timeline": [{**t, "start": t["start"] - first, "end": t["end"] - first} for t in timeline]}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.2 + 0.45 * sum(r["groups"] for r in runs)),
                             gridspec_kw={"height_ratios": [r["groups"] for r in runs]}, squeeze=False)
    axes = axes[:, 0]
    for axis, run_ in zip(axes, runs):
        for entry in run_["timeline"]:
            axis.barh(entry["group"], entry["end"] - entry["start"], left=entry["start"], height=0.6,
                      color="tab:blue", edgecolor="white", linewidth=0.3)
        axis.set_yticks(range(run_["groups"]), [f"group {g}" for g in range(run_["groups"])])
        per = run_["per_label_s"]
        axis.set_title(f"K = {run_['groups']}: busy {100 * run_['busy_fraction_min']:.0f}–"
                       f"{100 * max(run_['busy_fraction'].values()):.0f}% from first to last label, "
                       f"{100 * run_['steady_busy_fraction_min']:.0f}%+ in steady state (target "
                       f"{100 * TARGET_BUSY:.0f}%);\n"
                       f"per label: reference {per['reference']:.1f} s, ML rank md {per['md']:.2f} s + training "
                       f"{per['training']:.2f} s + other {per['other']:.2f} s", fontsize=8)
    axes[-1].set_xlabel("wall time since the first AL label was sent (s)")
    fig.suptitle(f"Parallel AL, reference sleeping {report['cost_s']} s per call "
                 "(scripts/bench_parallel_busy.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--cost-s", type=float, default=12.0, help="simulated reference cost per call")
    parser.add_argument("--labels-per-group", type=int, default=8)
    parser.add_argument("--trajectories-per-group", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhi_al_bench_busy_"))
    started = time.perf_counter()
    train_size = initial_dataset(work / "initial")
    print(f"initial dataset: {train_size} training structures per member ({time.perf_counter() - started:.0f} s)",
          flush=True)
    report: dict = {"cost_s": args.cost_s, "molecule": "H2O", "reference": "GFN2-xTB + simulated cost",
                    "target_busy_fraction": TARGET_BUSY, "cpu_cores": os.cpu_count(),
                    "load_average_before": os.getloadavg(), "runs": []}
    for groups in args.groups:
        folder = work / f"K{groups}"
        shutil.copytree(work / "initial", folder)
        # max_set_size counts one member's training set; about 3 of 4 labels go to training (valid_ratio 0.25)
        al = al_settings(groups=groups, cost_s=args.cost_s, trajectories=args.trajectories_per_group * groups,
                         max_set_size=train_size + max(1, round(0.75 * args.labels_per_group * groups)))
        write_settings(folder, al)
        wall_s = run([str(BIN / "mpiexec"), "-n", str(groups + 1), str(BIN / "FHI_AL-al")], folder)
        result = {**measure(folder, groups), "command_wall_s": wall_s, "settings": al["ACTIVE_LEARNING"]}
        report["runs"].append(result)
        print(f"K = {groups}: {result['labels']} labels, groups busy {100 * result['busy_fraction_min']:.0f}–"
              f"{100 * max(result['busy_fraction'].values()):.0f}% (steady state >= "
              f"{100 * result['steady_busy_fraction_min']:.0f}%), per label {result['per_label_s']}", flush=True)
    report["load_average_after"] = os.getloadavg()
    report["target_reached"] = {"first_to_last_label": all(r["busy_fraction_min"] >= TARGET_BUSY
                                                           for r in report["runs"]),
                                "steady_state": all(r["steady_busy_fraction_min"] >= TARGET_BUSY
                                                    for r in report["runs"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_parallel_busy.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, RESULTS / "bench_parallel_busy.png")
    print(f"wrote {RESULTS / 'bench_parallel_busy.json'} and .png; work folders in {work}")


if __name__ == "__main__":
    main()
