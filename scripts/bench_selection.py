"""Control of issue #15's data-quality target: can *any* choice of frames from the random pool beat random frames
by 2x on the benchmark's test set? Every strategy starts from the run's initial (normal-mode) labels and adds the
same number of frames from the 500-frame reference-MD pool at T that the random baselines draw from:

- random: drawn uniformly (seed 0);
- diverse: farthest-point sampling in a permutation-invariant structure descriptor (inverse interatomic
  distances, sorted within each element pair), starting from the initial labels;
- uncertainty: pool-based uncertainty sampling in batches; before each batch a fresh ensemble is trained on the
  frames chosen so far and the frames with the largest ensemble force spread (the active-learning criterion) are
  taken;
- true error (oracle): the same loop, ranking by the ensemble's true largest per-atom force error, which no real
  selector knows: the upper bound of error-driven selection.

Each final set (initial labels + picks, picks split 80/20 as the run's valid_ratio) is trained from scratch with
bench_data_quality's protocol (2 members, at most 300 epochs and 37,500 structure-epochs per member) and compared
with fhi_al's own labels and 1x/2x/4x random frames from that script's stages (run it first).

    .venv/bin/python scripts/bench_selection.py                                # all four in one process
    .venv/bin/python scripts/bench_selection.py --strategies random diverse &  # or split over 2 cores,
    .venv/bin/python scripts/bench_selection.py --strategies uncertainty oracle  # then once more to report

Split over 2 cores that also ran up to three other jobs, the four strategies took 87 min of wall time (ethanol).

Writes scripts/results/selection_<tag>.{json,png} (png also to readme_figs/). Finished strategies are kept in
WORK_ROOT/selection_<tag>_<strategy>.json, so a rerun only does what is missing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data_quality as dq  # noqa: E402
import bench_learning_efficiency as le  # noqa: E402  (sets the thread and plotting environment first)
import numpy as np  # noqa: E402

from fhi_al.ensemble import Ensemble  # noqa: E402
from fhi_al.training.engine import Trainer, member_tag  # noqa: E402

NAME = "selection"
STRATEGIES = ("random", "diverse", "uncertainty", "oracle")
LABELS = {"random": "random picks", "diverse": "diverse (farthest point)", "uncertainty": "uncertainty (pool, batches)",
          "oracle": "true error (oracle)"}
VALID_EVERY = 5  # every 5th pick is a validation frame: the run's valid_ratio 0.2
SELECTION_SEED = 0


def descriptor(atoms) -> np.ndarray:
    """Inverse interatomic distances (1/Å), sorted within each element pair: invariant to rotation,
    translation and the permutation of like atoms."""
    numbers = atoms.numbers
    distances = atoms.get_all_distances()
    parts = []
    for a in sorted(set(numbers)):
        for b in sorted(set(numbers)):
            if b < a:
                continue
            i, j = np.where((numbers[:, None] == a) & (numbers[None, :] == b))
            keep = i < j if a == b else np.ones(len(i), bool)
            parts.append(np.sort(1.0 / distances[i[keep], j[keep]]))
    return np.concatenate(parts)


def farthest_points(chosen: np.ndarray, candidates: np.ndarray, count: int) -> list[int]:
    """Greedy farthest-point sampling: indices into `candidates`, each the farthest (Euclidean) from everything
    chosen so far (the `chosen` rows and the earlier picks)."""
    nearest = np.min(np.linalg.norm(candidates[:, None, :] - chosen[None, :, :], axis=-1), axis=1)
    picks = []
    for _ in range(count):
        k = int(np.argmax(nearest))
        picks.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[k], axis=1))
        nearest[picks] = -1.0
    return picks


def split_picks(picks: list) -> tuple[list, list]:
    valid = [atoms for k, atoms in enumerate(picks) if k % VALID_EVERY == VALID_EVERY - 1]
    train = [atoms for k, atoms in enumerate(picks) if k % VALID_EVERY != VALID_EVERY - 1]
    return train, valid


def ensemble_on(args, config, train: list, valid: list, work: Path) -> list:
    """A fresh ensemble converged on (train, valid) with the selection rounds' budget."""
    shutil.rmtree(work, ignore_errors=True)
    trainer = Trainer(config, work)
    n = len(train) + len(valid)
    max_epochs = min(args.round_epochs, max(20, math.ceil(args.round_structure_epochs / n)))
    members = []
    for seed in le.baseline_member_seeds(SELECTION_SEED, args.members):
        member = trainer.create_member(member_tag("select", seed), seed, train, valid)
        trainer.converge(member, max_epochs, args.le.config["patience"], le.CONVERGENCE_MARGIN)
        members.append(member)
    return members


def scores(members: list, frames: list, kind: str) -> np.ndarray:
    """Per frame: the ensemble's largest per-atom force spread ('uncertainty') or its true largest per-atom
    force error ('oracle'), eV/Å."""
    out = []
    for atoms, res in le.predictions(Ensemble.from_members(members), frames):
        if kind == "uncertainty":
            out.append(res["forces_uncertainty_max"])
        else:
            out.append(float(np.linalg.norm(res["forces"] - atoms.arrays["REF_forces"], axis=1).max()))
    return np.array(out)


def batched_selection(args, config, initial: tuple[list, list], pool: list, count: int, kind: str) -> dict:
    """Pool-based selection in batches of args.batch: train on what is chosen, take the top-scored frames."""
    remaining, picks, rounds = list(range(len(pool))), [], []
    batch = math.ceil(count / max(1, round(count / args.batch)))  # equal batches, none of a handful of frames
    while len(picks) < count:
        train, valid = split_picks([pool[i] for i in picks])
        members = ensemble_on(args, config, initial[0] + train, initial[1] + valid,
                              le.WORK_ROOT / f"{NAME}_{args.tag}_{kind}_round")
        score = scores(members, [pool[i] for i in remaining], kind)
        order = np.argsort(-score)[: min(batch, count - len(picks))]
        rounds.append({"labels": len(initial[0]) + len(initial[1]) + len(picks),
                       "score_eV_per_A_picked_mean": float(score[order].mean()),
                       "score_eV_per_A_pool_median": float(np.median(score))})
        print(f"{kind}: round at {rounds[-1]['labels']} labels, picked mean score "
              f"{rounds[-1]['score_eV_per_A_picked_mean']:.3f} eV/Å (pool median "
              f"{rounds[-1]['score_eV_per_A_pool_median']:.3f})", flush=True)
        chosen = {remaining[k] for k in order}
        picks += [remaining[k] for k in order]
        remaining = [i for i in remaining if i not in chosen]
    return {"picks": picks, "rounds": rounds}


def select(args, config, strategy: str, initial: tuple[list, list], pool: list, count: int) -> dict:
    started = time.perf_counter()
    if strategy == "random":
        result = {"picks": [int(i) for i in np.random.default_rng(SELECTION_SEED).permutation(len(pool))[:count]]}
    elif strategy == "diverse":
        chosen = np.array([descriptor(atoms) for atoms in initial[0] + initial[1]])
        candidates = np.array([descriptor(atoms) for atoms in pool])
        result = {"picks": farthest_points(chosen, candidates, count)}
    else:
        result = batched_selection(args, config, initial, pool, count, strategy)
    result["selection_seconds"] = time.perf_counter() - started
    return result


def evaluate_strategy(args, config, strategy: str, initial, pool: list, test: list, count: int) -> dict:
    selection = select(args, config, strategy, initial, pool, count)
    train, valid = split_picks([pool[i] for i in selection["picks"]])
    member_sets = [(seed, initial[0] + train, initial[1] + valid)
                   for seed in le.baseline_member_seeds(SELECTION_SEED, args.members)]
    trained = dq.traced_convergence(args, config, member_sets, test, le.WORK_ROOT / f"{NAME}_{args.tag}_{strategy}")
    picked = [pool[i] for i in selection["picks"]]
    return {**trained, **selection, "picked_energy_meV_per_atom": energies_meV_per_atom(picked)}


def energies_meV_per_atom(frames: list) -> list[float]:
    """Reference energy per atom (meV/atom; absolute, shifted in the report)."""
    return [1e3 * atoms.info["REF_energy"] / len(atoms) for atoms in frames]


def strategy_result(args, config, strategy: str, initial, pool, test, count: int) -> dict:
    rounds = f"b{args.batch}_r{args.round_epochs}_{args.round_structure_epochs}"
    path = le.WORK_ROOT / f"{NAME}_{args.tag}_{strategy}_{args.budget}_{rounds}.json"
    if path.is_file():
        print(f"reusing {path.name}", flush=True)
        return json.loads(path.read_text())
    result = evaluate_strategy(args, config, strategy, initial, pool, test, count)
    path.write_text(json.dumps(result, indent=1))
    print(f"{strategy}: kept weights {1e3 * result['kept_weights']['forces_mae']:.1f} meV/Å", flush=True)
    return result


def references(args) -> dict:
    """fhi_al's labels and the random 1x/2x/4x sets, as bench_data_quality measured them."""
    path = le.WORK_ROOT / f"{dq.NAME}_{args.tag}_stages.json"
    if not path.is_file():
        raise SystemExit(f"{path} missing: run scripts/bench_data_quality.py --variant {args.variant} first")
    stages = json.loads(path.read_text())
    return {key.split("_m")[0]: value for key, value in stages.items()
            if key.endswith(args.budget) and (key.startswith("run_") or key.startswith("random"))}


def report(args, results: dict, reference: dict, initial_n: int, test: list, pool: list) -> dict:
    random_sets = sorted((v["n_labels"], v["kept_weights"]["forces_mae"]) for k, v in reference.items()
                         if k.startswith("random"))
    sizes, maes = np.array([n for n, _ in random_sets]), np.array([m for _, m in random_sets])
    energies = {"test": energies_meV_per_atom(test), "pool": energies_meV_per_atom(pool),
                **{LABELS[s]: results[s]["picked_energy_meV_per_atom"] for s in results}}
    lowest = min(energies["test"])
    rows = {}
    for name, result in [("fhi_al labels", reference["run"])] + [(LABELS[s], results[s]) for s in results]:
        mae = result["kept_weights"]["forces_mae"]
        equivalent, extrapolated = le.equivalent_baseline_labels(sizes, maes, mae)
        rows[name] = {"n_labels": result["n_labels"], "forces_mae": mae,
                      "forces_mae_by_test_temperature_K": result["kept_weights"]["forces_mae_by_test_temperature_K"],
                      "equivalent_random_labels": equivalent, "extrapolated": extrapolated,
                      "ratio": equivalent / result["n_labels"]}
    return {"molecule": args.molecule, "variant": args.variant, "initial_labels": initial_n,
            "pool_frames": len(pool), "n_test_frames": len(test), "members": args.members,
            "protocol": {"final_training": "bench_data_quality (kept weights)", "max_epochs": args.max_epochs,
                         "structure_epochs": args.structure_epochs, "batch": args.batch,
                         "round_epochs": args.round_epochs, "round_structure_epochs": args.round_structure_epochs,
                         "descriptor": "inverse distances sorted per element pair"},
            "random_pure_pool": {str(n): m for n, m in random_sets}, "strategies": rows,
            "rounds": {s: results[s].get("rounds") for s in results},
            "energy_meV_per_atom_above_lowest_test_frame": {
                name: (np.array(values) - lowest).tolist() for name, values in energies.items()},
            "target_ratio": 2.0}


def plot(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    rows = summary["strategies"]
    temperatures = list(next(iter(rows.values()))["forces_mae_by_test_temperature_K"])
    for index, (name, row) in enumerate(rows.items()):
        for k, t in enumerate(temperatures):
            left.bar(index + 0.27 * (k - 1), 1e3 * row["forces_mae_by_test_temperature_K"][t], width=0.27,
                     color=f"C{index}", alpha=1.0 - 0.4 * k, label=f"{t} K test half" if index == 0 else None)
        left.bar(index + 0.27, 1e3 * row["forces_mae"], width=0.27, color="k", alpha=0.75,
                 label="all test frames" if index == 0 else None)
        top = 1e3 * max(row["forces_mae_by_test_temperature_K"].values())
        mark = "*" if row["extrapolated"] else ""
        left.text(index, top * 1.04, f"≈ {row['equivalent_random_labels']:.0f}{mark} random\n({row['ratio']:.2f}×)",
                  ha="center", va="bottom", fontsize=7)
    for n, mae in summary["random_pure_pool"].items():
        left.axhline(1e3 * mae, color="grey", ls=":", lw=1)
        left.text(len(rows) - 0.45, 1e3 * mae, f"{n} random", fontsize=7, va="bottom", ha="right", color="grey")
    left.set_ylim(0, 1.3e3 * max(max(r["forces_mae_by_test_temperature_K"].values()) for r in rows.values()))
    left.set_xticks(range(len(rows)), [f"{name.replace(' (', chr(10) + '(')}\n{row['n_labels']} labels"
                                       for name, row in rows.items()], fontsize=7)
    left.set_ylabel("test force MAE, trained from scratch (meV/Å)")
    left.legend(fontsize=7, loc="upper left")
    left.set_title("same label count; ≈ N random: pool frames of the same error (* extrapolated below 125)",
                   fontsize=9)
    energies = summary["energy_meV_per_atom_above_lowest_test_frame"]
    bins = np.linspace(np.percentile(energies["test"], 1), np.percentile(energies["test"], 99.5), 30)
    right.hist(energies["test"], bins=bins, density=True, histtype="stepfilled", color="0.85", label="test set")
    for index, name in enumerate(energies):
        if name not in ("test", "pool"):
            right.hist(energies[name], bins=bins, density=True, histtype="step", lw=1.5,
                       color=f"C{list(rows).index(name)}", label=f"picked: {name}")
    right.set_xlabel("reference energy above the lowest test frame (meV/atom)")
    right.set_ylabel("density")
    right.legend(fontsize=7)
    right.set_title("where each strategy's picks lie", fontsize=9)
    picked = summary["strategies"][LABELS["random"]]["n_labels"] - summary["initial_labels"]
    fig.suptitle(f"{summary['molecule']}: choosing {picked} of {summary['pool_frames']} pool frames after "
                 f"{summary['initial_labels']} initial labels ({summary['members']} members, from scratch)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = le.control_parser(__doc__)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--members", type=int, default=le.ENSEMBLE_SIZE)
    parser.add_argument("--max-epochs", type=int, default=300, help="epoch cap of the final training")
    parser.add_argument("--structure-epochs", type=int, default=37500,
                        help="and at most this many structure-epochs per member (bench_data_quality's budget)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=25, help="frames per round of the pool-based loops")
    parser.add_argument("--round-epochs", type=int, default=100, help="epoch cap of a selection round's training")
    parser.add_argument("--round-structure-epochs", type=int, default=7500)
    args = le.control_args(parser, argv)
    args.budget = f"m{args.members}_e{args.max_epochs}_se{args.structure_epochs}_every{args.eval_every}"
    return args


def main(argv=None) -> int:
    from fhi_al.data.store import DatasetStore
    from fhi_al.procedures.common import INITIAL_STAGE, SHARED_TAG, TRAIN, VALID, dataset_name

    args = parse_args(argv)
    _, test, pool, config = le.control_inputs(args)
    reference = references(args)
    store = DatasetStore(args.run_dir / "data")
    initial = tuple(store.read(dataset_name(INITIAL_STAGE.prefix, split, SHARED_TAG)) for split in (TRAIN, VALID))
    initial_n = len(initial[0]) + len(initial[1])
    count = reference["run"]["n_labels"] - initial_n
    results = {s: strategy_result(args, config, s, initial, pool, test, count) for s in args.strategies}
    if set(args.strategies) != set(STRATEGIES):
        return 0
    summary = report(args, results, reference, initial_n, test, pool)
    le.publish(le.RESULTS, f"{NAME}_{args.tag}", summary, lambda png: plot(summary, png))
    print(json.dumps({k: {"forces_meV_per_A": 1e3 * v["forces_mae"], "ratio": v["ratio"]}
                      for k, v in summary["strategies"].items()}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
