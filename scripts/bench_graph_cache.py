"""Benchmark: training-epoch time with and without the engine's featurization cache (neighbour graphs,
descriptors) on ~50 ethanol structures labelled with GFN2-xTB (tblite), for MACE and aenet.

Usage: .venv/bin/python scripts/bench_graph_cache.py [--structures 50] [--epochs 3]
Writes scripts/results/bench_graph_cache.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import mace  # noqa: F401  - before e3nn
import numpy as np
import torch
from ase.build import molecule

from fhi_al.architectures.aenet.hypers import AenetHypers
from fhi_al.architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
RATTLE_A = 0.1
ARCHITECTURES = {
    "MACE": MaceHypers(num_channels=16, max_L=1, r_max=5.0, num_interactions=2, correlation=2, radial_MLP=[32]),
    "aenet": AenetHypers(),
}


def ethanol_set(count: int, *, seed: int) -> list:
    from tblite.ase import TBLite

    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=RATTLE_A, size=atoms.positions.shape)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        atoms.get_potential_energy()
        atoms.info[REF_ENERGY_KEY] = float(atoms.calc.results["energy"])
        atoms.arrays[REF_FORCES_KEY] = np.array(atoms.calc.results["forces"])
        atoms.info["label_id"] = f"bench-{index}"
        atoms.calc = None
        structures.append(atoms)
    return structures


def epoch_seconds(model: str, structures: list, *, cache: bool, epochs: int) -> list[float]:
    config = TrainingConfig(model=model, hypers=ARCHITECTURES[model], batch_size=5, scheduler="none",
                            cache_featurization=cache, training_plots=False)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, folder)
        member = trainer.create_member("bench_1", 1, structures)
        times = []
        for _ in range(epochs):
            started = time.perf_counter()
            trainer._train_epoch(member, use_scheduler=False)
            times.append(time.perf_counter() - started)
    return times


def plot(results: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.4))
    names = list(results["epoch_seconds"])
    width = 0.38
    for offset, key, label in ((-width / 2, "cached", "with cache"), (width / 2, "uncached", "without cache")):
        values = [np.median(results["epoch_seconds"][name][key]) for name in names]
        axis.bar(np.arange(len(names)) + offset, values, width, label=label)
    axis.set_xticks(np.arange(len(names)), names)
    axis.set_ylabel("median seconds per epoch")
    axis.set_title(f"{results['structures']} ethanol structures (xTB), CPU")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--structures", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    structures = ethanol_set(args.structures, seed=7)
    results = {"structures": args.structures, "epochs": args.epochs, "threads": 1, "epoch_seconds": {}}
    for model in ARCHITECTURES:
        results["epoch_seconds"][model] = {
            "cached": epoch_seconds(model, structures, cache=True, epochs=args.epochs),
            "uncached": epoch_seconds(model, structures, cache=False, epochs=args.epochs)}
        times = results["epoch_seconds"][model]
        results["epoch_seconds"][model]["speedup_median"] = float(np.median(times["uncached"]) / np.median(times["cached"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_graph_cache.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "bench_graph_cache.png")
    print(json.dumps(results, indent=2))  # noqa: T201 - a script's report


if __name__ == "__main__":
    main()
