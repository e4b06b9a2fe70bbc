"""Control of issue #15: why is the ensemble a run delivers worse than the same data trained from scratch?

On a finished bench_learning_efficiency run, each member is taken from its last checkpoint before the final
convergence (warm: the weights active learning trained) and converged on the run's final datasets exactly as
FHI_AL's final training does (Trainer.converge: fresh optimizer and scheduler, patience, kept best weights), but
with a larger epoch cap. The test error every `--eval-every` epochs shows what `max_final_epochs` buys. The same
data trained from scratch come from bench_data_quality's cached stage of the same run (same protocol), so the two
curves differ only in the starting weights.

    .venv/bin/python scripts/bench_final_training.py                 # ethanol nms_shared: ~20 min on one core

Writes scripts/results/final_training_<tag>.{json,png} and copies the png to readme_figs/. The warm convergence is
cached in WORK_ROOT (one file per cap, patience and tracing interval), so a rerun only redraws.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data_quality as dq  # noqa: E402  (sets the thread and plotting environment first)
import bench_learning_efficiency as le  # noqa: E402

from fhi_al.data.store import DatasetStore  # noqa: E402
from fhi_al.durable import atomic_write_json  # noqa: E402
from fhi_al.procedures.common import TRAIN, VALID, dataset_name, member_specs  # noqa: E402
from fhi_al.settings import load_run_settings  # noqa: E402

NAME = "final_training"


def warm_checkpoints(run_dir: Path, trainer) -> list[tuple[str, Path, Path]]:
    """(tag, checkpoint before the final convergence, final checkpoint) per member: a run with keep_checkpoints
    leaves one checkpoint per training session, and the final convergence writes the newest."""
    settings = load_run_settings(run_dir)
    config = trainer.config
    found = []
    for spec in member_specs(name_exp=config.name_exp, seed=config.seed,
                             ensemble_size=settings.al.active_learning.ensemble_size):
        paths = sorted(trainer.checkpoints.io.paths(spec.tag), key=lambda p: p.stat().st_mtime)
        if len(paths) < 2:
            raise SystemExit(f"{run_dir}: {spec.tag} has {len(paths)} checkpoint(s); the run needs "
                             "MISC.keep_checkpoints (bench_learning_efficiency sets it)")
        found.append((spec.tag, paths[-2], paths[-1]))
    return found


def warm_convergence(args, config, test: list) -> dict:
    """The members from their pre-final checkpoints, converged on the final datasets with the traced trainer;
    the ensemble's test errors every eval_every epochs of the convergence and with the kept weights."""
    work = le.WORK_ROOT / f"{NAME}_{args.tag}"
    shutil.rmtree(work, ignore_errors=True)
    trainer = dq.TracingTrainer(config, work, every=args.eval_every)
    store = DatasetStore(args.run_dir / load_run_settings(args.run_dir).al.active_learning.dataset_dir)
    started, members, finals = time.perf_counter(), [], []
    for tag, warm, final in warm_checkpoints(args.run_dir, le.Trainer(config, args.run_dir)):
        member = trainer.load_member(tag, path=warm, train_atoms=store.read(dataset_name("final", TRAIN, tag)),
                                     valid_atoms=store.read(dataset_name("final", VALID, tag)))
        trainer.starts[tag] = member.epoch
        finals.append({"tag": tag, "warm_checkpoint": warm.name, "delivered_checkpoint": final.name})
        trainer.converge(member, args.max_epochs, args.patience, le.CONVERGENCE_MARGIN)
        members.append(member)
    curve = dq.traced_curve(trainer, members, test)
    shutil.rmtree(work, ignore_errors=True)
    return {"n_labels": len(members[0].train_atoms) + len(members[0].valid_atoms), "max_epochs": args.max_epochs,
            "patience": args.patience, "seconds": time.perf_counter() - started, "members": [
                {**f, "start_epoch": (s := trainer.starts[m.tag]), "epochs_run": m.last_stop.epochs,
                 "stop": m.last_stop.reason.value, "best_epoch_of_convergence": (m.last_stop.best_epoch or s) - s}
                for f, m in zip(finals, members)],
            "curve": curve, "kept_weights": dq.test_errors(members, test)}


def scratch_stages(args) -> tuple[dict | None, list]:
    """bench_data_quality's from-scratch convergence of the same run's data, if it ran, and the random sets it
    trained with the same protocol [(kept-weights force MAE, label)]."""
    path = le.WORK_ROOT / f"{dq.NAME}_{args.tag}_stages.json"
    stages = json.loads(path.read_text()) if path.is_file() else {}
    key = next((k for k in stages if k.startswith("run_m2_")), None)
    if key is None:
        return None, []
    budget = key.removeprefix("run_")
    cap = stages[key]["max_epochs"]
    randoms = sorted((v["n_labels"], v["kept_weights"]["forces_mae"]) for k, v in stages.items()
                     if k.startswith("random") and k.endswith(budget))
    return stages[key], [(mae, f"{n} random frames, from scratch (cap {cap})", n) for n, mae in randoms]


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7.5, 4.6))
    for key, label, color in (("warm", "from the weights active learning trained (as FHI_AL's final training)",
                               "tab:blue"), ("scratch", "from scratch (bench_data_quality)", "tab:green")):
        result = report[key]
        if result is None:
            continue
        curve = result["curve"]
        axis.plot([r["epoch"] for r in curve], [1e3 * r["forces_mae"] for r in curve], "-", color=color, label=label)
        axis.axhline(1e3 * result["kept_weights"]["forces_mae"], color=color, ls=":", lw=1)
    delivered = report["delivered"]
    axis.plot([delivered["max_final_epochs"]], [1e3 * delivered["forces_mae"]], "*", ms=12, color="tab:red",
              label=f"delivered by the run (max_final_epochs = {delivered['max_final_epochs']})")
    for mae, label in report["random_frames"]:
        axis.axhline(1e3 * mae, color="grey", ls="--", lw=0.8)
        axis.text(axis.get_xlim()[1], 1e3 * mae, f" {label}", va="center", fontsize=7, color="grey")
    axis.set_xlabel("epochs of the final training")
    axis.set_ylabel("test force MAE, ensemble mean (meV/Å)")
    axis.set_ylim(top=min(60.0, axis.get_ylim()[1]))
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, title="dotted: kept weights (best validation)", title_fontsize=7)
    axis.set_title(textwrap.fill(report["title"], 80), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = le.control_parser(__doc__)
    parser.add_argument("--max-epochs", type=int, default=300, help="epoch cap of the warm convergence")
    parser.add_argument("--patience", type=int, help="validations without improvement that stop it "
                        "(default: the benchmark's, as the run's final training)")
    parser.add_argument("--eval-every", type=int, default=10, help="epochs between test evaluations")
    args = le.control_args(parser, argv)
    args.patience = args.patience or args.le.config["patience"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    atoms0, test, _, config = le.control_inputs(args)
    del atoms0
    cache = le.WORK_ROOT / f"{NAME}_{args.tag}_e{args.max_epochs}_p{args.patience}_every{args.eval_every}.json"
    if cache.is_file():
        print(f"reusing {cache}", flush=True)
        warm = json.loads(cache.read_text())
    else:
        warm = warm_convergence(args, config, test)
        atomic_write_json(cache, warm)
    report_path = le.RESULTS / f"{le.NAME}_{args.tag}.json"
    run_report = json.loads(report_path.read_text())
    scratch, randoms = scratch_stages(args)
    # the equivalents need random frames trained as the control trains (converged): [(size, force MAE)]
    converged = [(n, mae) for mae, _, n in randoms]
    if not randoms:  # draw the benchmark's equal-budget baselines instead, without equivalents
        base = {r["n_labels"]: r["forces_mae"] for r in le.read_baseline_cache(args.le) if r["seed"] == 0}
        randoms = [(mae, f"{n} random frames, equal budget", n) for n, mae in sorted(base.items())]
    report = {"molecule": args.molecule, "variant": args.variant, "run_dir": str(args.run_dir),
              "n_test_frames": len(test), "warm": warm, "scratch": scratch,
              "delivered": {"forces_mae": run_report["fhi_al"][-1]["forces_mae"],
                            "max_final_epochs": run_report["al_settings"]["ACTIVE_LEARNING"]["max_final_epochs"]},
              "random_frames": [(mae, label) for mae, label, _ in randoms],
              "warm_equivalent": dq.random_equivalent(converged, warm["kept_weights"]["forces_mae"]),
              "scratch_equivalent": scratch and dq.random_equivalent(converged, scratch["kept_weights"]["forces_mae"]),
              "title": f"{args.molecule} [{args.variant}]: final training of the run's data "
                       f"({warm['n_labels']} labels per member set, 2 members)"}
    le.publish(args.le.out_dir, f"{NAME}_{args.tag}", report, lambda png: plot(report, png))
    summary = {k: 1e3 * report[k]["kept_weights"]["forces_mae"] for k in ("warm", "scratch") if report[k]}
    print(json.dumps({"kept_weights_forces_mae_meV_per_A": summary,
                      "delivered_meV_per_A": 1e3 * report["delivered"]["forces_mae"],
                      "equivalent_random_frames": {k: report[f"{k}_equivalent"] for k in ("warm", "scratch")},
                      "warm_members": warm["members"]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
