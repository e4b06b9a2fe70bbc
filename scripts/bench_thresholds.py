"""Benchmark: one uncertainty threshold per system or one shared, for a molecule next to a bulk crystal.

Two FHI_AL runs that differ only in ACTIVE_LEARNING.threshold_per_system, on water and 8-atom bulk Si (both
GFN1-xTB at 1000 K electronic temperature, which handles molecules and periodic cells), tiny MACE ensembles,
one trajectory per system. For each run: the labels of each system (initial and active learning), the reference calls paid (ledger), and the force
MAE of the final ensemble mean on a held-out test set per system (Langevin MD frames with the reference, far
apart, cached). Writes scripts/results/bench_thresholds.{json,png}.

    .venv/bin/python scripts/bench_thresholds.py             # ~15 min on 2 busy cores
    .venv/bin/python scripts/bench_thresholds.py --seeds 1 2 3  # the README's figures: mean over 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.io import read, write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from workflow import TINY_MACE, deep_update  # noqa: E402
RESULTS = REPO / "scripts" / "results"
BIN = Path(sys.executable).parent
SYSTEMS = {"a_water": lambda: molecule("H2O"), "b_si8": lambda: bulk("Si", "diamond", a=5.43, cubic=True)}
METHOD = "GFN1-xTB"
ELECTRONIC_TEMPERATURE_K = 1000.0  # GFN1-xTB's SCF on 8-atom Si at 500 K fails now and then at 300 K
TEMPERATURE_K = 400
TEST_FRAMES = 15  # per system
TEST_SPACING_STEPS = 20

XTB = {"method": METHOD, "electronic_temperature_K": ELECTRONIC_TEMPERATURE_K}
MACE = deep_update(TINY_MACE, {"GENERAL": {"name_exp": "bench", "seed": 1}})  # the tests' tiny MACE
AL = {"ACTIVE_LEARNING": {"desired_acc": 0.0, "lambda": 2, "n_samples": 8, "valid_ratio": 0.25, "ensemble_size": 2,
                          "intermediate_epochs": 4, "max_initial_epochs": 12, "skip_step_initial": 5,
                          "skip_step_mlff": 5, "num_trajectories": 2, "max_MD_steps": 300, "max_epochs_worker": 2,
                          "max_set_size": 400, "threshold_warmup_checks": 4, "uncert_not_crossed_limit": 1000,
                          "c_x": 0.0, "converge_al": False, "initial_member_data": "shared"},
      "MD": {"temperature": TEMPERATURE_K, "timestep": 0.5, "friction": 0.01, "seed": 3},
      "REFERENCE": {"calculator": "xtb", "xtb": {"method": METHOD,
                                                 "electronic_temperature_K": ELECTRONIC_TEMPERATURE_K}},
      "MISC": {"path_to_geometry": "geometries"}}


def reference():
    from fhi_al.references import make_reference

    return make_reference(name="xtb", options=XTB)


def test_set(name: str) -> list:
    """Held-out frames of system `name`: Langevin MD on the reference at TEMPERATURE_K (cached)."""
    path = RESULTS / f"bench_thresholds_test_{name}.xyz"
    if path.exists():
        return read(path, index=":")
    from ase.calculators.calculator import CalculationFailed
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = SYSTEMS[name]()
    atoms.calc = reference()
    rng = np.random.default_rng(11)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng, force_temp=True)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=TEMPERATURE_K, friction=0.01, rng=rng, fixcm=False)
    frames, good = [], atoms.copy()
    while len(frames) < TEST_FRAMES:
        try:
            dynamics.run(TEST_SPACING_STEPS)
        except CalculationFailed:  # an SCF that does not converge: back to the last frame, new velocities
            atoms.set_positions(good.get_positions())
            MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng, force_temp=True)
            continue
        good = atoms.copy()
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.calc.results["forces"].copy())
        frames.append(frame)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return frames


def make_folder(folder: Path, *, per_system: bool, seed: int) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "geometries").mkdir(parents=True)
    for name, build in SYSTEMS.items():
        write(folder / "geometries" / f"{name}.in", build(), format="aims")
    mace = json.loads(json.dumps(MACE))
    mace["GENERAL"]["seed"] = seed
    al = json.loads(json.dumps(AL))
    al["ACTIVE_LEARNING"]["threshold_per_system"] = per_system
    al["MD"]["seed"] = seed + 2
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(mace))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al))
    return folder


def run(folder: Path) -> float:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(BIN / "FHI_AL"), "--run-dir", str(folder)], capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        raise SystemExit(f"FHI_AL failed in {folder}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def evaluate(folder: Path) -> dict:
    from fhi_al.ensemble import EnsembleCalculator
    from fhi_al.references.ledger import ReferenceCost, ledger_path

    calc = EnsembleCalculator.from_run_dir(folder)
    frames = [atoms for path in sorted((folder / "data").rglob("*.xyz")) if "final" not in path.parts
              for atoms in read(path, index=":")]
    labels = {stage: Counter(a.info["system"] for a in frames if a.info["procedure"] == stage)
              for stage in ("initial", "al")}
    errors = {}
    for name in SYSTEMS:
        deviations = []
        for frame in test_set(name):
            atoms = frame.copy()
            atoms.calc = calc
            deviations.append(np.abs(atoms.get_forces() - frame.get_forces()).ravel())
        errors[name] = float(np.mean(np.concatenate(deviations)))
    cost = ReferenceCost.from_ledger(ledger_path(folder))
    return {"labels_initial": dict(labels["initial"]), "labels_al": dict(labels["al"]), "reference_calls": cost.paid,
            "test_forces_mae_eV_per_A": errors}


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    fig, (by_labels, by_error) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.35
    for offset, name in zip((-width / 2, width / 2), SYSTEMS):
        x = np.arange(len(modes)) + offset
        by_labels.bar(x, [results["modes"][m]["labels_al"].get(name, 0) for m in modes], width, label=name)
        by_error.bar(x, [results["modes"][m]["test_forces_mae_eV_per_A"][name] for m in modes], width, label=name)
    by_error.set_yscale("log")  # the molecule's error is ~30x smaller than the crystal's
    for axis, label in ((by_labels, "active-learning labels"), (by_error, "test force MAE (eV/Å)")):
        axis.set_xticks(range(len(modes)),
                        [f"{m}\n{results['modes'][m]['reference_calls']:.0f} calls" for m in modes])
        axis.set_ylabel(label)
        axis.legend()
    fig.suptitle(f"water + bulk Si8 ({METHOD}): one threshold per system or one shared")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def mean_over_seeds(per_seed: list[dict]) -> dict:
    first = per_seed[0]
    return {"labels_initial": {n: float(np.mean([r["labels_initial"].get(n, 0) for r in per_seed])) for n in SYSTEMS},
            "labels_al": {n: float(np.mean([r["labels_al"].get(n, 0) for r in per_seed])) for n in SYSTEMS},
            "reference_calls": float(np.mean([r["reference_calls"] for r in per_seed])),
            "test_forces_mae_eV_per_A": {n: float(np.mean([r["test_forces_mae_eV_per_A"][n] for r in per_seed]))
                                         for n in first["test_forces_mae_eV_per_A"]},
            "seeds": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_thresholds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved JSON")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "bench_thresholds.json").read_text()), RESULTS / "bench_thresholds.png")
        return
    for name in SYSTEMS:
        test_set(name)
    modes = {}
    for mode, per_system in (("per_system", True), ("shared", False)):
        per_seed = []
        for seed in args.seeds:
            folder = make_folder(args.work / f"{mode}_{seed}", per_system=per_system, seed=seed)
            wall_s = run(folder)
            per_seed.append({**evaluate(folder), "wall_s": wall_s, "seed": seed})
            print(mode, seed, json.dumps(per_seed[-1]), flush=True)
        modes[mode] = mean_over_seeds(per_seed)
    results = {"systems": list(SYSTEMS), "method": METHOD, "temperature_K": TEMPERATURE_K, "settings": AL,
               "test_frames_per_system": TEST_FRAMES, "modes": modes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_thresholds.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "bench_thresholds.png")
    print(json.dumps({m: {k: v for k, v in r.items() if k != "seeds"} for m, r in modes.items()}, indent=2))


if __name__ == "__main__":
    main()
