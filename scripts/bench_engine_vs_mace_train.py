"""Benchmark: seconds per training epoch of fhi_al's engine vs mace_run_train on the same extxyz data and
hyperparameters (ethanol, xTB labels). Writes scripts/results/bench_engine_vs_mace_train.{json,png}.

Each epoch on both sides = one pass over the training set + validation (EMA weights) + a checkpoint.
Runs alternate (engine, mace, engine, mace, ...) so machine load affects both; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import mace  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.io import read, write  # noqa: E402

from fhi_al.architectures.mace.hypers import MaceHypers  # noqa: E402
from fhi_al.training.config import TrainingConfig  # noqa: E402
from fhi_al.training.engine import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
NAME = "bench_engine_vs_mace_train"
HYPERS = dict(num_channels=32, max_L=1, r_max=5.0, num_interactions=2, correlation=3, max_ell=3,
              num_radial_basis=8, num_cutoff_basis=5, radial_MLP=[64, 64, 64], MLP_irreps="16x0e")
TRAINING = dict(batch_size=5, valid_batch_size=5, lr=0.01, weight_decay=5e-7, ema=True, ema_decay=0.99,
                clip_grad=10.0, energy_weight=1.0, forces_weight=100.0, scheduler="ReduceLROnPlateau",
                lr_factor=0.8, scheduler_patience=50)
N_TRAIN, N_VALID = 45, 5
DISPLACEMENT_A = 0.1
_EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) INFO: Epoch (\d+):")


def make_data(folder: Path) -> tuple[Path, Path]:
    from tblite.ase import TBLite

    rng = np.random.default_rng(0)
    structures = []
    for _ in range(N_TRAIN + N_VALID):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=DISPLACEMENT_A, size=atoms.positions.shape)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        atoms.get_potential_energy()
        atoms.info["REF_energy"] = float(atoms.calc.results["energy"])
        atoms.arrays["REF_forces"] = np.array(atoms.calc.results["forces"])
        atoms.calc = None
        structures.append(atoms)
    folder.mkdir(parents=True, exist_ok=True)
    train, valid = folder / "train.xyz", folder / "valid.xyz"
    write(train, structures[:N_TRAIN], format="extxyz")
    write(valid, structures[N_TRAIN:], format="extxyz")
    return train, valid


def engine_epochs(train: Path, valid: Path, work: Path, epochs: int) -> list[float]:
    torch.set_num_threads(1)
    config = TrainingConfig(name_exp="bench", seed=1, hypers=MaceHypers(**HYPERS), model="MACE", **TRAINING)
    trainer = Trainer(config, work)
    member = trainer.create_member("bench_1", 1, read(train, ":"), read(valid, ":"))
    trainer.validate(member)  # like mace's initial validation
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train(member, 1, use_scheduler=True)
        trainer.save_checkpoint(member)
        times.append(time.perf_counter() - start)
    return times


def mace_epochs(train: Path, valid: Path, work: Path, epochs: int) -> list[float]:
    h = HYPERS
    args = [str(REPO / ".venv" / "bin" / "mace_run_train"), "--name", "bench", "--seed", "1", "--model", "MACE",
            "--train_file", str(train), "--valid_file", str(valid), "--energy_key", "REF_energy",
            "--forces_key", "REF_forces", "--E0s", "average", "--default_dtype", "float64", "--device", "cpu",
            "--num_channels", str(h["num_channels"]), "--max_L", str(h["max_L"]), "--r_max", str(h["r_max"]),
            "--num_interactions", str(h["num_interactions"]), "--correlation", str(h["correlation"]),
            "--max_ell", str(h["max_ell"]), "--num_radial_basis", str(h["num_radial_basis"]),
            "--num_cutoff_basis", str(h["num_cutoff_basis"]), "--radial_MLP", str(h["radial_MLP"]),
            "--MLP_irreps", h["MLP_irreps"], "--batch_size", str(TRAINING["batch_size"]),
            "--valid_batch_size", str(TRAINING["valid_batch_size"]), "--lr", str(TRAINING["lr"]),
            "--weight_decay", str(TRAINING["weight_decay"]), "--amsgrad", "--ema", "--ema_decay",
            str(TRAINING["ema_decay"]), "--clip_grad", str(TRAINING["clip_grad"]), "--loss", "weighted",
            "--energy_weight", str(TRAINING["energy_weight"]), "--forces_weight", str(TRAINING["forces_weight"]),
            "--scheduler", "ReduceLROnPlateau", "--lr_factor", str(TRAINING["lr_factor"]),
            "--scheduler_patience", str(TRAINING["scheduler_patience"]), "--max_num_epochs", str(epochs + 1),
            "--eval_interval", "1", "--error_table", "PerAtomRMSE", "--plot", "False", "--num_workers", "0",
            "--work_dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamps = {}  # epoch -> time of its validation line (the same line is in the normal and the debug log)
    for log_file in (work / "logs").glob("*.log"):
        for line in log_file.read_text().splitlines():
            match = _EPOCH_LINE.match(line)
            if match:
                stamps[int(match.group(2))] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    # differences between successive validation lines are whole epochs (train + validate + checkpoint)
    return [float(t) for t in np.diff([stamps[epoch] for epoch in sorted(stamps)])]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.5))
    for label, key in (("fhi_al engine", "engine_epoch_s"), ("mace_run_train", "mace_epoch_s")):
        axis.plot(np.concatenate(result[key]), "o-", label=label, ms=3)
    axis.set_xlabel("epoch (all repeats, in order)")
    axis.set_ylabel("seconds per epoch")
    axis.set_title(f"median ratio engine/mace = {result['ratio_median']:.2f}")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    work = Path("/tmp") / f"{NAME}_{os.getpid()}"
    train, valid = make_data(work / "data")
    engine, mace_runs = [], []
    for repeat in range(opts.repeats):
        engine.append(engine_epochs(train, valid, work / f"engine_{repeat}", opts.epochs))
        mace_dir = work / f"mace_{repeat}"
        mace_dir.mkdir(parents=True)
        mace_runs.append(mace_epochs(train, valid, mace_dir, opts.epochs))
    # the first engine epoch includes featurization (mace's preprocessing happens before its first epoch)
    engine_median = float(np.median(np.concatenate([times[1:] for times in engine])))
    mace_median = float(np.median(np.concatenate(mace_runs)))
    result = {"hypers": HYPERS, "training": TRAINING, "n_train": N_TRAIN, "n_valid": N_VALID,
              "epochs": opts.epochs, "repeats": opts.repeats, "dtype": "float64", "threads": 1,
              "engine_epoch_s": engine, "mace_epoch_s": mace_runs, "engine_median_s": engine_median,
              "mace_median_s": mace_median, "ratio_median": engine_median / mace_median, "target_ratio": 1.0,
              "torch": torch.__version__, "mace": mace.__version__, "load_average": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{NAME}.png")
    sys.stdout.write(f"engine {engine_median:.3f} s/epoch, mace_run_train {mace_median:.3f} s/epoch, "
                     f"ratio {result['ratio_median']:.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
