"""Controls of issue #15's two open targets on a finished run of bench_learning_efficiency: (1) data quality:
test force MAE against training epochs for ensembles trained from scratch on the run's final datasets and on
1x, 2x and 4x as many random reference-MD pool frames, trained until the benchmark's convergence stops
them (same trainer, hyperparameters and patience; a larger epoch cap); (2) baseline stability: baseline
ensembles trained exactly as bench_learning_efficiency.baseline (seed 0) run its 20 ps MLFF MD at T + 200 K.

    .venv/bin/python scripts/bench_data_quality.py                     # ethanol nms_shared: ~70 + 39 min
    .venv/bin/python scripts/bench_data_quality.py --molecule H2O --variant nms_shared_acc0

The ethanol times are on one core of 2 shared ones: data quality (125, 125, 250 and 500 frames, 2 members, 300
epochs, 150 at 250 frames and 75 at 500: equal structure-epochs) ~70 min; stability (baselines N = 100, 125,
500) ~39 min.

Writes scripts/results/data_quality_<tag>.{json,png} and copies the png to readme_figs/. Finished stages are
kept in WORK_ROOT/data_quality_<tag>_stages.json, so a rerun only does what is missing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_learning_efficiency as le  # noqa: E402  (sets the thread and plotting environment first)
import numpy as np  # noqa: E402

from fhi_al.durable import atomic_write_json  # noqa: E402
from fhi_al.ensemble import Ensemble  # noqa: E402
from fhi_al.training import stopping  # noqa: E402
from fhi_al.training.engine import Trainer, member_tag  # noqa: E402

NAME = "data_quality"
RUN_LABEL = "fhi_al final data"


class TracingTrainer(Trainer):
    """The benchmark's trainer, keeping a snapshot of every member each `every` epochs (at its validation),
    keyed by the epochs it trained since `starts[tag]` (0: a member created from scratch; a loaded member's
    epoch when it was loaded)."""

    def __init__(self, *args, every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.every, self.starts = every, {}
        self.snapshots: dict[str, dict[int, dict]] = {}

    def validate(self, member, **kwargs):
        metrics = super().validate(member, **kwargs)
        trained = member.epoch - self.starts.get(member.tag, 0)
        if trained % self.every == 0:
            self.snapshots.setdefault(member.tag, {})[trained] = stopping.snapshot(member)
        return metrics


def test_errors(members: list, test: list) -> dict:
    errors = le.ensemble_errors(Ensemble.from_members(members), test)
    return {key: errors[key] for key in ("forces_mae", "forces_mae_by_test_temperature_K", "energy_mae_per_atom")}


def traced_curve(trainer: TracingTrainer, members: list, test: list) -> list[dict]:
    """The ensemble's test errors at each traced epoch (a member that stopped earlier contributes its kept
    weights); the members keep their final weights afterwards."""
    kept = [stopping.snapshot(member) for member in members]
    curve = []
    for epoch in sorted(set().union(*(trainer.snapshots.get(m.tag, {}) for m in members))):
        for member, final in zip(members, kept):
            stopping.restore(member, trainer.snapshots[member.tag].get(epoch, final))
        curve.append({"epoch": epoch, **test_errors(members, test)})
    for member, final in zip(members, kept):
        stopping.restore(member, final)
    return curve


def traced_convergence(args, config, member_sets: list, test: list, work: Path) -> dict:
    """Members converged from scratch on `member_sets` [(seed, train, valid)]; the ensemble's test errors every
    `eval_every` epochs (a member that stopped earlier contributes its kept weights) and with the kept weights."""
    shutil.rmtree(work, ignore_errors=True)
    trainer = TracingTrainer(config, work, every=args.eval_every)
    n_labels = len(member_sets[0][1]) + len(member_sets[0][2])
    max_epochs = min(args.max_epochs, math.ceil(args.structure_epochs / n_labels))
    started, members = time.perf_counter(), []
    for seed, train, valid in member_sets:
        member = trainer.create_member(member_tag("dq", seed), seed, train, valid)
        trainer.converge(member, max_epochs, args.le.config["patience"], le.CONVERGENCE_MARGIN)
        members.append(member)
    curve = traced_curve(trainer, members, test)
    shutil.rmtree(work, ignore_errors=True)
    return {"n_labels": n_labels, "max_epochs": max_epochs, "seconds": time.perf_counter() - started,
            "members": [{"train": len(train), "valid": len(valid), "epochs_run": m.last_stop.epochs,
                         "best_epoch": m.last_stop.best_epoch, "stop": m.last_stop.reason.value}
                        for (_, train, valid), m in zip(member_sets, members)],
            "curve": curve, "kept_weights": test_errors(members, test)}


def baseline_stability(args, config, pool: list, test: list, atoms0, n_labels: int) -> dict:
    """A baseline ensemble exactly as bench_learning_efficiency.baseline trains it (seed 0), its test errors (to
    compare with the baseline cache) and its time to failure in the benchmark's stability MD."""
    work = le.WORK_ROOT / f"{NAME}_baseline_{args.tag}_n{n_labels}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    members = le.baseline_members(args.le, Trainer(config, work), pool, n_labels, seed=0)
    trained_s = time.perf_counter() - started
    cached = {(r["n_labels"], r["seed"]): r for r in le.read_baseline_cache(args.le)}
    stable = le.stability(members, atoms0, temperature_K=args.le.temperature_K + le.HOT_OFFSET_K, ps=args.stability_ps)
    shutil.rmtree(work, ignore_errors=True)
    return {"n_labels": n_labels, "epochs": [m.epoch for m in members], "training_seconds": trained_s,
            **test_errors(members, test),
            "baseline_cache_forces_mae": cached.get((n_labels, 0), {}).get("forces_mae"), **stable}


def stage(stages: dict, path: Path, key: str, compute) -> dict:
    """The cached result of `key`, or computed now and written to the stage file at once (merged with what
    another invocation wrote meanwhile, so that two processes can compute different stages)."""
    if key not in stages:
        stages[key] = compute()
        on_disk = json.loads(path.read_text()) if path.is_file() else {}
        stages.update({k: v for k, v in on_disk.items() if k not in stages})
        atomic_write_json(path, stages)
    else:
        print(f"reusing stage {key}", flush=True)
    return stages[key]


def random_equivalent(random: list[tuple[int, float]], mae: float) -> dict | None:
    """Random frames of the force error `mae` on the curve of the random sets [(size, force MAE)] (log-log
    interpolation, extrapolated beyond the sizes), or None with fewer than two sets."""
    if len(random) < 2:
        return None
    sizes, maes = zip(*sorted(random))
    frames, extrapolated = le.equivalent_baseline_labels(np.array(sizes), np.array(maes), mae)
    return {"random_frames": frames, "extrapolated": extrapolated, "random_sizes": list(sizes)}


def verdict(sets: dict) -> dict:
    """Random-frame labels with the run data's converged (kept-weights) force error, by log-log interpolation
    of the random sets (extrapolated beyond their range), and that over the run's labels."""
    random = sorted((s["n_labels"], s["kept_weights"]["forces_mae"]) for k, s in sets.items() if k != RUN_LABEL)
    run = sets[RUN_LABEL]
    mae = run["kept_weights"]["forces_mae"]
    equivalent = random_equivalent(random, mae)  # None with one random set: the comparison with it only
    return {"run_labels": run["n_labels"], "run_forces_mae": mae,
            "random_forces_mae_by_labels": {str(n): m for n, m in random},
            "run_beats_largest_random_set": bool(mae <= random[-1][1]), "target_ratio": 2.0,
            "equivalent_random_labels": equivalent and equivalent["random_frames"],
            "extrapolated": equivalent and equivalent["extrapolated"],
            "ratio": equivalent and equivalent["random_frames"] / run["n_labels"]}


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.3), gridspec_kw={"width_ratios": [1.3, 1, 0.9]})
    sets = report["data_quality"]["sets"]
    temperatures = list(next(iter(sets.values()))["kept_weights"]["forces_mae_by_test_temperature_K"])
    for index, (label, result) in enumerate(sets.items()):
        color = f"C{index}"
        curve = result["curve"]
        left.plot([r["epoch"] for r in curve], [1e3 * r["forces_mae"] for r in curve], "-", color=color,
                  label=f"{label} ({result['n_labels']} labels)")
        best = max(m["best_epoch"] or 0 for m in result["members"])
        left.plot([best], [1e3 * result["kept_weights"]["forces_mae"]], "*", ms=11, color=color)
        for k, t in enumerate(temperatures):
            middle.bar(index + 0.4 * k - 0.2, 1e3 * result["kept_weights"]["forces_mae_by_test_temperature_K"][t],
                       width=0.4, color=color, alpha=1.0 - 0.45 * k, label=f"{t} K half" if index == 0 else None)
    budget = report["protocol"].get("equal_budget_baselines")
    if budget:  # reports before 2026-12-02 carry the old table budget only
        left.axvline(budget["epochs_at_run_labels"], color="grey", ls=":",
                     label=f"the equal-budget baselines ({budget['structure_epochs']:,} structure-epochs) at "
                           f"{sets[RUN_LABEL]['n_labels']} labels")
    protocol = report["protocol"]
    left.set_xlabel(f"training epochs from scratch (at most {protocol['max_epochs']} epochs and "
                    f"{protocol['structure_epochs']:,} structure-epochs per member)")
    left.set_ylabel("test force MAE, ensemble mean (meV/Å)")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(ScalarFormatter())
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, title="★ kept weights (best validation)", title_fontsize=7)
    middle.set_xticks(range(len(sets)), [f"{label}\n{r['n_labels']}" for label, r in sets.items()], fontsize=7)
    middle.set_ylabel("test force MAE, kept weights (meV/Å)")
    middle.legend(fontsize=7)
    runs = report["stability"]
    names = [r["label"] for r in runs]
    right.barh(range(len(runs)), [r["survived_ps"] for r in runs], color="tab:gray")
    for k, r in enumerate(runs):
        right.text(r["survived_ps"] + 0.2, k, f"{r['survived_ps']:.1f} ps, {r['failure'] or 'no failure'}",
                   va="center", fontsize=7)
    right.set_yticks(range(len(runs)), names, fontsize=7)
    right.axvline(report["stability_target_ps"], color="tab:red", ls="--", lw=1)
    right.set_xlim(0, 1.6 * report["stability_target_ps"])
    right.set_xlabel(f"ps of MLFF MD at {report['stability_temperature_K']:g} K before failure")
    fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = le.control_parser(__doc__)
    parser.add_argument("--run-dir", type=Path, help="run folder (default: the benchmark's for molecule/variant)")
    parser.add_argument("--multiples", type=int, nargs="*", default=[1, 2, 4],
                        help="random sets of these multiples of the run's label count")
    parser.add_argument("--random-sizes", type=int, nargs="+",
                        help="random sets of these sizes instead of --multiples")
    parser.add_argument("--no-run-data", action="store_true",
                        help="skip the run's data (e.g. in a second process); without random sets or without the "
                        "run's data only the stages are computed, no report")
    parser.add_argument("--members", type=int, default=le.ENSEMBLE_SIZE, help="members per ensemble (data quality)")
    parser.add_argument("--max-epochs", type=int, default=300, help="epoch cap of the data-quality training")
    parser.add_argument("--structure-epochs", type=int, default=37500,
                        help="and at most this many structure-epochs per member (equal optimizer steps)")
    parser.add_argument("--eval-every", type=int, default=10, help="epochs between test evaluations")
    parser.add_argument("--stability-sizes", type=int, nargs="*",
                        help="baseline N whose ensembles run the stability MD (default: 100, 500 and the run's "
                        "label count; none: skip)")
    parser.add_argument("--stability-ps", type=float, default=le.STABILITY_PS)
    return le.control_args(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    atoms0, test, pool, config = le.control_inputs(args)
    stage_path = le.WORK_ROOT / f"{NAME}_{args.tag}_stages.json"
    stages = json.loads(stage_path.read_text()) if stage_path.is_file() else {}
    run_sets = le.run_member_sets(args.run_dir)[: args.members]
    n_run = len(le.label_times(args.run_dir))
    budget = f"m{args.members}_e{args.max_epochs}_se{args.structure_epochs}_every{args.eval_every}"
    sets = {}
    if not args.no_run_data:
        sets[RUN_LABEL] = stage(stages, stage_path, f"run_{budget}", lambda: traced_convergence(
            args, config, run_sets, test, le.WORK_ROOT / f"{NAME}_{args.tag}_run"))
        sets[RUN_LABEL]["n_labels"] = n_run
    random_sizes = args.random_sizes or [multiple * n_run for multiple in args.multiples]
    for n in random_sizes:
        label = f"random {n}" if args.random_sizes else f"random {n // n_run}x"
        train, valid = le.baseline_split(pool, n, seed=0)
        member_sets = [(seed, train, valid) for seed in le.baseline_member_seeds(0, args.members)]
        sets[label] = stage(stages, stage_path, f"random{n}_{budget}", lambda: traced_convergence(
            args, config, member_sets, test, le.WORK_ROOT / f"{NAME}_{args.tag}_random{n}"))  # noqa: B023 (called now)
        print(f"random {n}: kept weights {1e3 * sets[label]['kept_weights']['forces_mae']:.1f} meV/Å", flush=True)
    if args.no_run_data or not random_sizes:
        return 0
    previous = json.loads((le.RESULTS / f"{le.NAME}_{args.tag}.json").read_text())
    stability = [{"label": f"fhi_al final ({n_run} labels)", "n_labels": n_run, **previous["stability_fhi_al"]}]
    sizes = args.stability_sizes if args.stability_sizes is not None else sorted({100, 500, n_run})
    for n in sizes:
        result = stage(stages, stage_path, f"stability_n{n}_{args.stability_ps:g}ps",
                       lambda: baseline_stability(args, config, pool, test, atoms0, n))  # noqa: B023 (called now)
        stability.append({"label": f"baseline N={n}", **result})
    report = {"molecule": args.molecule, "run_dir": str(args.run_dir), "variant": args.variant,
              "n_test_frames": len(test), "members": args.members,
              "protocol": {"patience": args.le.config["patience"], "margin": le.CONVERGENCE_MARGIN,
                           "max_epochs": args.max_epochs, "structure_epochs": args.structure_epochs,
                           "eval_every": args.eval_every, "random_split": "90/10 of pool seed 0 (as the baseline)",
                           "baseline_budget": {k: args.le.config[k] for k in ("structure_epochs", "min_epochs")},
                           "equal_budget_baselines": {
                               "structure_epochs": args.le.config["structure_epochs"],
                               "epochs_at_run_labels": le.baseline_epochs(args.le, n_run)}},
              "data_quality": {"sets": sets, "verdict": verdict(sets)},
              "stability": stability, "stability_target_ps": args.stability_ps,
              "stability_temperature_K": args.le.temperature_K + le.HOT_OFFSET_K,
              "title": f"{args.molecule} [{args.variant}]: from-scratch training on the run's data vs random "
                       f"frames ({args.members} members); MLFF MD stability",
              "compute_seconds": {"data_quality": sum(r["seconds"] for r in sets.values()),
                                  "stability": sum(r["training_seconds"] + r["seconds"] for r in stability[1:])},
              "wall_time_s_this_invocation": time.perf_counter() - started}
    le.publish(args.le.out_dir, f"{NAME}_{args.tag}", report, lambda png: plot(report, png))
    print(json.dumps(report["data_quality"]["verdict"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
