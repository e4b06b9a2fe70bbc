"""Benchmark: every architecture of the registry on one ethanol train/test split (GFN2-xTB labels from a 500 K
Langevin MD): parameter count, seconds per epoch and test-set force/energy MAE after the same number of epochs.

Writes scripts/results/architectures.{json,png} and architectures_table.md (the README table). The labelled set
is cached in scripts/results/ethanol_xtb.xyz, so reruns train on exactly the same structures. All models use
the same training settings (Adam, constant learning rate, EMA, forces weight 100) and one thread; epoch times are
wall-clock and process CPU seconds of one pass over the training set (the CPU figure is robust to other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# mace's TorchScript annotations and e3nn's constants loading warn once per model build: noise for a benchmark
warnings.filterwarnings("ignore", message="The TorchScript type system")
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")

import mace  # noqa: E402,F401  - before anything imports e3nn
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.data import atomic_numbers  # noqa: E402
from ase.io import read  # noqa: E402

from fhi_al.architectures.registry import hypers_class  # noqa: E402
from fhi_al.data.store import frames_to_text, label_atoms, make_label_id  # noqa: E402
from fhi_al.durable import atomic_write_json, atomic_write_text  # noqa: E402
from fhi_al.md import initialize_velocities, make_langevin  # noqa: E402
from fhi_al.procedures.atomic_energies import isolated_atom_energies, reference_factory  # noqa: E402
from fhi_al.references import compute_label  # noqa: E402
from fhi_al.references.xtb import make_xtb  # noqa: E402
from fhi_al.training.config import TrainingConfig  # noqa: E402
from fhi_al.training.engine import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
NAME = "architectures"
DATA_FILE = RESULTS / "ethanol_xtb.xyz"

# Sampling: GFN2-xTB Langevin MD of ethanol; one frame every SAMPLE_EVERY steps after the equilibration.
N_TRAIN, N_TEST = 60, 40
TEMPERATURE_K = 500.0
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
EQUILIBRATION_STEPS = 400
SAMPLE_EVERY = 25
DATA_SEED = 0

EPOCHS = 60
MODEL_SEED = 1
TRAINING = dict(batch_size=5, valid_batch_size=10, lr=0.01, weight_decay=5e-7, amsgrad=True, ema=True,
                ema_decay=0.99, clip_grad=10.0, energy_weight=1.0, forces_weight=100.0, scheduler="none")
# Comparable small models: cutoff 5 Å, ~32 hidden channels / neurons, two or three message-passing layers.
CUTOFF_A = 5.0
HYPERS = {
    "MACE": dict(r_max=CUTOFF_A, num_channels=16, max_L=1, max_ell=3, num_interactions=2, correlation=3,
                 num_radial_basis=8, radial_MLP=[32, 32], MLP_irreps="16x0e"),
    "ScaleShiftMACE": dict(r_max=CUTOFF_A, num_channels=16, max_L=1, max_ell=3, num_interactions=2,
                           correlation=3, num_radial_basis=8, radial_MLP=[32, 32], MLP_irreps="16x0e"),
    "NequIP": dict(r_max=CUTOFF_A, num_layers=3, l_max=1, num_features=16, num_basis=8, invariant_layers=2,
                   invariant_neurons=32),
    "ALIGNN": dict(cutoff=CUTOFF_A, alignn_layers=2, gcn_layers=1, hidden_features=32, embedding_features=16,
                   edge_input_features=20, triplet_input_features=10),
    "aenet": dict(rad_order=10, rad_cutoff=CUTOFF_A, ang_order=4, ang_cutoff=3.5, hidden_sizes=[64, 64]),
    "alchemical": dict(num_pseudo_species=4, cutoff_radius=CUTOFF_A, basis_cutoff=100.0, hidden_sizes=[32, 32]),
}
MEV = 1000.0


def sample_ethanol(count: int) -> list:
    """`count` labelled frames of a GFN2-xTB Langevin MD of ethanol at TEMPERATURE_K (raw xTB results)."""
    rng = np.random.default_rng(DATA_SEED)
    atoms = molecule("CH3CH2OH")
    calc = make_xtb()
    atoms.calc = calc
    initialize_velocities(atoms, TEMPERATURE_K, rng)
    dyn = make_langevin(atoms, temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS,
                        friction_per_fs=FRICTION_PER_FS, rng=rng)
    dyn.run(EQUILIBRATION_STEPS)
    frames = []
    while len(frames) < count:
        dyn.run(SAMPLE_EVERY)
        step = dyn.nsteps
        energy, forces = compute_label(calc, atoms, label_id=make_label_id("bench", 0, step))
        frames.append(label_atoms(atoms, energy_eV=energy, forces_eV_per_A=forces, procedure="bench",
                                  trajectory=0, md_step=step, reference="xtb", label_id=make_label_id("bench", 0, step)))
    return frames


def labelled_split() -> tuple[list, list]:
    """(train, test) from the cached labelled set (sampled and cached on the first run), split at random."""
    if DATA_FILE.exists():
        frames = read(DATA_FILE, index=":", format="extxyz")
    else:
        frames = sample_ethanol(N_TRAIN + N_TEST)
        atomic_write_text(DATA_FILE, frames_to_text(frames))
    order = np.random.default_rng(DATA_SEED).permutation(len(frames))
    return [frames[i] for i in order[:N_TRAIN]], [frames[i] for i in order[N_TRAIN:N_TRAIN + N_TEST]]


def atomic_energies_eV(work: Path) -> dict[int, float]:
    """Isolated-atom GFN2-xTB energies as E0s (a single composition leaves least-squares E0s degenerate)."""
    factory = reference_factory(name="xtb", run_dir=work)
    energies = isolated_atom_energies(["H", "C", "O"], calculator_factory=factory)
    return {atomic_numbers[symbol]: energy for symbol, energy in energies.items()}


def benchmark(name: str, train: list, test: list, e0s: dict[int, float], work: Path, epochs: int) -> dict:
    torch.manual_seed(MODEL_SEED)
    hypers = hypers_class(name)(**HYPERS[name])
    config = TrainingConfig(name_exp=name, seed=MODEL_SEED, model=name, hypers=hypers, atomic_energies=e0s,
                            **TRAINING)
    trainer = Trainer(config, work / name)
    started = time.perf_counter()
    member = trainer.create_member(name, MODEL_SEED, train)
    trainer.samples(test)  # featurize outside the timed epochs
    setup_s = time.perf_counter() - started
    wall, cpu = [], []
    for _ in range(epochs):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        trainer.train(member, 1)
        wall.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
    metrics = trainer.evaluate(member, test)
    n_atoms = len(test[0])
    return {"model": name, "hypers": HYPERS[name],
            "parameters": int(sum(p.numel() for p in member.model.parameters())),
            "epochs": epochs, "setup_s": setup_s, "epoch_wall_s": wall, "epoch_cpu_s": cpu,
            "mean_epoch_wall_s": float(np.mean(wall)), "mean_epoch_cpu_s": float(np.mean(cpu)),
            "test_forces_mae_meV_per_A": MEV * metrics["forces_mae"],
            "test_forces_rmse_meV_per_A": MEV * metrics["forces_rmse"],
            "test_energy_mae_meV_per_atom": MEV * metrics["energy_mae_per_atom"],
            "test_energy_mae_meV": MEV * metrics["energy_mae_per_atom"] * n_atoms}


def table(result: dict) -> str:
    lines = [f"Ethanol, GFN2-xTB labels from a {TEMPERATURE_K:.0f} K Langevin MD: {result['n_train']} training "
             f"and {result['n_test']} test structures, {result['epochs']} epochs with the same training settings "
             f"(batch {TRAINING['batch_size']}, constant lr {TRAINING['lr']}, EMA, isolated-atom xTB E0s), "
             f"one CPU thread; epoch time is process CPU time per pass over the training set "
             f"(`scripts/bench_architectures.py`).", "",
             "| architecture | parameters | epoch time (CPU s) | test force MAE (meV/Å) | test energy MAE (meV/atom) |",
             "|---|---:|---:|---:|---:|"]
    for row in result["architectures"]:
        lines.append(f"| {row['model']} | {row['parameters']:,} | {row['mean_epoch_cpu_s']:.2f} | "
                     f"{row['test_forces_mae_meV_per_A']:.0f} | {row['test_energy_mae_meV_per_atom']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["architectures"]
    names = [row["model"] for row in rows]
    panels = (("parameters", "parameters"), ("mean_epoch_cpu_s", "CPU s per epoch"),
              ("test_forces_mae_meV_per_A", "test force MAE (meV/Å)"),
              ("test_energy_mae_meV_per_atom", "test energy MAE (meV/atom)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.6))
    for axis, (key, label) in zip(axes, panels):
        axis.bar(names, [row[key] for row in rows], color="C0")
        axis.set_title(label, fontsize=10)
        axis.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(f"ethanol (GFN2-xTB), {result['n_train']} train / {result['n_test']} test, "
                 f"{result['epochs']} epochs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--models", nargs="*", default=list(HYPERS), choices=list(HYPERS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_architectures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    train, test = labelled_split()
    e0s = atomic_energies_eV(args.work)
    rows = []
    for name in args.models:
        rows.append(benchmark(name, train, test, e0s, args.work, args.epochs))
        row = rows[-1]
        print(f"{name}: {row['parameters']} parameters, {row['mean_epoch_cpu_s']:.3f} CPU s/epoch, "
              f"forces MAE {row['test_forces_mae_meV_per_A']:.1f} meV/Å, "
              f"energy MAE {row['test_energy_mae_meV_per_atom']:.2f} meV/atom", flush=True)
    result = {"n_train": len(train), "n_test": len(test), "epochs": args.epochs, "training": TRAINING,
              "atomic_energies_eV": e0s, "data_file": str(DATA_FILE.relative_to(REPO)),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "architectures": rows}
    atomic_write_json(RESULTS / f"{NAME}.json", result)
    atomic_write_text(RESULTS / f"{NAME}_table.md", table(result))
    plot(result, RESULTS / f"{NAME}.png")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
