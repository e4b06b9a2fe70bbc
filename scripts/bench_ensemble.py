"""Benchmark: an ensemble of 4 MACE models giving forces + uncertainty for K = 1, 4, 8 structures in one call
vs mace's MACECalculator committee of the same 4 model files called once per structure, and vs one model.
Writes scripts/results/bench_ensemble.{json,png}.

ensemble_batch_K* evaluate all members as one stacked model (the default, with the optional C kernels of
fhi_al/architectures/mace/kernels/); ensemble_torch_K* the same without the kernels (FHI_AL_FUSED_KERNELS=0);
ensemble_looped_K* evaluate the members one by one on the same batched graph, for comparison.

Timings alternate between methods within every repeat so machine load affects all of them; medians of
process CPU time are the headline figures (single-threaded code; robust when other jobs share the cores),
wall-clock medians are recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import mace  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.io import read  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402

from fhi_al.architectures.mace import kernels  # noqa: E402
from fhi_al.architectures.mace.hypers import MaceHypers  # noqa: E402
from fhi_al.ensemble import EnsembleCalculator, ensemble_seeds  # noqa: E402
from fhi_al.training.config import TrainingConfig  # noqa: E402
from fhi_al.training.engine import Trainer, member_tag  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_vs_mace_train import HYPERS, TRAINING, make_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
NAME = "bench_ensemble"
SIZE = 4
KS = (1, 4, 8)
DISPLACEMENT_A = 0.05


def export_models(work: Path) -> list[Path]:
    train, valid = make_data(work / "data")
    config = TrainingConfig(name_exp="ens", hypers=MaceHypers(**HYPERS), model="MACE", **TRAINING)
    trainer = Trainer(config, work)
    paths = []
    for seed in ensemble_seeds(1, SIZE):
        member = trainer.create_member(member_tag("ens", seed), seed, read(train, ":10"), read(valid, ":"))
        trainer.train(member, 1)
        paths.append(trainer.export(member))
    return paths


def structures(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=DISPLACEMENT_A, size=atoms.positions.shape)
        out.append(atoms)
    return out


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def per_structure_calls(calculator, batch) -> np.ndarray:
    """(wall, CPU) seconds for the forces of every structure of `batch` with one ASE call each."""
    start = _clocks()
    for atoms in batch:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_forces()
    return _clocks() - start


def batched_call(calculator: EnsembleCalculator, batch, use_kernels: bool = True) -> np.ndarray:
    os.environ[kernels.DISABLE_VARIABLE] = "1" if use_kernels else "0"
    start = _clocks()
    results = calculator.calculate_batch(batch)
    elapsed = _clocks() - start
    os.environ[kernels.DISABLE_VARIABLE] = "1"
    assert all("forces_uncertainty_max" in r for r in results)
    return elapsed


def measure(paths: list[Path], repeats: int, calls: int) -> dict[str, list[list[float]]]:
    """Per method: [wall, CPU] seconds per structure of every repeat."""
    single = MACECalculator(model_paths=str(paths[0]), device="cpu", default_dtype="float64")
    committee = MACECalculator(model_paths=[str(p) for p in paths], device="cpu", default_dtype="float64")
    ensemble = EnsembleCalculator.from_files(paths)
    looped = EnsembleCalculator.from_files(paths)  # members evaluated one by one (no stacked model)
    looped.ensemble._stacked = (looped.ensemble.models, None)
    pool = structures(max(KS) * calls, seed=5)
    timings: dict[str, list[float]] = {"single_model": [], "mace_committee": [], "ensemble_ase_K1": []}
    timings.update({f"ensemble_batch_K{k}": [] for k in KS})
    timings.update({f"ensemble_looped_K{k}": [] for k in (1, max(KS))})
    timings.update({f"ensemble_torch_K{k}": [] for k in (1, max(KS))})
    # warm-up
    per_structure_calls(single, pool[:2]); per_structure_calls(committee, pool[:2]); batched_call(ensemble, pool[:8])
    batched_call(looped, pool[:8])
    batched_call(ensemble, pool[:8], use_kernels=False)
    for _ in range(repeats):
        timings["single_model"].append((per_structure_calls(single, pool[:calls]) / calls).tolist())
        timings["mace_committee"].append((per_structure_calls(committee, pool[:calls]) / calls).tolist())
        timings["ensemble_ase_K1"].append((per_structure_calls(ensemble, pool[:calls]) / calls).tolist())
        for k in KS:
            chunks = [pool[i * k:(i + 1) * k] for i in range(calls)]
            elapsed = sum(batched_call(ensemble, chunk) for chunk in chunks)
            timings[f"ensemble_batch_K{k}"].append((elapsed / (calls * k)).tolist())
            if f"ensemble_looped_K{k}" in timings:
                elapsed = sum(batched_call(looped, chunk) for chunk in chunks)
                timings[f"ensemble_looped_K{k}"].append((elapsed / (calls * k)).tolist())
                elapsed = sum(batched_call(ensemble, chunk, use_kernels=False) for chunk in chunks)
                timings[f"ensemble_torch_K{k}"].append((elapsed / (calls * k)).tolist())
    return timings


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["median_s_per_structure"])
    values = [1e3 * result["median_s_per_structure"][n] for n in names]
    fig, axis = plt.subplots(figsize=(9, 3.6))
    colors = ["tab:orange" if "looped" in n else "tab:green" if "torch" in n else "tab:blue" for n in names]
    axis.bar(range(len(names)), values, color=["grey", "tab:red"] + colors[2:])
    axis.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    axis.set_ylabel("ms per structure (forces)")
    from matplotlib.patches import Patch

    legend = [("grey", "one MACECalculator model"), ("tab:red", "MACECalculator committee of 4"),
              ("tab:blue", "fhi_al ensemble of 4 (stacked, fused kernels)"), ("tab:green", "same, torch only"),
              ("tab:orange", "members one by one")]
    axis.legend(handles=[Patch(color=c, label=label) for c, label in legend], fontsize=8)
    axis.set_title(f"4 members vs 1 model: {result['ratio_4_members_vs_single_model']:.2f}x; "
                   f"K=8 vs committee throughput: {result['throughput_gain_vs_committee']['8']:.2f}x", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the kernels use one)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    work = Path("/tmp") / f"{NAME}_{os.getpid()}"
    paths = export_models(work)
    timings = measure(paths, opts.repeats, opts.calls)
    median = {name: float(np.median(np.array(values)[:, 1])) for name, values in timings.items()}
    median_wall = {name: float(np.median(np.array(values)[:, 0])) for name, values in timings.items()}
    committee = median["mace_committee"]
    result = {
        "hypers": HYPERS, "ensemble_size": SIZE, "structure": "ethanol (9 atoms)", "dtype": "float64",
        "threads": opts.threads,
        "repeats": opts.repeats, "calls_per_repeat": opts.calls, "timings_s_per_structure": timings,
        "clock": "process CPU time (headline); wall clock in median_wall_s_per_structure",
        "median_s_per_structure": median, "median_wall_s_per_structure": median_wall,
        "wall_ratio_4_members_vs_single_model": median_wall["ensemble_batch_K1"] / median_wall["single_model"],
        "wall_throughput_gain_vs_committee": {
            str(k): median_wall["mace_committee"] / median_wall[f"ensemble_batch_K{k}"] for k in KS},
        "ratio_4_members_vs_single_model": median["ensemble_batch_K1"] / median["single_model"],
        "ratio_4_members_ase_vs_single_model": median["ensemble_ase_K1"] / median["single_model"],
        "throughput_gain_vs_committee": {str(k): committee / median[f"ensemble_batch_K{k}"] for k in KS},
        "throughput_gain_vs_committee_without_kernels": {
            str(k): committee / median[f"ensemble_torch_K{k}"] for k in (1, max(KS))},
        "fused_kernels": kernels.library(torch.float64) is not None,
        "targets": {"ratio_4_members_vs_single_model": 1.5, "throughput_gain_vs_committee_K8": 8.0},
        "torch": torch.__version__, "mace": mace.__version__, "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{NAME}.png")
    sys.stdout.write(json.dumps({k: result[k] for k in ("median_s_per_structure", "ratio_4_members_vs_single_model",
                                                        "throughput_gain_vs_committee",
                                                        "throughput_gain_vs_committee_without_kernels")},
                                indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
