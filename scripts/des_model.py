"""A discrete-event model of parallel-mode active learning: the ML side feeding K reference groups.

Each trajectory cycles: MD on the ML side until it asks for a label (`md_s` + `other_s`), the label on a reference
group (`reference_s`), then training of every ensemble member on it (`training_s` for all E members together,
growing with the training set), then MD again. The ML side is what `ACTIVE_LEARNING.ml_ranks` = M builds: rank 0
runs all the MD and bookkeeping and trains its own members; member i trains on ML rank (i + 1) mod M, each rank
first come, first served. A label's training is E shares of `training_s` / E on their owners; its trajectory
resumes MD once all E are done, while the other trajectories keep going. The reference groups serve their queue
first come, first served. Calibrated with the per-label times measured by `scripts/bench_parallel_busy.py`
(one ML rank), checked against its K = 2 and K = 4 runs, it predicts the groups' busy fraction, the wall time and
the ml_ranks needed for K = 8 ... 256, DFT costs of 1 minute to 1 hour and ensembles of 2 and 4 members.

    .venv/bin/python scripts/des_model.py [--measured scripts/results/bench_parallel_busy.json]

Writes scripts/results/des_model.json and readme_figs/des_model.png.
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
FIGURE = REPO / "readme_figs" / "des_model.png"
GROUPS = (8, 16, 32, 64, 128, 256)
DFT_COSTS_S = (60.0, 300.0, 900.0, 3600.0)
ENSEMBLE_SIZES = (2, 4)
LABELS_PER_GROUP = 20  # labels of a predicted run, per reference group
TRAIN_SHARE = 0.75  # of the labels go to the training set (valid_ratio 0.25)
TARGET_BUSY = 0.9


@dataclass(frozen=True)
class Costs:
    """Seconds per label. Training is all members' epochs after one label, at `training_set` structures; an
    epoch's cost is proportional to the training set, so it grows as labels arrive (`grows`)."""

    reference_s: float
    md_s: float
    training_s: float
    other_s: float = 0.0
    training_set: int = 1
    grows: bool = True

    def training_at(self, structures: int) -> float:
        return self.training_s * (structures / self.training_set if self.grows else 1.0)


@dataclass(frozen=True)
class Setup:
    groups: int
    trajectories: int
    labels: int
    ml_ranks: int = 1  # 1 ... ensemble_size + 1
    ensemble_size: int = 2


@dataclass(frozen=True)
class Outcome:
    busy_fraction: float  # groups' time in the reference / (K x window from the first label sent to the last back)
    wall_s: float  # from the start to the last label trained on
    ml_busy_fraction: float  # busy seconds of all ML ranks / (ml_ranks x wall time)
    labels: int


def member_owners(ensemble_size: int, ml_ranks: int) -> list[int]:
    """The ML rank that trains each member: member i on rank (i + 1) mod ml_ranks, the rule of
    fhi_al.procedures.member_ranks.member_owners (re-implemented: importing fhi_al pulls in torch)."""
    return [(member + 1) % ml_ranks for member in range(ensemble_size)]


def work_s(costs: Costs, kind: str, labels_done: int, ensemble_size: int) -> float:
    """Seconds of one ML work item: a trajectory's MD up to its next label, or one member's share of training."""
    if kind == "md":
        return costs.md_s + costs.other_s
    return costs.training_at(costs.training_set + round(TRAIN_SHARE * labels_done)) / ensemble_size


def simulate(costs: Costs, setup: Setup) -> Outcome:
    """Run the model until `setup.labels` labels are computed and trained on by every member."""
    if not 1 <= setup.ml_ranks <= setup.ensemble_size + 1:
        raise ValueError(f"ml_ranks must be 1 ... ensemble_size + 1, got {setup.ml_ranks}")
    owners = member_owners(setup.ensemble_size, setup.ml_ranks)
    events: list[tuple[float, int, str, int, int]] = []  # (time, sequence, kind, trajectory, ML rank)
    sequence = 0

    def schedule(at: float, kind: str, trajectory: int, rank: int = -1) -> None:
        nonlocal sequence
        heapq.heappush(events, (at, sequence, kind, trajectory, rank))
        sequence += 1

    rank_queues: list[deque[tuple[str, int]]] = [deque() for _ in range(setup.ml_ranks)]
    rank_queues[0].extend(("md", t) for t in range(setup.trajectories))
    busy_until_s = [0.0] * setup.ml_ranks
    rank_idle = [True] * setup.ml_ranks
    shares_left: dict[int, int] = {}  # trajectory -> member shares of its label not trained yet
    ref_queue: deque[int] = deque()
    groups_free = setup.groups
    requested = done = trained = 0
    ml_busy_s = ref_busy_s = 0.0
    first_sent, last_back, now = float("inf"), 0.0, 0.0

    def start_work() -> None:
        nonlocal groups_free, ml_busy_s, ref_busy_s, first_sent
        while groups_free and ref_queue:
            groups_free -= 1
            first_sent = min(first_sent, now)
            ref_busy_s += costs.reference_s
            schedule(now + costs.reference_s, "labelled", ref_queue.popleft())
        for rank, queue in enumerate(rank_queues):
            if rank_idle[rank] and queue:
                kind, trajectory = queue.popleft()
                seconds = work_s(costs, kind, done, setup.ensemble_size)
                rank_idle[rank] = False
                busy_until_s[rank] = now + seconds
                ml_busy_s += seconds
                schedule(now + seconds, kind, trajectory, rank)

    start_work()
    while trained < setup.labels:
        now, _, kind, trajectory, rank = heapq.heappop(events)
        if kind == "labelled":
            groups_free += 1
            done += 1
            last_back = now
            shares_left[trajectory] = setup.ensemble_size
            for owner in owners:
                rank_queues[owner].append(("train", trajectory))
        else:
            rank_idle[rank] = True
            if kind == "md" and requested < setup.labels:
                requested += 1
                ref_queue.append(trajectory)
            elif kind == "train":
                shares_left[trajectory] -= 1
                if not shares_left[trajectory]:
                    trained += 1
                    rank_queues[0].append(("md", trajectory))
        start_work()
    ml_busy_s -= sum(max(0.0, until_s - now) for until_s in busy_until_s)  # work running past the end
    window_s = max(last_back - first_sent, 1e-12)
    return Outcome(busy_fraction=ref_busy_s / (setup.groups * window_s), wall_s=now,
                   ml_busy_fraction=ml_busy_s / (setup.ml_ranks * now), labels=done)


def rank_work_per_label_s(costs: Costs, structures: int, ensemble_size: int, ml_ranks: int) -> list[float]:
    """Each ML rank's seconds per label: rank 0 the MD and bookkeeping plus its members' shares of training,
    rank r > 0 its members' shares."""
    share_s = costs.training_at(structures) / ensemble_size
    owners = member_owners(ensemble_size, ml_ranks)
    return [(costs.md_s + costs.other_s if rank == 0 else 0.0) + owners.count(rank) * share_s
            for rank in range(ml_ranks)]


def keeps_pace(costs: Costs, groups: int, structures: int, ensemble_size: int, ml_ranks: int) -> bool:
    """Whether the busiest ML rank keeps K groups fed: K x its seconds per label <= reference seconds per label."""
    return groups * max(rank_work_per_label_s(costs, structures, ensemble_size, ml_ranks)) <= costs.reference_s


def ml_ranks_needed(costs: Costs, groups: int, structures: int, ensemble_size: int) -> int:
    """The sizing rule: the smallest ml_ranks in 1 ... E + 1 that keeps pace; E + 1 when none does."""
    for ml_ranks in range(1, ensemble_size + 2):
        if keeps_pace(costs, groups, structures, ensemble_size, ml_ranks):
            return ml_ranks
    return ensemble_size + 1


def md_bound(costs: Costs, groups: int) -> bool:
    """Rank 0's MD and bookkeeping alone cannot keep K groups fed, however many ML ranks train."""
    return groups * (costs.md_s + costs.other_s) > costs.reference_s


def calibrated(run: dict) -> tuple[Costs, Setup]:
    """Costs and set-up of one measured run of bench_parallel_busy.py (one ML rank unless it says otherwise)."""
    per, settings = run["per_label_s"], run["settings"]
    costs = Costs(reference_s=per["reference"], md_s=per["md"], training_s=per["training"], other_s=per["other"],
                  grows=False)
    return costs, Setup(groups=run["groups"], trajectories=settings["num_trajectories"], labels=run["labels"],
                        ml_ranks=settings.get("ml_ranks", 1), ensemble_size=settings["ensemble_size"])


def predictions(base: Costs, *, ensemble_size: int, measured_ensemble: int) -> list[dict]:
    """Predicted runs of 20 labels per group, with one ML rank and with the ml_ranks the rule asks for; training
    scales with the ensemble (E = 4 trains twice what the measured E = 2 did)."""
    rows = []
    for cost_s in DFT_COSTS_S:
        costs = replace(base, reference_s=cost_s, training_s=base.training_s * ensemble_size / measured_ensemble)
        for groups in GROUPS:
            labels = LABELS_PER_GROUP * groups
            final_set = base.training_set + round(TRAIN_SHARE * labels)
            needed = ml_ranks_needed(costs, groups, final_set, ensemble_size)
            for ml_ranks in sorted({1, needed}):
                outcome = simulate(costs, Setup(groups=groups, trajectories=2 * groups, labels=labels,
                                                ml_ranks=ml_ranks, ensemble_size=ensemble_size))
                rows.append({"reference_s": cost_s, "groups": groups, "ensemble_size": ensemble_size,
                             "ml_ranks": ml_ranks, "ml_ranks_needed": needed,
                             "keeps_pace": keeps_pace(costs, groups, final_set, ensemble_size, needed),
                             "md_bound": md_bound(costs, groups), **asdict(outcome)})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per ensemble size and DFT cost: the largest K one ML rank keeps >= 90% busy, and the sizing at K = 64, 256."""
    out = []
    for ensemble_size in ENSEMBLE_SIZES:
        for cost_s in DFT_COSTS_S:
            mine = [r for r in rows if r["ensemble_size"] == ensemble_size and r["reference_s"] == cost_s]
            fed = [r["groups"] for r in mine if r["ml_ranks"] == 1 and r["busy_fraction"] >= TARGET_BUSY]
            at = {r["groups"]: r for r in mine if r["ml_ranks"] == r["ml_ranks_needed"]}
            out.append({"ensemble_size": ensemble_size, "reference_s": cost_s,
                        "largest_groups_one_rank": max(fed, default=None),
                        **{f"ml_ranks_needed_at_{k}": at[k]["ml_ranks_needed"] for k in (64, 256)},
                        **{f"keeps_pace_at_{k}": at[k]["keeps_pace"] for k in (64, 256)},
                        **{f"md_bound_at_{k}": at[k]["md_bound"] for k in (64, 256)},
                        **{f"busy_sized_at_{k}": at[k]["busy_fraction"] for k in (64, 256)}})
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (busy, wall, sizing) = plt.subplots(1, 3, figsize=(16, 5.6))
    colours = dict(zip(DFT_COSTS_S, ("tab:red", "tab:orange", "tab:green", "tab:blue")))
    rows = report["predictions"]
    for index, (cost_s, colour) in enumerate(colours.items()):
        name = f"DFT {cost_s / 60:.0f} min"
        pairs = [r for r in rows if r["reference_s"] == cost_s and r["ensemble_size"] == ENSEMBLE_SIZES[0]]
        one = [r for r in pairs if r["ml_ranks"] == 1]
        sized = [r for r in pairs if r["ml_ranks"] == r["ml_ranks_needed"]]
        for axes, value in ((busy, lambda r: 100 * r["busy_fraction"]), (wall, lambda r: r["wall_s"] / 3600)):
            axes.plot([r["groups"] for r in one], [value(r) for r in one], "o-", color=colour,
                      label=f"{name}, 1 ML rank")
            axes.plot([r["groups"] for r in sized], [value(r) for r in sized], "s--", color=colour, alpha=0.6, ms=4,
                      label=f"{name}, sized ml_ranks")
        for ensemble_size, style, lift in zip(ENSEMBLE_SIZES, ("o-", "^:"), (-0.05, 0.05)):
            needed = [r for r in rows if r["reference_s"] == cost_s and r["ensemble_size"] == ensemble_size
                      and r["ml_ranks"] == r["ml_ranks_needed"]]
            nudge = 2 ** (0.1 * (index - 1.5))  # side by side, not on top of each other
            x = [r["groups"] * nudge for r in needed]
            y = [r["ml_ranks_needed"] + lift for r in needed]
            sizing.plot(x, y, style, color=colour, label=f"{name}, E = {ensemble_size}")
            bound = [(xi, yi) for xi, yi, r in zip(x, y, needed) if r["md_bound"]]
            short = [(xi, yi) for xi, yi, r in zip(x, y, needed) if not r["keeps_pace"] and not r["md_bound"]]
            for points, marker in ((bound, "o"), (short, "s")):
                sizing.plot([p[0] for p in points], [p[1] for p in points], marker, ms=11, mfc="none", mec="k",
                            mew=1.0)
    for check in report["checks"]:
        busy.plot([check["groups"]], [100 * check["measured"]], "k*", ms=10)
        busy.plot([check["groups"]], [100 * check["predicted"]], "kx", ms=8)
    busy.plot([], [], "k*", label="measured here (K = 2, 4)")
    busy.plot([], [], "kx", label="model of those runs")
    sizing.plot([], [], "o", ms=11, mfc="none", mec="k", label="MD-bound: rank 0's MD alone too slow")
    sizing.plot([], [], "s", ms=11, mfc="none", mec="k", label="training-bound: 1 member per rank too slow")
    busy.axhline(100 * TARGET_BUSY, color="gray", lw=0.8)
    busy.set_ylim(0, 105)
    busy.set_ylabel("reference groups busy (%)")
    busy.set_title(f"Busy fraction, E = {ENSEMBLE_SIZES[0]} (gray: {100 * TARGET_BUSY:.0f}%)", fontsize=9)
    wall.set_yscale("log")
    wall.set_ylabel("wall time (h)")
    wall.set_title(f"Wall time for {LABELS_PER_GROUP} labels per group, E = {ENSEMBLE_SIZES[0]}", fontsize=9)
    top = max(ENSEMBLE_SIZES) + 1
    sizing.set_yticks(range(1, top + 1))
    sizing.set_ylim(0.5, top + 0.5)
    sizing.set_ylabel("ml_ranks needed (ML ranks)")
    sizing.set_title("Smallest ml_ranks with K x (busiest ML rank's s per label) <= DFT s per label\n"
                     "(points nudged apart; at the final training-set size)", fontsize=9)
    for axes in (busy, wall, sizing):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("reference groups K (groups)")
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"Discrete-event model calibrated on {report['calibration']['source']} "
                 f"(python scripts/des_model.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def checked(measured: dict) -> list[dict]:
    """The model of each measured run next to its measured busy fraction."""
    checks = []
    for run in measured["runs"]:
        costs, setup = calibrated(run)
        checks.append({"groups": run["groups"], "measured": run["busy_fraction_mean"],
                       "predicted": simulate(costs, setup).busy_fraction, "costs": asdict(costs),
                       "setup": asdict(setup)})
    return checks


def base_costs(measured: dict) -> Costs:
    """The ML side's per-label cost, averaged over the measured runs, at their mean final training-set size."""
    runs = measured["runs"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return Costs(reference_s=measured["cost_s"], md_s=mean([r["per_label_s"]["md"] for r in runs]),
                 training_s=mean([r["per_label_s"]["training"] for r in runs]),
                 other_s=mean([r["per_label_s"]["other"] for r in runs]),
                 training_set=round(mean([r["settings"]["max_set_size"] for r in runs])))


def bound_note(line: dict, groups: int) -> str:
    """What stops the sized ML side keeping pace at K = groups, for the printed summary."""
    if line[f"md_bound_at_{groups}"]:
        return ", MD-bound"
    return "" if line[f"keeps_pace_at_{groups}"] else ", training-bound"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, default=RESULTS / "bench_parallel_busy.json")
    args = parser.parse_args()
    measured = json.loads(args.measured.read_text())
    checks = checked(measured)
    base = base_costs(measured)
    measured_ensemble = measured["runs"][0]["settings"]["ensemble_size"]
    rows = [row for ensemble_size in ENSEMBLE_SIZES
            for row in predictions(base, ensemble_size=ensemble_size, measured_ensemble=measured_ensemble)]
    report = {"calibration": {"source": args.measured.name, "costs": asdict(base),
                              "ensemble_size": measured_ensemble},
              "checks": checks, "summary": summary(rows), "predictions": rows,
              "labels_per_group": LABELS_PER_GROUP}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "des_model.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, FIGURE)
    for check in checks:
        print(f"K = {check['groups']}: measured {100 * check['measured']:.1f}% busy, "
              f"model {100 * check['predicted']:.1f}%")
    for line in report["summary"]:
        print(f"E = {line['ensemble_size']}, DFT {line['reference_s'] / 60:.0f} min: one ML rank >= "
              f"{100 * TARGET_BUSY:.0f}% busy up to K = {line['largest_groups_one_rank']}; ml_ranks needed "
              + ", ".join(f"{line[f'ml_ranks_needed_at_{k}']} at K = {k} ({100 * line[f'busy_sized_at_{k}']:.0f}%"
                          + bound_note(line, k) + ")" for k in (64, 256)))
    print(f"wrote {RESULTS / 'des_model.json'} and {FIGURE}")


if __name__ == "__main__":
    main()
