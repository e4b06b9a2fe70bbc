"""Barrier benchmark of exploration: where active learning with biased or hot trajectories beats random frames
of equilibrium MD. Alanine dipeptide (ACE-ALA-NME, 22 atoms) with GFN2-xTB: 500 K MD stays in the C7eq/β basin
(φ < 0); the test sets are a relaxed φ/ψ scan (the barrier to the φ > 0 basin) and frames of 500 K MD.

    S=scripts/bench_exploration.py; P="nice -n 19 .venv/bin/python"
    $P $S testsets                      # relaxed 12x12 φ/ψ scan + 300 frames of 500 K MD (~10 min)
    $P $S prepare al-metad              # run folder of an arm: al, al-bias, al-metad, al-rex
    $P $S run al-metad                  # FHI_AL in it; wall time and the ledger's reference calls
    $P $S random 50 100 200 400         # baselines: N random frames of 500 K reference MD, converged
    $P $S evaluate                      # scripts/results/exploration/bench_exploration.{json,png}
    (--smoke on prepare/run/random/evaluate: tiny settings, folders under .../smoke, *_smoke outputs)

Caches (test sets, pool, run folders, baseline models) live under /tmp/bench_exploration; committed outputs are
the small JSON/PNG files in scripts/results/exploration/. Every stage reuses what an earlier invocation finished.
"""

from __future__ import annotations

import argparse
import json
import math
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
from ase import Atoms, units  # noqa: E402
from ase.constraints import FixInternals  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.neighborlist import natural_cutoffs, neighbor_list  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

from fhi_al.md import initialize_velocities, make_langevin  # noqa: E402
from fhi_al.references import make_reference  # noqa: E402
from fhi_al.references.ledger import CountingCalculator, ReferenceCost, ledger_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results" / "exploration"
EXAMPLE = REPO / "settings" / "quick_example"
VENV_BIN = REPO / ".venv" / "bin"
WORK = Path("/tmp") / "bench_exploration"
KCAL = units.kcal / units.mol  # eV per kcal/mol
REFERENCE = {"calculator": "xtb", "xtb": {"method": "GFN2-xTB"}}
# ACE-ALA-NME, extended (φ = ψ = 180°), the classic 22-atom PDB (ACE: 0-5, ALA: 6-15, NME: 16-21).
EXTENDED = """H 2.000 1.000 0.000|C 2.000 2.090 0.000|H 1.486 2.454 0.890|H 1.486 2.454 -0.890|C 3.427 2.641 0.000|
O 4.391 1.877 0.000|N 3.555 3.970 0.000|H 2.733 4.556 0.000|C 4.853 4.614 0.000|H 5.408 4.316 0.890|
C 5.661 4.221 -1.232|H 5.123 4.521 -2.131|H 6.630 4.719 -1.206|H 5.809 3.141 -1.241|C 4.713 6.129 0.000|
O 3.601 6.653 0.000|N 5.846 6.835 0.000|H 6.737 6.359 0.000|C 5.846 8.284 0.000|H 4.819 8.648 0.000|
H 6.360 8.648 0.890|H 6.360 8.648 -0.890"""
PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)  # C-N-Cα-C and N-Cα-C-N, 0-based
PHI_SIDE, PSI_SIDE = list(range(9, 22)), list(range(15, 22))  # atoms that turn with φ (about N-Cα) and ψ (Cα-C)
C7EQ, C7AX = (-83.0, 73.0), (73.0, -60.0)
GRID_DEG = np.arange(-180.0, 180.0, 30.0)  # 12 x 12 relaxed scan
OTHER_BASIN_PHI = (0.0, 120.0)  # φ in this range: the C7ax/αL side beyond the saddle, not reached by 500 K MD
TIMESTEP_FS, FRICTION_PER_FS, T_K = 0.5, 0.01, 500.0
EQUILIBRATION, TEST_FRAMES, TEST_STRIDE, TEST_SEED = 1000, 300, 40, 1001
POOL_FRAMES, POOL_STRIDE, POOL_SEED = 500, 20, 2002  # the baseline's pool; a frame costs POOL_STRIDE calls
ARMS = ("al", "al-bias", "al-metad", "al-rex")
REX_LADDER_K = [500.0, 721.0, 1040.0, 1500.0]  # geometric, 500-1500 K
FULL = dict(al={"max_MD_steps": 4000, "max_set_size": 250, "max_final_epochs": 200, "patience": 20},
            structure_epochs=37500, min_epochs=20, max_epochs=300, patience=20)
SMOKE = dict(al={"max_MD_steps": 150, "max_set_size": 16, "max_initial_epochs": 10, "intermediate_epochs": 5,
                 "n_samples": 4, "max_epochs_worker": 1, "max_final_epochs": 4, "patience": 2},
             structure_epochs=200, min_epochs=2, max_epochs=6, patience=2)


# ------------------------------------------------------------------------------------------ molecule, reference
def extended() -> Atoms:
    rows = [row.split() for row in EXTENDED.replace("\n", "").split("|")]
    return Atoms([r[0] for r in rows], positions=[[float(x) for x in r[1:]] for r in rows])


def torsions(atoms: Atoms) -> tuple[float, float]:
    """(φ, ψ) in degrees, in [-180, 180)."""
    return tuple((atoms.get_dihedral(*t) + 180.0) % 360.0 - 180.0 for t in (PHI, PSI))


def set_torsions(atoms: Atoms, phi: float, psi: float) -> None:
    atoms.set_dihedral(*PHI, phi, indices=PHI_SIDE)
    atoms.set_dihedral(*PSI, psi, indices=PSI_SIDE)


def bonds(atoms: Atoms) -> set:
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    return {(a, b) for a, b in zip(i, j) if a < b}


def counted_reference(ledger: Path) -> CountingCalculator:
    """GFN2-xTB (the runs' reference, same options) whose every call goes to `ledger`."""
    ledger.unlink(missing_ok=True)
    return CountingCalculator(make_reference(name="xtb", options=REFERENCE["xtb"]), ledger=ledger, purpose="label")


def labelled(atoms: Atoms, **info) -> Atoms:
    """A copy with the calculator's raw results as REF_energy/REF_forces (no constraint-adjusted forces)."""
    frame = Atoms(atoms.numbers, atoms.positions)
    frame.info.update(REF_energy=float(atoms.calc.results["energy"]), config_type="Default", **info)
    frame.info["phi_deg"], frame.info["psi_deg"] = torsions(atoms)
    frame.arrays["REF_forces"] = np.array(atoms.calc.results["forces"])
    return frame


def relax(atoms: Atoms, calc, *, fix: tuple[float, float] | None, fmax=0.05, steps=400) -> Atoms:
    """BFGS relaxation (with φ/ψ fixed at `fix` degrees after turning them there); -> the labelled frame."""
    atoms = atoms.copy()
    if fix is not None:
        set_torsions(atoms, *fix)
        atoms.set_constraint(FixInternals(dihedrals_deg=[[fix[0], list(PHI)], [fix[1], list(PSI)]]))
    atoms.calc = calc
    opt = BFGS(atoms, maxstep=0.1, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    atoms.get_potential_energy()
    return labelled(atoms, converged=converged, opt_steps=opt.nsteps, bonds_kept=bonds(atoms) == bonds(extended()))


# ------------------------------------------------------------------------------------------ stage 1: test sets
def saddle(energy: np.ndarray, a: int, b: int) -> tuple[float, int]:
    """Lowest energy at which flat grid points a and b of the periodic 2-D grid `energy` are connected through
    neighbouring points (the highest point of the minimum-energy path on the grid), and that point."""
    n1, n2 = energy.shape
    parent, added = list(range(energy.size)), np.zeros(energy.size, bool)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.argsort(energy, axis=None):
        added[i] = True
        r, c = divmod(int(i), n2)
        for j in (((r + 1) % n1) * n2 + c, ((r - 1) % n1) * n2 + c, r * n2 + (c + 1) % n2, r * n2 + (c - 1) % n2):
            if added[j]:
                parent[find(j)] = find(i)
        if added[a] and added[b] and find(a) == find(b):
            return float(energy.flat[i]), int(i)
    raise ValueError("grid points not connected")


def basins(energy: np.ndarray) -> tuple[int, int]:
    """Flat indices of the lowest grid point with φ < 0 (C7eq side) and with φ in OTHER_BASIN_PHI."""
    phi = np.repeat(GRID_DEG, len(GRID_DEG)).reshape(energy.shape)
    other = (phi > OTHER_BASIN_PHI[0]) & (phi < OTHER_BASIN_PHI[1])
    return int(np.argmin(np.where(phi < 0, energy, np.inf))), int(np.argmin(np.where(other, energy, np.inf)))


def barrier(energy: np.ndarray, a: int, b: int) -> dict:
    """Barrier (kcal/mol) from grid point a to b along the grid's minimum-energy path, and the scan's maximum,
    energies relative to point a."""
    top, at = saddle(energy, a, b)
    g = GRID_DEG
    return {"barrier_kcal": (top - energy.flat[a]) / KCAL, "reverse_barrier_kcal": (top - energy.flat[b]) / KCAL,
            "saddle_phi_psi_deg": [float(g[at // len(g)]), float(g[at % len(g)])],
            "scan_max_kcal": (energy.max() - energy.flat[a]) / KCAL}


def grid_energies(frames: list, energies) -> np.ndarray:
    grid = np.full((len(GRID_DEG), len(GRID_DEG)), np.nan)
    for atoms, energy in zip(frames, energies):
        grid[atoms.info["grid_i"], atoms.info["grid_j"]] = energy
    return grid


def minima(calc) -> dict:
    """C7eq and C7ax relaxed freely from the extended structure turned to their torsions."""
    result = {}
    for name, start in (("C7eq", C7EQ), ("C7ax", C7AX)):
        atoms = extended()
        set_torsions(atoms, *start)
        frame = result[name] = relax(atoms, calc, fix=None, fmax=0.01, steps=1000)
        print(f"{name}: φ/ψ = {frame.info['phi_deg']:.1f}/{frame.info['psi_deg']:.1f}, E = "
              f"{frame.info['REF_energy']:.4f} eV, {frame.info['opt_steps']} BFGS steps, bonds kept: "
              f"{frame.info['bonds_kept']}", flush=True)
    return result


def scan(start: Atoms, calc) -> list:
    """Relaxed φ/ψ scan on GRID_DEG², a snake through the periodic grid from the point nearest C7eq, each point
    relaxed from its predecessor's relaxed structure with φ and ψ fixed."""
    n = len(GRID_DEG)
    rows = np.roll(np.arange(n), -int(np.argmin(abs(GRID_DEG - C7EQ[0]))))
    cols = np.roll(np.arange(n), -int(np.argmin(abs(GRID_DEG - C7EQ[1]))))
    frames, atoms, started = [], start, time.perf_counter()
    for k, i in enumerate(rows):
        for j in (cols if k % 2 == 0 else cols[::-1]):
            atoms = relax(atoms, calc, fix=(GRID_DEG[i], GRID_DEG[j]))
            atoms.info.update(grid_i=int(i), grid_j=int(j))
            frames.append(atoms)
        print(f"scan row φ = {GRID_DEG[i]:g}: {time.perf_counter() - started:.0f} s", flush=True)
    return frames


def md_frames(start: Atoms, calc, *, seed: int, frames: int, stride: int) -> tuple[list, np.ndarray]:
    """`frames` labelled frames `stride` steps apart of 500 K Langevin MD after EQUILIBRATION steps, and φ/ψ of
    every step (equilibration included)."""
    atoms = start.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    initialize_velocities(atoms, T_K, rng)
    dyn = make_langevin(atoms, temperature_K=T_K, timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS, rng=rng)
    angles, result = [], []
    dyn.attach(lambda: angles.append(torsions(atoms)), interval=1)
    dyn.run(EQUILIBRATION)
    for _ in range(frames):
        dyn.run(stride)
        result.append(labelled(atoms, md_step=int(dyn.nsteps), temperature_K=T_K))
    return result, np.array(angles)


def reference_md_pool(start: Atoms) -> list:
    """The baseline's pool: POOL_FRAMES frames POOL_STRIDE steps apart of 500 K reference MD (cached)."""
    path = WORK / f"pool_{POOL_FRAMES}.xyz"
    if not path.is_file():
        calc = make_reference(name="xtb", options=REFERENCE["xtb"])
        write(path, md_frames(start, calc, seed=POOL_SEED, frames=POOL_FRAMES, stride=POOL_STRIDE)[0], format="extxyz")
    return read(path, ":")


def testsets(args) -> int:
    if all(path.is_file() for path in (RESULTS / "testsets.json", WORK / "scan.xyz", WORK / "equilibrium.xyz")):
        print(f"test sets done: {RESULTS / 'testsets.json'} (delete it to redo them)", flush=True)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    report, started = {}, time.perf_counter()
    calc = counted_reference(WORK / "ledger_minima.jsonl")
    found = minima(calc)
    write(WORK / "minimum.xyz", found["C7eq"], format="extxyz")
    report["minima"] = {name: {key: f.info[key] for key in ("phi_deg", "psi_deg", "REF_energy", "bonds_kept")}
                        for name, f in found.items()}
    report["minima"]["C7ax"]["above_C7eq_kcal"] = (found["C7ax"].info["REF_energy"]
                                                   - found["C7eq"].info["REF_energy"]) / KCAL
    report["calls"] = {"minima": ReferenceCost.from_ledger(WORK / "ledger_minima.jsonl").paid}
    t0 = time.perf_counter()
    frames = scan(found["C7eq"], counted_reference(WORK / "ledger_scan.jsonl"))
    write(WORK / "scan.xyz", frames, format="extxyz")
    grid = grid_energies(frames, [f.info["REF_energy"] for f in frames])
    a, b = basins(grid)
    report["scan"] = {"grid_deg": GRID_DEG.tolist(), "points": len(frames), "seconds": time.perf_counter() - t0,
                      "unconverged": sum(not f.info["converged"] for f in frames),
                      "bonds_changed": sum(not f.info["bonds_kept"] for f in frames),
                      "energy_rel_kcal": ((grid - grid.min()) / KCAL).round(3).tolist(),
                      "basin_a_phi_psi_deg": [GRID_DEG[a // 12], GRID_DEG[a % 12]],
                      "basin_b_phi_psi_deg": [GRID_DEG[b // 12], GRID_DEG[b % 12]], **barrier(grid, a, b)}
    report["scan"]["barrier_eV"] = report["scan"]["barrier_kcal"] * KCAL
    report["calls"]["scan"] = ReferenceCost.from_ledger(WORK / "ledger_scan.jsonl").paid
    t0 = time.perf_counter()
    eq, angles = md_frames(found["C7eq"], counted_reference(WORK / "ledger_md.jsonl"), seed=TEST_SEED,
                           frames=TEST_FRAMES, stride=TEST_STRIDE)
    write(WORK / "equilibrium.xyz", eq, format="extxyz")
    other = (angles[:, 0] > OTHER_BASIN_PHI[0]) & (angles[:, 0] < OTHER_BASIN_PHI[1])
    report["equilibrium_md"] = {"temperature_K": T_K, "frames": len(eq), "stride_steps": TEST_STRIDE,
                                "equilibration_steps": EQUILIBRATION, "steps": len(angles),
                                "seconds": time.perf_counter() - t0, "other_basin_phi_range_deg": OTHER_BASIN_PHI,
                                "crossed": bool(other.any()), "steps_in_other_basin": int(other.sum()),
                                "phi_range_deg": [float(angles[:, 0].min()), float(angles[:, 0].max())],
                                "psi_range_deg": [float(angles[:, 1].min()), float(angles[:, 1].max())]}
    report["calls"]["equilibrium_md"] = ReferenceCost.from_ledger(WORK / "ledger_md.jsonl").paid
    report["wall_time_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "testsets.json").write_text(json.dumps(report, indent=1))
    plot_testsets(grid, angles, RESULTS / "testsets.png")
    print(json.dumps({k: report[k] for k in ("calls", "equilibrium_md")} | {"barrier_kcal": report["scan"]
                      ["barrier_kcal"], "barrier_eV": report["scan"]["barrier_eV"]}, indent=1), flush=True)
    return 0


def plot_testsets(grid: np.ndarray, angles: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    image = surface(ax, (grid - grid.min()) / KCAL, "relaxed scan, kcal/mol above the minimum", cmap="viridis")
    fig.colorbar(image, ax=ax)
    shown = (angles[::10] + 195.0) % 360.0 - 195.0  # the plot's periodic window [-195, 165)
    ax.plot(shown[:, 0], shown[:, 1], ".", ms=1, color="w", alpha=0.5, label="500 K reference MD (test set)")
    ax.legend(fontsize=7, loc="lower left")
    footer(fig)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def surface(ax, values: np.ndarray, title: str, **kwargs):
    image = ax.pcolormesh(np.append(GRID_DEG, 180) - 15, np.append(GRID_DEG, 180) - 15, values.T, shading="flat",
                          **kwargs)
    ax.set(xlabel="φ (deg)", ylabel="ψ (deg)", title=title, xlim=(-195, 165), ylim=(-195, 165))
    ax.title.set_fontsize(8)
    return image


def footer(fig) -> None:
    fig.text(0.005, 0.005, "made by: python scripts/bench_exploration.py " + " ".join(sys.argv[1:]), fontsize=6,
             color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))


# ------------------------------------------------------------------------------------------ stage 2-3: arms
def arm_md(arm: str, num_trajectories: int) -> dict:
    base = yaml.safe_load((EXAMPLE / "active_learning_settings.yaml").read_text())["MD"] | {"temperature": T_K}
    entries = {}
    for i in range(num_trajectories):
        md = dict(base)
        if arm == "al-bias" and i > 0:
            md["bias"] = "uncertainty"
        if arm == "al-metad" and i > 0:
            md["metadynamics"] = {"cvs": [{"torsion": list(PHI)}, {"torsion": list(PSI)}], "biasfactor": 5}
        if arm == "al-rex":
            md["temperature"] = REX_LADDER_K[i]
        entries[i] = md
    return entries


def atomic_energies(mace_settings: dict, al_settings: dict) -> dict:
    """Isolated-atom energies with the reference, computed once (FHI_AL-atomic-energies) for every arm."""
    folder = WORK / "atomic_energies"
    if not (folder / "atomic_energies.yaml").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / "geometry.in", read(WORK / "minimum.xyz"), format="aims")
        (folder / "mace_settings.yaml").write_text(yaml.safe_dump(mace_settings, sort_keys=False))
        (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al_settings, sort_keys=False))
        subprocess.run([str(VENV_BIN / "FHI_AL-atomic-energies"), "--run-dir", str(folder)], check=True,
                       env=child_env(), stdout=subprocess.DEVNULL)
    return yaml.safe_load((folder / "atomic_energies.yaml").read_text())["atomic_energies"]


def prepare(args, arm: str | None = None, out: Path | None = None) -> Path:
    """The run folder of an arm: the quick example's MACE, xtb-md initial data at 500 K, 4 trajectories."""
    from fhi_al.settings import load_run_settings

    arm, out = arm or args.arm, out or args.out or arm_dir(args, arm or args.arm)
    mace_settings = yaml.safe_load((EXAMPLE / "mace_settings.yaml").read_text())
    al_settings = yaml.safe_load((EXAMPLE / "active_learning_settings.yaml").read_text())
    mace_settings["GENERAL"]["name_exp"] = "aladip"
    al = al_settings["ACTIVE_LEARNING"]
    al.update(desired_acc=0.0, ensemble_size=args.ensemble_size, num_trajectories=4, initial_sampling="xtb-md",
              initial_xtb_method="GFN1-xTB", analysis=False)
    al.update(args.config["al"])
    al_settings["REFERENCE"] = REFERENCE
    for item in args.set:
        key, value = item.split("=", 1)
        al[key] = yaml.safe_load(value)
    energies = atomic_energies(mace_settings, al_settings)
    mace_settings["ARCHITECTURE"]["atomic_energies"] = energies
    al_settings["MD"] = arm_md(arm, al["num_trajectories"])
    if arm == "al-rex":
        al["replica_exchange_steps"] = 50
    out.mkdir(parents=True, exist_ok=True)
    write(out / "geometry.in", read(WORK / "minimum.xyz"), format="aims")
    (out / "mace_settings.yaml").write_text(yaml.safe_dump(mace_settings, sort_keys=False))
    (out / "active_learning_settings.yaml").write_text(yaml.safe_dump(al_settings, sort_keys=False))
    load_run_settings(out)  # validation now, not in the run
    print(f"prepared {arm} in {out}", flush=True)
    return out


def arm_dir(args, arm: str) -> Path:
    return args.work / "runs" / arm


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def run(args) -> int:
    folder = args.out or arm_dir(args, args.arm)
    if (folder / "bench_run.json").is_file() and json.loads((folder / "bench_run.json").read_text())["status"] == 0:
        print(f"{folder} has finished: {(folder / 'bench_run.json').read_text()}", flush=True)
        return 0
    if not (folder / "active_learning_settings.yaml").is_file():
        prepare(args, args.arm, folder)
    started = time.perf_counter()
    with open(folder / "fhi_al_stdout.txt", "ab") as out:
        status = subprocess.run([str(VENV_BIN / "FHI_AL"), "--run-dir", str(folder)], cwd=folder, env=child_env(),
                                stdout=out, stderr=subprocess.STDOUT).returncode
    cost = ReferenceCost.from_ledger(ledger_path(folder))
    record = {"arm": args.arm, "status": status, "wall_time_s": time.perf_counter() - started,
              "reference_calls": cost.paid, "cost": cost.as_dict(), "summary": cost.summary()}
    (folder / "bench_run.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1), flush=True)
    return status


# ------------------------------------------------------------------------------------------ stage 4: baseline
def random_baseline(args) -> int:
    """Ensembles trained from scratch to convergence on N random pool frames (90/10), models exported."""
    from fhi_al.settings import load_run_settings
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer, member_tag

    settings_dir = args.work / "random" / "settings"
    if not (settings_dir / "mace_settings.yaml").is_file():
        prepare(args, "al", settings_dir)
    config = TrainingConfig.from_settings(load_run_settings(settings_dir))
    pool = reference_md_pool(read(WORK / "minimum.xyz"))
    for n in args.sizes:
        folder = args.work / "random" / f"n{n}_s{args.seed}"
        if (folder / "result.json").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        order = np.random.default_rng(args.seed).permutation(len(pool))[:n]
        chosen = [pool[i] for i in order]
        n_valid = max(1, round(0.1 * n))
        trainer, started = Trainer(config, folder), time.perf_counter()
        max_epochs = min(args.config["max_epochs"], max(args.config["min_epochs"],
                                                        math.ceil(args.config["structure_epochs"] / n)))
        epochs = []
        for k in range(args.ensemble_size):
            seed = 1000 * args.seed + 17 * k + 1
            member = trainer.create_member(member_tag("baseline", seed), seed, chosen[n_valid:], chosen[:n_valid])
            trainer.converge(member, max_epochs, args.config["patience"], 0.002)
            trainer.export(member)
            epochs.append(member.epoch)
        result = {"n_frames": n, "seed": args.seed, "reference_calls": n * POOL_STRIDE, "stride_steps": POOL_STRIDE,
                  "max_epochs": max_epochs, "epochs": epochs, "seconds": time.perf_counter() - started,
                  "phi_other_basin_frames": int(sum(OTHER_BASIN_PHI[0] < a.info["phi_deg"] < OTHER_BASIN_PHI[1]
                                                    for a in chosen))}
        (folder / "result.json").write_text(json.dumps(result, indent=1))
        print(f"random N={n} seed={args.seed}: {result}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ stage 5: evaluate
def errors(ensemble, scan_frames: list, eq_frames: list, reference: np.ndarray) -> dict:
    """Relative energies on the scan (each against its own grid minimum), barrier, force MAEs."""
    def predict(frames):
        return [r for start in range(0, len(frames), 50) for r in ensemble.predict(frames[start:start + 50])]

    scan_pred, eq_pred = predict(scan_frames), predict(eq_frames)
    grid = grid_energies(scan_frames, [r["energy"] for r in scan_pred])
    delta = ((grid - grid.min()) - (reference - reference.min())) / KCAL
    a, b = basins(reference)
    mine, ref = barrier(grid, a, b), barrier(reference, a, b)

    def force_mae(frames, preds):
        return 1e3 * float(np.mean([np.abs(p["forces"] - f.arrays["REF_forces"]).mean()
                                    for f, p in zip(frames, preds)]))

    return {"scan_rel_energy_mae_kcal": float(np.abs(delta).mean()),
            "scan_rel_energy_max_kcal": float(np.abs(delta).max()),
            "barrier_kcal": mine["barrier_kcal"], "barrier_error_kcal": mine["barrier_kcal"] - ref["barrier_kcal"],
            "scan_max_error_kcal": mine["scan_max_kcal"] - ref["scan_max_kcal"],
            "scan_forces_mae_meV_per_A": force_mae(scan_frames, scan_pred),
            "eq_forces_mae_meV_per_A": force_mae(eq_frames, eq_pred), "error_map_kcal": delta.round(3).tolist()}


def label_phis(run_dir: Path) -> list[float]:
    """φ of every frame in the run's final datasets (the labels; shared frames counted once)."""
    from fhi_al.data.store import DatasetStore

    store, seen = DatasetStore(run_dir / "data"), {}
    for name in store.names():
        if name.startswith("final/"):
            for atoms in store.read(name):
                seen[atoms.positions.round(6).tobytes()] = torsions(atoms)[0]
    return list(seen.values())


def exploration(run_dir: Path) -> dict:
    """Hills deposited per metadynamics trajectory and the replica-exchange acceptance, when the arm has them."""
    rex = run_dir / "results" / "replica_exchange.json"
    return {"hills": {p.stem: len(p.read_text().splitlines()) for p in sorted(run_dir.glob("restart/al/hills_*"))},
            "replica_exchange": json.loads(rex.read_text())["pairs"] if rex.is_file() else None}


def evaluate(args) -> int:
    from fhi_al.ensemble import Ensemble, run_model_paths

    scan_frames, eq_frames = read(WORK / "scan.xyz", ":"), read(WORK / "equilibrium.xyz", ":")
    reference = grid_energies(scan_frames, [f.info["REF_energy"] for f in scan_frames])
    rows = []
    for record in sorted((args.work / "runs").glob("*/bench_run.json")):
        run = json.loads(record.read_text())
        if run["status"] != 0:
            print(f"skipping {record.parent.name}: status {run['status']}", flush=True)
            continue
        phis = label_phis(record.parent)
        rows.append({"name": run["arm"], "kind": "active learning", "reference_calls": run["reference_calls"],
                     "labels": run["cost"]["labels"], "wall_time_s": run["wall_time_s"],
                     "frames_in_final_data": len(phis), "exploration": exploration(record.parent),
                     "labels_in_other_basin": int(sum(OTHER_BASIN_PHI[0] < p < OTHER_BASIN_PHI[1] for p in phis)),
                     **errors(Ensemble.from_files(run_model_paths(record.parent)), scan_frames, eq_frames, reference)})
    for record in sorted((args.work / "random").glob("n*_s*/result.json")):
        base = json.loads(record.read_text())
        rows.append({"name": f"random N={base['n_frames']} s{base['seed']}", "kind": "random 500 K MD frames",
                     "reference_calls": base["reference_calls"], "labels": base["n_frames"],
                     "labels_in_other_basin": base["phi_other_basin_frames"],
                     **errors(Ensemble.from_files(sorted((record.parent / "model").glob("*.model"))), scan_frames,
                              eq_frames, reference)})
    for row in rows:
        print(f"{row['name']:>18}: {row['reference_calls']:5d} calls, scan MAE {row['scan_rel_energy_mae_kcal']:.2f} "
              f"(max {row['scan_rel_energy_max_kcal']:.1f}) kcal/mol, barrier error {row['barrier_error_kcal']:+.2f}, "
              f"forces scan/eq {row['scan_forces_mae_meV_per_A']:.0f}/{row['eq_forces_mae_meV_per_A']:.0f} meV/Å",
              flush=True)
    stem = "bench_exploration" + ("_smoke" if args.smoke else "")
    testset = json.loads((RESULTS / "testsets.json").read_text())
    report = {"command": "python scripts/bench_exploration.py " + " ".join(sys.argv[1:]), "smoke": args.smoke,
              "protocol": PROTOCOL,
              "reference_barrier_kcal": testset["scan"]["barrier_kcal"], "testset_calls": testset["calls"],
              "other_basin_phi_deg": OTHER_BASIN_PHI, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
    plot(rows, reference, RESULTS / f"{stem}.png")
    return 0


PROTOCOL = ("scan: model energies (ensemble mean) at the 144 reference-relaxed geometries, each relative to its own "
            "grid minimum; barrier: highest point of the minimum-energy path on the periodic grid (4 neighbours) from "
            "the lowest grid point with φ < 0 to the lowest with φ in other_basin_phi_deg, relative to the first; "
            "forces: MAE per component of the ensemble mean on the scan frames (raw reference forces) and on the "
            "300 frames of 500 K reference MD; calls: active learning = paid calls of the run's ledger (isolated-atom "
            "energies, computed once for every arm, excluded), random = N x %d MD steps of reference MD" % POOL_STRIDE)
LABELS = {"scan_rel_energy_mae_kcal": "scan relative-energy MAE", "barrier_error_kcal": "|barrier error|",
          "scan_forces_mae_meV_per_A": "scan frames", "eq_forces_mae_meV_per_A": "500 K MD frames"}


def plot(rows: list, reference: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    for ax, keys, ylabel in ((axes[0], ("scan_rel_energy_mae_kcal", "barrier_error_kcal"), "kcal/mol"),
                             (axes[1], ("scan_forces_mae_meV_per_A", "eq_forces_mae_meV_per_A"), "force MAE (meV/Å)")):
        for key, marker in zip(keys, "os"):
            for kind, color in (("active learning", "tab:red"), ("random 500 K MD frames", "tab:blue")):
                sel = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["reference_calls"])
                ax.plot([r["reference_calls"] for r in sel], [abs(r[key]) for r in sel], marker, color=color,
                        ls="-" if kind != "active learning" else "none", label=f"{kind}: {LABELS[key]}")
                for r in sel if kind == "active learning" else []:
                    ax.annotate(r["name"], (r["reference_calls"], abs(r[key])), xytext=(4, 3),
                                textcoords="offset points", fontsize=6)
        ax.set(xscale="log", yscale="log", xlabel="reference calls (random: N x %d MD steps)" % POOL_STRIDE,
               ylabel=ylabel)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6)
        ax.grid(True, which="both", alpha=0.3)
    surface(axes[2], (reference - reference.min()) / KCAL, "reference relaxed scan (kcal/mol)", cmap="viridis")
    fig.colorbar(axes[2].collections[0], ax=axes[2])
    if rows:
        best = min(rows, key=lambda r: (r["kind"] != "active learning", r["scan_rel_energy_mae_kcal"]))
        limit = max(1.0, np.abs(best["error_map_kcal"]).max())
        image = surface(axes[3], np.array(best["error_map_kcal"]), f"{best['name']}: model - reference "
                        f"(kcal/mol, rel. to own minimum)", cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(image, ax=axes[3])
    footer(fig)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    sub.add_parser("testsets", help="relaxed φ/ψ scan and 500 K MD test frames")
    for name in ("prepare", "run"):
        stage = sub.add_parser(name, help=f"{name} the run folder of an arm")
        stage.add_argument("arm", choices=ARMS)
        stage.add_argument("--out", type=Path, help="run folder (default: WORK[/smoke]/runs/ARM)")
    baseline = sub.add_parser("random", help="random-frame baselines")
    baseline.add_argument("sizes", type=int, nargs="+")
    baseline.add_argument("--seed", type=int, default=0)
    sub.add_parser("evaluate", help="errors of every finished arm and baseline; JSON and plot")
    for stage in sub.choices.values():
        stage.add_argument("--smoke", action="store_true", help="tiny settings (a run in a few minutes)")
        stage.add_argument("--ensemble-size", type=int, default=2)
        stage.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override an ACTIVE_LEARNING key of the arms (repeatable)")
    args = parser.parse_args(argv)
    args.config = SMOKE if args.smoke else FULL
    args.work = WORK / "smoke" if args.smoke else WORK
    return args


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    args = parse_args(argv)
    if args.stage == "prepare":
        prepare(args)
        return 0
    return {"testsets": testsets, "run": run, "random": random_baseline, "evaluate": evaluate}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
