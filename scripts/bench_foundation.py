"""Benchmark (issue 18): learning efficiency of active learning that fine-tunes a MACE foundation model vs the same
run from scratch, on the same molecule, counted in reference calls.

    .venv/bin/python scripts/bench_foundation.py            # ethanol, GFN2-xTB: ~30 min on 2 cores
    .venv/bin/python scripts/bench_foundation.py --quick    # shorter runs (max_MD_steps 150): ~10 min
    .venv/bin/python scripts/bench_foundation.py --quick --seed 7  # another GENERAL.seed and MD.seed

No foundation weights can be downloaded here, so the "foundation" is trained first: the quick example's MACE
(ScaleShiftMACE, 16 channels, max_L 1) on GFN2-xTB Langevin-MD frames (500 K) of methanol, dimethyl ether and
acetaldehyde, never on ethanol. Then two FHI_AL runs with the quick example's settings (analysis off) differ only in
ARCHITECTURE.foundation_model. After the initial dataset and after active learning, the ensemble in model/ is
evaluated on a test set of ethanol frames from reference MD (500 K), and the reference calls paid so far are read
from the run's ledger. Both runs use the same isolated-atom E0s (FHI_AL-atomic-energies). Results:
scripts/results/foundation_{tag}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import mace  # noqa: E402,F401  (before anything imports e3nn)
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.io import read, write  # noqa: E402

from fhi_al.architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY  # noqa: E402
from fhi_al.ensemble import EnsembleCalculator  # noqa: E402
from fhi_al.md import initialize_velocities, make_langevin  # noqa: E402
from fhi_al.references import compute_label, make_reference  # noqa: E402
from fhi_al.references.ledger import ReferenceCost, ledger_path  # noqa: E402
from fhi_al.settings.loader import normalise_atomic_energies  # noqa: E402
from fhi_al.training.config import TrainingConfig  # noqa: E402
from fhi_al.training.engine import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
EXAMPLE = REPO / "settings" / "quick_example"
BIN = Path(sys.executable).parent
WORK = Path("/tmp") / "fhi_al_bench_foundation"

TEMPERATURE_K = 500.0
TIMESTEP_FS, FRICTION_PER_FS = 0.5, 0.01
EQUILIBRATION_STEPS, STRIDE = 200, 20
FOUNDATION_MOLECULES = ("CH3OH", "CH3OCH3", "CH3CHO")  # C, H, O like ethanol, but never ethanol
FOUNDATION_FRAMES = 80  # per molecule
FOUNDATION_EPOCHS = 60
TEST_FRAMES, TEST_STRIDE = 100, 40
TARGET = "CH3CH2OH"
ARMS = ("scratch", "foundation")


def reference_md_frames(name: str, count: int, *, stride: int, seed: int) -> list:
    """`count` frames of Langevin MD with GFN2-xTB at TEMPERATURE_K, `stride` steps apart, labelled."""
    calc = make_reference(name="xtb")
    atoms = molecule(name)
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    initialize_velocities(atoms, TEMPERATURE_K, rng)
    dyn = make_langevin(atoms, temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
                        rng=rng)
    dyn.run(EQUILIBRATION_STEPS)
    frames = []
    for _ in range(count):
        dyn.run(stride)
        frame = atoms.copy()
        energy, forces = compute_label(calc, frame)
        frame.info[REF_ENERGY_KEY], frame.arrays[REF_FORCES_KEY] = energy, forces
        frames.append(frame)
    return frames


def cached(path: Path, make) -> list:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, make(), format="extxyz")
    return read(path, index=":", format="extxyz")


def atomic_energies(folder: Path) -> dict:
    """Isolated-atom GFN2-xTB energies of ethanol's elements through FHI_AL-atomic-energies."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("geometry.in", "active_learning_settings.yaml"):
        shutil.copy(EXAMPLE / name, folder / name)
    (folder / "mace_settings.yaml").write_text((EXAMPLE / "mace_settings.yaml").read_text())
    if not (folder / "atomic_energies.yaml").exists():
        subprocess.run([str(BIN / "FHI_AL-atomic-energies"), "--run-dir", str(folder)], check=True)
    return yaml.safe_load((folder / "atomic_energies.yaml").read_text())["atomic_energies"]


def train_foundation(folder: Path, e0s: dict) -> Path:
    path = folder / "model" / "foundation.model"
    if path.exists():
        return path
    frames = []
    for index, name in enumerate(FOUNDATION_MOLECULES):
        frames += cached(WORK / f"foundation_{name}.xyz",
                         lambda n=name, i=index: reference_md_frames(n, FOUNDATION_FRAMES, stride=STRIDE, seed=10 + i))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frames))
    valid = [frames[i] for i in order[:len(frames) // 10]]
    train = [frames[i] for i in order[len(frames) // 10:]]
    settings = yaml.safe_load((EXAMPLE / "mace_settings.yaml").read_text())
    from fhi_al.architectures.mace.hypers import MaceHypers

    hypers = MaceHypers(**{k: v for k, v in settings["ARCHITECTURE"].items() if k != "model"})
    config = TrainingConfig(name_exp="foundation", model="ScaleShiftMACE", hypers=hypers, batch_size=4, lr=0.01,
                            scheduler="ReduceLROnPlateau", atomic_energies=normalise_atomic_energies(e0s),
                            training_plots=False)
    trainer = Trainer(config, folder)
    member = trainer.create_member("foundation", 1, train, valid)
    trainer.train(member, FOUNDATION_EPOCHS, use_scheduler=True, report=False)
    log_metric("foundation", trainer.evaluate(member, valid))
    return trainer.export(member)


def log_metric(what: str, metrics: dict) -> None:
    print(f"{what}: validation force MAE {metrics['forces_mae']:.4f} eV/Å", flush=True)


def make_arm(folder: Path, arm: str, e0s: dict, foundation: Path, quick: bool, seed: int | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "geometry.in", folder / "geometry.in")
    mace_settings = yaml.safe_load((EXAMPLE / "mace_settings.yaml").read_text())
    mace_settings["ARCHITECTURE"]["atomic_energies"] = e0s
    if arm == "foundation":
        mace_settings["ARCHITECTURE"]["foundation_model"] = str(foundation)
    al_settings = yaml.safe_load((EXAMPLE / "active_learning_settings.yaml").read_text())
    al_settings["ACTIVE_LEARNING"]["analysis"] = False
    if quick:
        al_settings["ACTIVE_LEARNING"]["max_MD_steps"] = 150
    if seed is not None:
        mace_settings["GENERAL"]["seed"] = al_settings["MD"]["seed"] = seed
    (folder / "mace_settings.yaml").write_text(yaml.safe_dump(mace_settings))
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al_settings))
    return folder


def test_error(folder: Path, test: list) -> float:
    """Force MAE (eV/Å) of the ensemble mean of folder/model/*.model on the test frames."""
    calc = EnsembleCalculator.from_run_dir(folder)
    errors = []
    for frame in test:
        atoms = frame.copy()
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - frame.arrays[REF_FORCES_KEY]).mean())
    return float(np.mean(errors))


def run_arm(folder: Path, test: list) -> list[dict]:
    """(stage, reference calls paid, labels, test force MAE, wall s) after the initial dataset and after AL."""
    points = []
    for stage, command in (("initial dataset", "FHI_AL-initial-ds"), ("active learning", "FHI_AL-al")):
        started = time.perf_counter()
        with open(folder / f"{command}.out", "w") as out:
            subprocess.run([str(BIN / command), "--run-dir", str(folder)], check=True, stdout=out, stderr=out)
        cost = ReferenceCost.from_ledger(ledger_path(folder))
        points.append({"stage": stage, "reference_calls": cost.paid, "labels": cost.labels,
                       "test_forces_mae_eV_per_A": test_error(folder, test), "wall_s": time.perf_counter() - started})
        print(folder.name, points[-1], flush=True)
    return points


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.5, 4))
    for arm, points in results["arms"].items():
        calls = [p["reference_calls"] for p in points]
        errors = [1e3 * p["test_forces_mae_eV_per_A"] for p in points]
        axis.plot(calls, errors, "o-", label=arm)
    axis.axhline(1e3 * results["foundation_alone_test_forces_mae_eV_per_A"], ls="--", color="grey",
                 label="foundation alone")
    axis.set_xlabel("reference calls paid")
    axis.set_ylabel("test force MAE (meV/Å)")
    axis.set_yscale("log")
    axis.set_title("Ethanol, GFN2-xTB: after initial dataset, after AL")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="max_MD_steps 150 instead of the example's 400")
    parser.add_argument("--seed", type=int, default=None, help="GENERAL.seed and MD.seed (default: the example's)")
    args = parser.parse_args()
    tag = ("quick" if args.quick else "full") + (f"_seed{args.seed}" if args.seed is not None else "")
    WORK.mkdir(parents=True, exist_ok=True)
    e0s = atomic_energies(WORK / "atomic_energies")
    foundation = train_foundation(WORK / "foundation", e0s)
    test = cached(WORK / "test_ethanol.xyz", lambda: reference_md_frames(TARGET, TEST_FRAMES, stride=TEST_STRIDE,
                                                                         seed=1001))
    alone = EnsembleCalculator.from_files([foundation, foundation])
    alone_mae = float(np.mean([np.abs(_forces(alone, f) - f.arrays[REF_FORCES_KEY]).mean() for f in test]))
    results = {"molecule": TARGET, "quick": args.quick, "seed": args.seed, "foundation_molecules": FOUNDATION_MOLECULES,
               "foundation_alone_test_forces_mae_eV_per_A": alone_mae, "arms": {}}
    for arm in ARMS:
        folder = WORK / f"{tag}_{arm}"
        if folder.exists():
            shutil.rmtree(folder)
        results["arms"][arm] = run_arm(make_arm(folder, arm, e0s, foundation, args.quick, args.seed), test)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"foundation_{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / f"foundation_{tag}.png")
    print(json.dumps(results, indent=2))


def _forces(calc, frame) -> np.ndarray:
    atoms = frame.copy()
    atoms.calc = calc
    return atoms.get_forces()


if __name__ == "__main__":
    main()
