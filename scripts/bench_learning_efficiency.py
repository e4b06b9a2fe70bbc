"""Benchmark: test-set error of fhi_al's active-learning ensemble vs ensembles trained on N random reference-MD
frames, against the number of reference labels, plus the uncertainty calibration of analysis mode (issue 8).

One command runs everything and writes scripts/results/learning_efficiency_{tag}.{json,png} and copies the
plots to readme_figs/:

    .venv/bin/python scripts/bench_learning_efficiency.py                  # ethanol, xTB, full: ~2 h on 2 cores
    .venv/bin/python scripts/bench_learning_efficiency.py --molecule H2O  # water, full: ~1 h
    .venv/bin/python scripts/bench_learning_efficiency.py --quick         # ethanol, reduced: ~25 min
    .venv/bin/python scripts/bench_learning_efficiency.py --set c_x=0.2 --variant cx0.2 --quick

Full configuration: 300 test frames, baselines N = 25...500 with 2 seeds and 37,500 structure-epochs per member
(at least 20 epochs), the run limited to 2000 MD steps per trajectory and 100 training structures per member.
After the run, each member's final dataset is also trained from scratch with the baseline's budget (the
"retrained" point) to separate the value of the selected structures from that of the warm-started training.

Stages: (1) the FHI_AL run starts in its own process in a work folder (settings from settings/quick_example,
adapted: MISC.keep_checkpoints true so that every training session leaves a checkpoint, analysis on);
(2) meanwhile the test set (reference Langevin MD at T and T + 200 K, frames far apart; cached as extxyz under
scripts/results/) and a separate reference MD pool at T (cached) are generated and the baseline ensembles are
trained on N random pool frames each (same hypers, same trainer, converged); (3) after the run, its saved
checkpoints are evaluated on the test set and placed on the label axis by the reference ledger (labels whose
data existed when that training session ended). Reruns reuse the caches and the finished run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
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
import torch  # noqa: E402
import yaml  # noqa: E402
from ase.build import molecule as ase_molecule  # noqa: E402
from ase.io import read, write  # noqa: E402

from fhi_al.ensemble import Ensemble  # noqa: E402
from fhi_al.md import initialize_velocities, make_langevin  # noqa: E402
from fhi_al.references import compute_label, make_reference  # noqa: E402
from fhi_al.settings import load_run_settings  # noqa: E402
from fhi_al.training.config import TrainingConfig  # noqa: E402
from fhi_al.training.engine import HISTORY_SUFFIX, Trainer, member_tag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
FIGS = REPO / "readme_figs"
EXAMPLE = REPO / "settings" / "quick_example"
VENV_BIN = REPO / ".venv" / "bin"
NAME = "learning_efficiency"
WORK_ROOT = Path("/tmp") / "fhi_al_bench_learning_efficiency"

TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
HOT_OFFSET_K = 200.0  # the second test temperature is T + this
TEST_STRIDE = 40  # MD steps between test frames
POOL_STRIDE = 20  # MD steps between frames of the baseline's reference-MD pool
EQUILIBRATION_STEPS = 200
DECORRELATION_STEPS = 4000  # continuous reference MD for the force autocorrelation
ACF_MAX_LAG = 400
ACF_THRESHOLD = 0.1
STABILITY_PS = 20.0  # MLFF MD at T + HOT_OFFSET_K with the final ensemble
STABILITY_CHECK_STEPS = 20
TEST_SEED, POOL_SEED, STABILITY_SEED = 1001, 2002, 3003
VALID_FRACTION = 0.1  # baseline train/valid split (90/10)
ENSEMBLE_SIZE = 2
CONVERGENCE_MARGIN = 0.002  # relative validation improvement that resets the patience of a from-scratch training
POLL_S = 5.0
EVAL_CHUNK = 50  # test frames per batched ensemble prediction
MAX_CHECKPOINT_POINTS = 30  # fhi_al checkpoints evaluated (log-spaced in labels, always the last)
REFERENCE_OPTIONS = {"xtb": {"method": "GFN2-xTB"}, "pyscf": {}}

# Full and quick configurations: baseline training budget and the active-learning run's length.
# The full baseline budget was 6000 structure-epochs per member until scripts/bench_data_quality.py showed that it
# stopped every N >= 100 baseline far from convergence (125 random frames: 38 meV/Å after 48 epochs, 20.8 after
# 300); 37,500 is the budget of that control (300 epochs at 125 frames, 75 at 500).
TABLE_STRUCTURE_EPOCHS = 6000  # the budget of the README's learning-efficiency table (its caches have no suffix)
FULL = dict(test_frames=300, baseline_sizes=[25, 50, 100, 200, 500], seeds=2, epochs=300, patience=20,
            structure_epochs=37500, min_epochs=20,
            al={"max_MD_steps": 2000, "max_set_size": 100, "max_final_epochs": 100, "patience": 20})
QUICK = dict(test_frames=150, baseline_sizes=[25, 50, 100, 200], seeds=1, epochs=60, patience=10,
             structure_epochs=1200, min_epochs=40,
             al={"max_MD_steps": 600, "max_set_size": 200, "max_final_epochs": 40, "patience": 10})


# ------------------------------------------------------------------------------------------ reference MD
def reference_md_frames(reference: str, atoms0, *, temperature_K: float, n_frames: int, stride: int,
                        seed: int) -> list:
    """Labelled frames of a Langevin MD with the reference, `stride` steps apart after equilibration."""
    calc = make_reference(name=reference, options=REFERENCE_OPTIONS[reference])
    atoms = atoms0.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    initialize_velocities(atoms, temperature_K, rng)
    dyn = make_langevin(atoms, temperature_K=temperature_K, timestep_fs=TIMESTEP_FS,
                        friction_per_fs=FRICTION_PER_FS, rng=rng)
    dyn.run(EQUILIBRATION_STEPS)
    frames = []
    for index in range(n_frames):
        dyn.run(stride)
        energy, forces = compute_label(calc, atoms)
        frame = atoms.copy()
        frame.calc = None
        frame.set_momenta(None)
        frame.info.update({"REF_energy": float(energy), "config_type": "Default",
                           "temperature_K": float(temperature_K), "md_step": EQUILIBRATION_STEPS + (index + 1) * stride})
        frame.arrays["REF_forces"] = np.array(forces)
        frames.append(frame)
    return frames


def cached_frames(path: Path, make) -> list:
    if path.is_file():
        frames = read(path, ":")
        print(f"reusing {path.name} ({len(frames)} frames)", flush=True)
        return frames
    started = time.perf_counter()
    frames = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.xyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    print(f"wrote {path.name} ({len(frames)} frames, {time.perf_counter() - started:.0f} s)", flush=True)
    return frames


def test_set(args, atoms0) -> list:
    half = args.test_frames // 2
    path = RESULTS / f"{NAME}_testset_{args.molecule}_{args.reference}_{args.temperature_K:g}K_{2 * half}.xyz"

    def make():
        frames = []
        for k, temperature in enumerate((args.temperature_K, args.temperature_K + HOT_OFFSET_K)):
            frames += reference_md_frames(args.reference, atoms0, temperature_K=temperature, n_frames=half,
                                          stride=TEST_STRIDE, seed=TEST_SEED + k)
        return frames

    return cached_frames(path, make)


def force_decorrelation(args, atoms0) -> dict:
    """How many MD steps apart reference-MD frames must be to be independent: the normalised autocorrelation
    of the atomic force components along DECORRELATION_STEPS of continuous reference MD at T (cached). The
    decorrelation stride is the smallest lag from which |C(lag)| stays below ACF_THRESHOLD."""
    path = RESULTS / f"{NAME}_decorrelation_{args.molecule}_{args.reference}_{args.temperature_K:g}K.json"
    if path.is_file():
        return json.loads(path.read_text())
    calc = make_reference(name=args.reference, options=REFERENCE_OPTIONS[args.reference])
    atoms = atoms0.copy()
    atoms.calc = calc
    rng = np.random.default_rng(POOL_SEED + 1)
    initialize_velocities(atoms, args.temperature_K, rng)
    dyn = make_langevin(atoms, temperature_K=args.temperature_K, timestep_fs=TIMESTEP_FS,
                        friction_per_fs=FRICTION_PER_FS, rng=rng)
    dyn.run(EQUILIBRATION_STEPS)
    forces = []
    dyn.attach(lambda: forces.append(atoms.calc.results["forces"].copy()), interval=1)
    dyn.run(DECORRELATION_STEPS)
    acf = autocorrelation(np.array(forces), max_lag=ACF_MAX_LAG)
    below = np.abs(acf) < ACF_THRESHOLD
    stride = next(lag for lag in range(len(acf)) if below[lag:].all()) if below[-1] else ACF_MAX_LAG
    result = {"acf": acf.tolist(), "timestep_fs": TIMESTEP_FS, "threshold": ACF_THRESHOLD,
              "md_steps": DECORRELATION_STEPS, "decorrelation_steps": int(stride)}
    path.write_text(json.dumps(result))
    print(f"force autocorrelation below {ACF_THRESHOLD} from {stride} MD steps on", flush=True)
    return result


def autocorrelation(series: np.ndarray, *, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation C(lag), lag = 0..max_lag, of a [T, ...] series averaged over its components."""
    x = series.reshape(len(series), -1)
    x = x - x.mean(axis=0)
    n = len(x)
    spectrum = np.fft.rfft(x, n=2 * n, axis=0)
    raw = np.fft.irfft(spectrum * np.conj(spectrum), axis=0)[: max_lag + 1].sum(axis=1)
    raw /= (n - np.arange(max_lag + 1))  # unbiased: fewer pairs at larger lags
    return raw / raw[0]


def baseline_stride(decorrelation: dict) -> int:
    """MD steps the baseline pays per frame: the pool's stride, or less where the forces decorrelate sooner
    (frames further apart than needed would charge the baseline for steps it need not run)."""
    return min(decorrelation["decorrelation_steps"], POOL_STRIDE)


def pool_set(args, atoms0) -> list:
    n = max(args.baseline_sizes + [args.pool_frames or 0])
    path = RESULTS / f"{NAME}_pool_{args.molecule}_{args.reference}_{args.temperature_K:g}K_{n}.xyz"
    return cached_frames(path, lambda: reference_md_frames(args.reference, atoms0, temperature_K=args.temperature_K,
                                                             n_frames=n, stride=POOL_STRIDE, seed=POOL_SEED))


# ------------------------------------------------------------------------------------------ the fhi_al run
def prepare_run(args, atoms0, run_dir: Path) -> None:
    """Work folder with geometry.in and the quick example's settings adapted to this benchmark."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write(run_dir / "geometry.in", atoms0, format="aims")
    mace_settings = yaml.safe_load((EXAMPLE / "mace_settings.yaml").read_text())
    al_settings = yaml.safe_load((EXAMPLE / "active_learning_settings.yaml").read_text())
    mace_settings["GENERAL"]["name_exp"] = args.molecule.lower()
    if args.run_seed is not None:  # another draw of the whole run: member seeds and MD noise
        mace_settings["GENERAL"]["seed"] = args.run_seed
        al_settings["MD"]["seed"] = args.run_seed
    mace_settings.setdefault("MISC", {})["keep_checkpoints"] = True
    al = al_settings["ACTIVE_LEARNING"]
    al.update(args.config["al"])
    al["analysis"] = True
    al["ensemble_size"] = ENSEMBLE_SIZE
    for item in args.set:
        key, value = item.split("=", 1)
        al[key] = yaml.safe_load(value)
    al_settings["MD"]["temperature"] = args.temperature_K
    if args.md_temperatures_K:  # one MD entry per trajectory, identical but for its temperature
        if len(args.md_temperatures_K) != al["num_trajectories"]:
            raise SystemExit(f"--md-temperatures gives {len(args.md_temperatures_K)} temperatures for "
                             f"{al['num_trajectories']} trajectories")
        al_settings["MD"] = {index: {**al_settings["MD"], "temperature": temperature}
                             for index, temperature in enumerate(args.md_temperatures_K)}
    al_settings["REFERENCE"] = {"calculator": args.reference, args.reference: REFERENCE_OPTIONS[args.reference]}
    if not (run_dir / "atomic_energies.yaml").is_file():
        (run_dir / "active_learning_settings.yaml").write_text(yaml.safe_dump(al_settings, sort_keys=False))
        (run_dir / "mace_settings.yaml").write_text(yaml.safe_dump(mace_settings, sort_keys=False))
        subprocess.run([str(VENV_BIN / "FHI_AL-atomic-energies"), "--run-dir", str(run_dir)], check=True,
                       env=child_env(), stdout=subprocess.DEVNULL)
    energies = yaml.safe_load((run_dir / "atomic_energies.yaml").read_text())["atomic_energies"]
    mace_settings["ARCHITECTURE"]["atomic_energies"] = energies
    (run_dir / "mace_settings.yaml").write_text(yaml.safe_dump(mace_settings, sort_keys=False))
    (run_dir / "active_learning_settings.yaml").write_text(yaml.safe_dump(al_settings, sort_keys=False))


def md_temperatures_K(run_dir: Path) -> list[float]:
    """The run's MD temperature of each trajectory, from the settings it ran with."""
    settings = load_run_settings(run_dir)
    count = settings.al.active_learning.num_trajectories
    return [settings.al.md_settings_for(index).temperature for index in range(count)]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


class RunningElsewhere:
    """A FHI_AL process of an earlier invocation still holding the run folder: wait for its PID."""

    def __init__(self, pid: int):
        self.pid = pid

    def wait(self) -> str:
        while Path(f"/proc/{self.pid}").exists():
            time.sleep(POLL_S)
        return "finished in an earlier invocation"


def start_run(run_dir: Path):
    lock = run_dir / ".fhi_al.lock"
    if lock.is_file():
        pid = int(json.loads(lock.read_text())["pid"])
        if Path(f"/proc/{pid}").exists():
            return RunningElsewhere(pid)
    out = open(run_dir / "fhi_al_stdout.txt", "ab")
    return subprocess.Popen([str(VENV_BIN / "FHI_AL"), "--run-dir", str(run_dir)], cwd=run_dir, env=child_env(),
                            stdout=out, stderr=subprocess.STDOUT)


# ------------------------------------------------------------------------------------------ evaluation
def predictions(ensemble: Ensemble, frames: list):
    """(frame, ensemble results) of every frame, predicted EVAL_CHUNK frames at a time."""
    for start in range(0, len(frames), EVAL_CHUNK):
        chunk = frames[start:start + EVAL_CHUNK]
        yield from zip(chunk, ensemble.predict(chunk))


def ensemble_errors(ensemble: Ensemble, frames: list) -> dict:
    """Test-set MAE of the ensemble mean: forces per component (eV/Å; also per test-MD temperature), energy per
    atom (eV/atom)."""
    force_err, energy_err, spread, true_max, temperature_K = [], [], [], [], []
    for atoms, res in predictions(ensemble, frames):
        delta = res["forces"] - atoms.arrays["REF_forces"]
        force_err.append(np.abs(delta).ravel())
        temperature_K.append(atoms.info.get("temperature_K"))
        energy_err.append(abs(res["energy"] - atoms.info["REF_energy"]) / len(atoms))
        spread.append(res["forces_uncertainty_max"])
        true_max.append(float(np.linalg.norm(delta, axis=1).max()))
    by_temperature = {f"{t:g}": float(np.concatenate([e for e, t_e in zip(force_err, temperature_K) if t_e == t])
                                      .mean()) for t in sorted({t for t in temperature_K if t is not None})}
    return {"forces_mae": float(np.concatenate(force_err).mean()), "energy_mae_per_atom": float(np.mean(energy_err)),
            "forces_mae_by_test_temperature_K": by_temperature,
            "test_spearman_uncertainty_vs_max_error": spearman(spread, true_max)}


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return None
    return float(spearmanr(x, y).statistic)


def run_config(run_dir: Path, *, keep_checkpoints: bool) -> TrainingConfig:
    settings = load_run_settings(run_dir)
    config = TrainingConfig.from_settings(settings, valid_skip=settings.al.active_learning.valid_skip)
    return dataclasses.replace(config, keep_checkpoints=keep_checkpoints, training_plots=False)


def baseline(args, run_dir: Path, pool: list, test: list) -> list[dict]:
    """Ensembles of ENSEMBLE_SIZE members converged on N random pool frames (90/10), evaluated on the test set."""
    config = run_config(run_dir, keep_checkpoints=False)
    cache = baseline_cache(args)
    done = {(r["n_labels"], r["seed"]): r for r in read_baseline_cache(args)}
    rows = []
    for seed in range(args.seeds):
        for n in args.baseline_sizes:
            if (n, seed) in done:
                rows.append(done[(n, seed)])
                continue
            started = time.perf_counter()
            work = WORK_ROOT / f"baseline_{args.tag}" / f"n{n}_s{seed}"
            shutil.rmtree(work, ignore_errors=True)
            members = baseline_members(args, Trainer(config, work), pool, n, seed)
            max_epochs = baseline_epochs(args, n)
            errors = ensemble_errors(Ensemble.from_members(members), test)
            rows.append({"n_labels": n, "seed": seed, "max_epochs": max_epochs,
                         "epochs": [m.epoch for m in members], "seconds": time.perf_counter() - started, **errors})
            print(f"baseline N={n} seed={seed}: forces {1e3 * errors['forces_mae']:.1f} meV/Å, energy "
                  f"{1e3 * errors['energy_mae_per_atom']:.2f} meV/atom ({rows[-1]['seconds']:.0f} s)", flush=True)
            shutil.rmtree(work, ignore_errors=True)
            done[(n, seed)] = rows[-1]
            cache.parent.mkdir(parents=True, exist_ok=True)
            merged = {(r["n_labels"], r["seed"]): r for r in read_baseline_cache(args)}
            merged.update(done)  # other invocations may fill other sizes of the same cache
            cache.write_text(json.dumps(list(merged.values()), indent=1))
    return rows


def baseline_split(pool: list, n_labels: int, seed: int) -> tuple[list, list]:
    """(train, valid): the first n_labels frames of the seed's permutation of the pool, split 90/10."""
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[:n_labels]]
    n_valid = max(1, round(VALID_FRACTION * n_labels))
    return chosen[n_valid:], chosen[:n_valid]


def baseline_member_seeds(seed: int, count: int = ENSEMBLE_SIZE) -> list[int]:
    return [1000 * seed + 17 * k + 1 for k in range(count)]


def baseline_members(args, trainer: Trainer, pool: list, n_labels: int, seed: int) -> list:
    """The baseline ensemble of N = n_labels random pool frames: ENSEMBLE_SIZE members converged with the
    baseline's budget (baseline_epochs)."""
    train, valid = baseline_split(pool, n_labels, seed)
    members = []
    for member_seed in baseline_member_seeds(seed):
        member = trainer.create_member(member_tag("baseline", member_seed), member_seed, train, valid)
        trainer.converge(member, baseline_epochs(args, n_labels), args.config["patience"],
                         CONVERGENCE_MARGIN)
        members.append(member)
    return members


def baseline_epochs(args, n_labels: int, *, structure_epochs: int | None = None) -> int:
    """Most epochs of a member trained from scratch on n_labels structures (the baseline's budget, or the one of
    `structure_epochs` structure-epochs per member)."""
    budget = args.config["structure_epochs"] if structure_epochs is None else structure_epochs
    return min(args.epochs, max(args.config["min_epochs"], math.ceil(budget / n_labels)))


def retrained_on_run_data(args, run_dir: Path, test: list) -> dict:
    """Each member's final training/validation set of the run, trained afresh (new seed, the baseline's budget
    for its size): separates what the selected data are worth from what warm-started training made of them."""
    config = run_config(run_dir, keep_checkpoints=False)
    work = WORK_ROOT / f"retrained_{args.tag}"
    shutil.rmtree(work, ignore_errors=True)
    trainer = Trainer(config, work)
    members, sizes = [], []
    started = time.perf_counter()
    for seed, train, valid in run_member_sets(run_dir):
        member = trainer.create_member(member_tag("retrained", seed), seed, train, valid)
        trainer.converge(member, baseline_epochs(args, len(train) + len(valid)), args.config["patience"],
                         CONVERGENCE_MARGIN)
        members.append(member)
        sizes.append({"train": len(train), "valid": len(valid), "epochs": member.epoch})
    errors = ensemble_errors(Ensemble.from_members(members), test)
    labels = len(label_times(run_dir))
    shutil.rmtree(work, ignore_errors=True)
    print(f"run data retrained from scratch ({labels} labels, member sets {sizes}): forces "
          f"{1e3 * errors['forces_mae']:.1f} meV/Å ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"n_labels": labels, "member_sets": sizes, **errors}


def run_member_sets(run_dir: Path) -> list[tuple[int, list, list]]:
    """(seed, train, valid) per member of the run: its final datasets and a new seed (the member's + 7919)."""
    from fhi_al.data.store import DatasetStore
    from fhi_al.procedures.common import TRAIN, VALID, dataset_name, member_specs

    config = run_config(run_dir, keep_checkpoints=False)
    settings = load_run_settings(run_dir)
    store = DatasetStore(run_dir / settings.al.active_learning.dataset_dir)
    return [(spec.seed + 7919, store.read(dataset_name("final", TRAIN, spec.tag)),
             store.read(dataset_name("final", VALID, spec.tag)))
            for spec in member_specs(name_exp=config.name_exp, seed=config.seed,
                                     ensemble_size=settings.al.active_learning.ensemble_size)]


def baseline_cache(args) -> Path:
    budget = args.config["structure_epochs"]
    suffix = "" if budget == TABLE_STRUCTURE_EPOCHS else f"_se{budget}"
    return args.out_dir / f"{NAME}_baseline_{args.base_tag}_min{args.config['min_epochs']}ep{suffix}.json"


def read_baseline_cache(args) -> list[dict]:
    """The baseline rows cached so far for this molecule/reference/T and budget ([] before the first)."""
    cache = baseline_cache(args)
    return json.loads(cache.read_text()) if cache.is_file() else []


def wait_for_baseline(args) -> list[dict]:
    """The baseline rows another invocation (same molecule/reference/T) writes to its cache, once complete."""
    wanted = {(n, seed) for n in args.baseline_sizes for seed in range(args.seeds)}
    while True:
        rows = read_baseline_cache(args)
        if wanted <= {(r["n_labels"], r["seed"]) for r in rows}:
            return [r for r in rows if (r["n_labels"], r["seed"]) in wanted]
        time.sleep(POLL_S)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_times(run_dir: Path) -> list[float]:
    """When each reference label of the run was stored (the ledger's completed labels), sorted."""
    from fhi_al.references.ledger import is_stored_label

    return sorted(r["time"] for r in read_jsonl(run_dir / "logs" / "reference_ledger.jsonl") if is_stored_label(r))


def paid_call_times(run_dir: Path) -> list[float]:
    """When each reference calculation the user pays for ran (MD steps, Hessian, labels, failures; analysis-mode
    calls excluded), sorted; one entry per call. A label recorded with 0 calls is free only when an ab initio
    MD step paid for it; in a run without ab initio MD it was read from an analysis call at the same frame
    (fhi_al before the decision-then-analysis order), and a run without analysis mode would have paid it."""
    from fhi_al.references.ledger import AIMD_STEP, ANALYSIS, LABEL

    entries = read_jsonl(run_dir / "logs" / "reference_ledger.jsonl")
    aimd = any(r.get("purpose") == AIMD_STEP for r in entries)
    times = []
    for r in entries:
        purpose, calls = r.get("purpose", LABEL), int(r.get("calls", 1))
        if purpose == LABEL and calls == 0 and not aimd and r.get("ok", True):
            calls = 1
        if purpose != ANALYSIS:
            times += [r["time"]] * calls
    return sorted(times)


def checkpoint_points(run_dir: Path, config: TrainingConfig) -> list[dict]:
    """One point per training session of the run: the members' checkpoints of that session (paired by order),
    the session's end time (from the history) and the reference labels stored before it."""
    trainer = Trainer(config, run_dir)
    settings = load_run_settings(run_dir)
    from fhi_al.procedures.common import member_specs

    specs = member_specs(name_exp=config.name_exp, seed=config.seed,
                         ensemble_size=settings.al.active_learning.ensemble_size)
    per_member = []
    for spec in specs:
        history = read_jsonl(run_dir / config.results_dir / f"{spec.tag}{HISTORY_SUFFIX}")
        by_epoch = {record["epoch"]: record for record in history}
        paths = trainer.checkpoints.io.paths(spec.tag)
        entries = []
        for path in paths:
            epoch = int(path.stem.rsplit("-", 1)[1])
            record = by_epoch.get(epoch, history[-1] if history else {})
            entries.append({"path": path, "epoch": epoch, "time": record.get("time", path.stat().st_mtime),
                            "n_data": record.get("n_train", 0) + record.get("n_valid", 0)})
        per_member.append(entries)
    ledger, paid = label_times(run_dir), paid_call_times(run_dir)
    count = min(len(entries) for entries in per_member)
    if len({len(entries) for entries in per_member}) != 1:
        print(f"warning: members have {[len(e) for e in per_member]} checkpoints; pairing the first {count}",
              flush=True)
    points = []
    for i in range(count):
        group = [entries[i] for entries in per_member]
        end = max(e["time"] for e in group)
        points.append({"paths": [e["path"] for e in group], "epochs": [e["epoch"] for e in group],
                       "tags": [s.tag for s in specs], "time": end,
                       "labels": int(np.searchsorted(ledger, end, side="right")),
                       "reference_calls": int(np.searchsorted(paid, end, side="right")),
                       "member_data": [e["n_data"] for e in group]})
    return points, trainer


def select_points(points: list[dict]) -> list[dict]:
    """At most MAX_CHECKPOINT_POINTS points: the last one per label count, thinned log-uniformly in labels."""
    last_per_label = {}
    for point in points:
        last_per_label[point["labels"]] = point
    chosen = sorted(last_per_label.values(), key=lambda p: p["time"])
    if len(chosen) <= MAX_CHECKPOINT_POINTS:
        return chosen
    labels = np.array([max(p["labels"], 1) for p in chosen], dtype=float)
    targets = np.geomspace(labels[0], labels[-1], MAX_CHECKPOINT_POINTS)
    keep = sorted({int(np.argmin(np.abs(np.log(labels) - np.log(t)))) for t in targets} | {len(chosen) - 1})
    return [chosen[i] for i in keep]


def fhi_al_curve(run_dir: Path, test: list) -> list[dict]:
    config = run_config(run_dir, keep_checkpoints=True)
    points, trainer = checkpoint_points(run_dir, config)
    rows, members = [], []
    for point in select_points(points):
        members = [trainer.load_member(tag, path=path) for tag, path in zip(point["tags"], point["paths"])]
        errors = ensemble_errors(Ensemble.from_members(members), test)
        rows.append({"n_labels": point["labels"], "reference_calls": point["reference_calls"],
                     "epochs": point["epochs"], "member_data": point["member_data"],
                     "checkpoints": [p.name for p in point["paths"]], **errors})
        print(f"fhi_al labels={point['labels']} calls={point['reference_calls']} epochs={point['epochs']}: forces "
              f"{1e3 * errors['forces_mae']:.1f} meV/Å", flush=True)
    return rows, members


# ------------------------------------------------------------------------------------------ report
def baseline_means(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.array(sorted({r["n_labels"] for r in rows}))
    values = [[r[key] for r in rows if r["n_labels"] == n] for n in sizes]
    return sizes, np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])


def equivalent_baseline_labels(sizes, maes, mae: float) -> tuple[float, bool]:
    """Labels the baseline needs for `mae`, by log-log interpolation (extrapolated beyond its range)."""
    x, y = np.log(sizes), np.log(maes)
    if mae >= maes[0] or mae <= maes[-1]:
        slope, intercept = np.polyfit(x[-3:] if mae <= maes[-1] else x[:3], y[-3:] if mae <= maes[-1] else y[:3], 1)
        return float(np.exp((math.log(mae) - intercept) / slope)), True
    order = np.argsort(y)
    return float(np.exp(np.interp(math.log(mae), y[order], x[order]))), False


def efficiency(base: list[dict], curve: list[dict], key: str) -> dict:
    sizes, means, _ = baseline_means(base, key)
    target = float(means[-1])
    reached = next((row["n_labels"] for row in curve if row[key] <= target), None)
    final = curve[-1]
    best = min(curve, key=lambda row: row[key])
    equivalent, extrapolated = equivalent_baseline_labels(sizes, means, final[key])
    return {"baseline_largest_n": int(sizes[-1]), "baseline_largest_n_mae": target,
            "fhi_al_labels_to_reach_it": reached,
            "ratio": (float(sizes[-1]) / reached) if reached else None,
            "fhi_al_final_labels": final["n_labels"], "fhi_al_final_mae": final[key],
            "fhi_al_best_mae": best[key], "fhi_al_best_at_labels": best["n_labels"],
            "baseline_labels_for_fhi_al_final_mae": equivalent, "equivalent_extrapolated": extrapolated,
            "equivalent_ratio": equivalent / max(final["n_labels"], 1)}


def efficiency_calls(base: list[dict], curve: list[dict], stride: int) -> dict:
    """Reference calls (what users pay) for the largest baseline's force error: the baseline pays N x stride
    MD steps of reference MD, fhi_al every paid call in its ledger up to the checkpoint."""
    sizes, means, _ = baseline_means(base, "forces_mae")
    target, baseline_calls = float(means[-1]), int(sizes[-1]) * stride
    reached = next((row["reference_calls"] for row in curve if row["forces_mae"] <= target), None)
    final = curve[-1]
    equivalent, extrapolated = equivalent_baseline_labels(sizes, means, final["forces_mae"])
    return {"baseline_stride_steps": stride, "baseline_largest_n": int(sizes[-1]),
            "baseline_largest_n_calls": baseline_calls, "baseline_largest_n_mae": target,
            "fhi_al_calls_to_reach_it": reached, "ratio": (baseline_calls / reached) if reached else None,
            "fhi_al_final_calls": final["reference_calls"], "fhi_al_final_mae": final["forces_mae"],
            "baseline_calls_for_fhi_al_final_mae": equivalent * stride, "equivalent_extrapolated": extrapolated,
            "equivalent_ratio": equivalent * stride / max(final["reference_calls"], 1)}


def data_distribution(run_dir: Path, pool: list, test: list) -> dict:
    """Where the run's labels lie compared with the baseline's pool and the test set: energy per atom above the
    pool's lowest (meV/atom) and largest atomic force (eV/Å), as percentiles, per source."""
    from fhi_al.data.store import DatasetStore

    settings = load_run_settings(run_dir)
    store = DatasetStore(run_dir / settings.al.active_learning.dataset_dir)
    sources = {"initial": [a for name in store.names() if name.startswith("initial/") for a in store.read(name)],
               "al": [a for name in store.names() if name.startswith("al/") for a in store.read(name)],
               "pool (random MD, T)": pool, "test (T)": test[: len(test) // 2], "test (T+200 K)": test[len(test) // 2:]}
    e_min = min(a.info["REF_energy"] / len(a) for a in pool)
    result = {}
    for name, frames in sources.items():
        if not frames:
            continue
        energy = np.array([1e3 * (a.info["REF_energy"] / len(a) - e_min) for a in frames])
        fmax = np.array([np.linalg.norm(a.arrays["REF_forces"], axis=1).max() for a in frames])
        result[name] = {"n": len(frames), "energy_meV_per_atom_p10_50_90": np.percentile(energy, [10, 50, 90]).tolist(),
                        "max_force_eV_per_A_p10_50_90": np.percentile(fmax, [10, 50, 90]).tolist()}
    return result


def stability(members: list, atoms0, *, temperature_K: float, ps: float) -> dict:
    """MLFF Langevin MD with the ensemble mean at temperature_K for `ps` picoseconds: the time of the first
    unphysical frame (fhi_al's blow-up detector, or a change of the covalent bonding pattern), if any."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    from fhi_al.ensemble import EnsembleCalculator
    from fhi_al.md import BlowUpDetector

    def bonds(atoms):
        i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.25))
        return {(a, b) for a, b in zip(i, j) if a < b}

    atoms = atoms0.copy()
    atoms.calc = EnsembleCalculator(Ensemble.from_members(members))
    rng = np.random.default_rng(STABILITY_SEED)
    initialize_velocities(atoms, temperature_K, rng)
    dyn = make_langevin(atoms, temperature_K=temperature_K, timestep_fs=TIMESTEP_FS,
                        friction_per_fs=FRICTION_PER_FS, rng=rng)
    detector, topology = BlowUpDetector(target_temperature_K=temperature_K), bonds(atoms0)
    steps = int(round(1000 * ps / TIMESTEP_FS))
    started = time.perf_counter()
    for _ in range(steps // STABILITY_CHECK_STEPS):
        dyn.run(STABILITY_CHECK_STEPS)
        reason = detector.check(atoms) or ("bonding pattern changed" if bonds(atoms) != topology else None)
        if reason:
            break
    survived_ps = dyn.nsteps * TIMESTEP_FS / 1000
    result = {"temperature_K": temperature_K, "target_ps": ps, "survived_ps": survived_ps, "failure": reason,
              "seconds": time.perf_counter() - started}
    print(f"stability at {temperature_K:g} K: {survived_ps:.2f} of {ps:g} ps ({reason or 'no failure'})", flush=True)
    return result


def calibration(run_dir: Path, tag: str) -> dict:
    records = read_jsonl(run_dir / "analysis" / "analysis.jsonl")
    unc = [r["uncertainty"] for r in records]
    result = {"n_points": len(records),
              "spearman_max_error": spearman(unc, [r["true_error_max"] for r in records]),
              "spearman_mean_error": spearman(unc, [r["true_error_mean"] for r in records])}
    png = run_dir / "analysis" / "calibration.png"
    if png.is_file():
        FIGS.mkdir(exist_ok=True)
        shutil.copy(png, FIGS / f"{NAME}_calibration_{tag}.png")
        shutil.copy(png, RESULTS / f"{NAME}_calibration_{tag}.png")
    return result


def plot(base: list[dict], curve: list[dict], path: Path, retrained: dict | None, title: str, *, stride: int,
         decorrelation: dict) -> None:
    """Test-set force error against reference calls (what users pay) and against labels, and the force
    autocorrelation that sets the baseline's stride."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    sizes, means, stds = baseline_means(base, "forces_mae")
    for axis, x_key, scale_x, xlabel in ((axes[0], "reference_calls", stride, "reference calls (what users pay)"),
                                         (axes[1], "n_labels", 1, "reference labels")):
        axis.errorbar(sizes * scale_x, 1e3 * means, yerr=1e3 * stds, fmt="o-", capsize=3,
                      label="random reference-MD frames" + (f" ({stride} MD steps each)" if scale_x > 1 else ""))
        axis.plot([max(r[x_key], 1) for r in curve], [1e3 * r["forces_mae"] for r in curve], "s-", ms=3,
                  label="fhi_al active learning (checkpoints)")
        if retrained and x_key == "n_labels":
            axis.plot([retrained["n_labels"]], [1e3 * retrained["forces_mae"]], "*", ms=12, color="tab:green",
                      label="fhi_al's final data, members retrained from scratch")
        axis.axhline(1e3 * means[-1], color="grey", ls=":", lw=1, label=f"baseline N={sizes[-1]}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("test-set force MAE (meV/Å)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    acf = np.array(decorrelation["acf"])
    lags_fs = np.arange(len(acf)) * decorrelation["timestep_fs"]
    axes[2].plot(lags_fs, acf, lw=1)
    axes[2].axhspan(-decorrelation["threshold"], decorrelation["threshold"], color="grey", alpha=0.2)
    axes[2].axvline(decorrelation["decorrelation_steps"] * decorrelation["timestep_fs"], color="tab:red", ls="--",
                    lw=1, label=f"decorrelated after {decorrelation['decorrelation_steps']} steps")
    axes[2].set_xlabel("lag (fs)")
    axes[2].set_ylabel("force autocorrelation (reference MD)")
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def publish(out_dir: Path, stem: str, report: dict, draw) -> None:
    """A benchmark's results: out_dir/stem.json, out_dir/stem.png drawn by `draw(path)`, and the png copied to
    readme_figs/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    png = out_dir / f"{stem}.png"
    draw(png)
    FIGS.mkdir(exist_ok=True)
    shutil.copy(png, FIGS / png.name)


def add_stability(args, atoms0, run_dir: Path) -> int:
    """The stability MD of a finished, reported run's final ensemble (its last checkpoints), written into the
    report's stability_fhi_al."""
    path = args.out_dir / f"{NAME}_{args.tag}.json"
    if not path.is_file():
        sys.stderr.write(f"error: no report {path}; run the benchmark first\n")
        return 2
    points, trainer = checkpoint_points(run_dir, run_config(run_dir, keep_checkpoints=True))
    members = [trainer.load_member(tag, path=p) for tag, p in zip(points[-1]["tags"], points[-1]["paths"])]
    report = json.loads(path.read_text())
    report["stability_fhi_al"] = stability(members, atoms0, temperature_K=args.temperature_K + HOT_OFFSET_K,
                                           ps=args.stability_ps)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["stability_fhi_al"], indent=1), flush=True)
    return 0


def control_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a control script that works on a finished run of this benchmark: --molecule, --variant."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--molecule", default="CH3CH2OH")
    parser.add_argument("--variant", default="nms_shared", help="the bench_learning_efficiency run's variant")
    return parser


def control_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """A control script's arguments, with the benchmark's own (args.le), its tag and the run folder (--run-dir
    when the parser has it, else the benchmark's for molecule/variant)."""
    args = parser.parse_args(argv)
    args.le = parse_args(["--molecule", args.molecule, "--variant", args.variant])
    args.tag = args.le.tag
    args.run_dir = getattr(args, "run_dir", None) or WORK_ROOT / f"run_{args.tag}"
    return args


def control_inputs(args) -> tuple:
    """(atoms0, test frames, pool frames, training config of the run) of a control script, on one thread."""
    torch.set_num_threads(1)
    atoms0 = ase_molecule(args.molecule)
    return atoms0, test_set(args.le, atoms0), pool_set(args.le, atoms0), run_config(args.run_dir,
                                                                                   keep_checkpoints=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecule", default="CH3CH2OH", help="ase.build.molecule name")
    parser.add_argument("--reference", default="xtb", choices=sorted(REFERENCE_OPTIONS))
    parser.add_argument("--temperature-K", type=float, default=500.0)
    parser.add_argument("--test-frames", type=int)
    parser.add_argument("--baseline-sizes", type=int, nargs="+")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int, help="most epochs of a baseline member's convergence")
    parser.add_argument("--quick", action="store_true", help="reduced configuration (~25 min on one core)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an ACTIVE_LEARNING key of the run (repeatable)")
    parser.add_argument("--variant", default="", help="suffix of the output names (use with --set)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="wait for the baseline cache of another invocation with the same molecule/reference/T")
    parser.add_argument("--baseline-min-epochs", type=int,
                        help="every baseline member trains at least this many epochs (default: quick 40, full 30); "
                        "fewer undertrains the large-N baselines (quick runs with 8 did)")
    parser.add_argument("--pool-frames", type=int, help="frames of the baseline's reference-MD pool "
                        "(default: the largest baseline size)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="only fill the baseline cache (no FHI_AL run, no report)")
    parser.add_argument("--md-temperatures", dest="md_temperatures_K", type=float, nargs="+", metavar="K",
                        help="the run's MD temperature per trajectory (one per trajectory; default: --temperature-K "
                        "for all); the test set and the stability MD stay at T and T + 200 K")
    parser.add_argument("--stability-ps", type=float, default=STABILITY_PS,
                        help="ps of MLFF MD at T + 200 K with the final ensemble (0 = skip)")
    parser.add_argument("--stability-only", action="store_true",
                        help="only run the stability MD of a finished run's final ensemble (--stability-ps) and add "
                        "it to its report (for a run reported with --stability-ps 0)")
    parser.add_argument("--run-seed", type=int, help="GENERAL.seed and MD.seed of the run (default: the quick "
                        "example's 42); give a --variant too")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.config = dict(QUICK if args.quick else FULL)
    args.test_frames = args.test_frames or args.config["test_frames"]
    args.baseline_sizes = sorted(args.baseline_sizes or args.config["baseline_sizes"])
    args.seeds = args.seeds or args.config["seeds"]
    args.epochs = args.epochs or args.config["epochs"]
    if args.baseline_min_epochs:
        args.config["min_epochs"] = args.baseline_min_epochs
        args.epochs = max(args.epochs, args.baseline_min_epochs)
    base_tag = f"{args.molecule}_{args.reference}_{args.temperature_K:g}K" + ("_quick" if args.quick else "")
    args.base_tag = base_tag
    args.tag = base_tag + (f"_{args.variant}" if args.variant else "")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    atoms0 = ase_molecule(args.molecule)
    run_dir = WORK_ROOT / f"run_{args.tag}"
    prepare_run(args, atoms0, run_dir)
    if args.baseline_only:
        baseline(args, run_dir, pool_set(args, atoms0), test_set(args, atoms0))
        return 0
    if args.stability_only:
        return add_stability(args, atoms0, run_dir)
    process = start_run(run_dir)
    print(f"FHI_AL running in {run_dir} (pid {process.pid})", flush=True)
    test = test_set(args, atoms0)
    decorrelation = force_decorrelation(args, atoms0)
    stride = baseline_stride(decorrelation)
    if not args.skip_baseline:
        base = baseline(args, run_dir, pool_set(args, atoms0), test)
    status = process.wait()
    print(f"FHI_AL finished with status {status} after {time.perf_counter() - started:.0f} s", flush=True)
    curve, final_members = fhi_al_curve(run_dir, test)
    retrained = retrained_on_run_data(args, run_dir, test)
    stable = (stability(final_members, atoms0, temperature_K=args.temperature_K + HOT_OFFSET_K,
                        ps=args.stability_ps) if args.stability_ps > 0 else None)
    if args.skip_baseline:
        base = wait_for_baseline(args)
    report = {"molecule": args.molecule, "formula": atoms0.get_chemical_formula(), "reference": args.reference,
              "temperature_K": args.temperature_K, "md_temperatures_K_per_trajectory": md_temperatures_K(run_dir),
              "test_temperatures_K": [args.temperature_K, args.temperature_K + HOT_OFFSET_K],
              "quick": args.quick, "variant": args.variant, "al_overrides": args.set,
              "n_test_frames": len(test), "ensemble_size": ENSEMBLE_SIZE, "fhi_al_exit_status": status,
              "al_settings": yaml.safe_load((run_dir / "active_learning_settings.yaml").read_text()),
              "baseline_config": {k: args.config[k] for k in ("structure_epochs", "min_epochs", "patience")}
              | {"baseline_sizes": args.baseline_sizes}
              | {"max_epochs_cap": args.epochs, "seeds": args.seeds},
              "decorrelation": {k: decorrelation[k] for k in ("decorrelation_steps", "threshold", "md_steps")},
              "efficiency_calls": efficiency_calls(base, curve, stride),
              "stability_fhi_al": stable,
              "data_distribution": data_distribution(run_dir, pool_set(args, atoms0), test),
              "efficiency_forces": efficiency(base, curve, "forces_mae"),
              "efficiency_energy": efficiency(base, curve, "energy_mae_per_atom"),
              "calibration_analysis": calibration(run_dir, args.tag),
              "fhi_al_data_retrained": retrained,
              "baseline": base, "fhi_al": curve, "run_dir": str(run_dir),
              "wall_time_s": time.perf_counter() - started}
    publish(args.out_dir, f"{NAME}_{args.tag}", report, lambda png: plot(
        base, curve, png, retrained, f"{args.molecule} ({args.reference}), test MD at {args.temperature_K:g} and "
        f"{args.temperature_K + HOT_OFFSET_K:g} K, AL MD at "
        f"{'/'.join(f'{t:g}' for t in md_temperatures_K(run_dir))} K, "
        f"ensembles of {ENSEMBLE_SIZE}" + (f" [{args.variant}]" if args.variant else ""),
        stride=stride, decorrelation=decorrelation))
    print(json.dumps({k: report[k] for k in ("efficiency_calls", "efficiency_forces", "calibration_analysis",
                                             "stability_fhi_al")},
                     indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
