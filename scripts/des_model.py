"""A discrete-event model of parallel-mode active learning: the ML side feeding K reference groups.

Each trajectory cycles: MD on the ML side until it asks for a label (`md_s` + `other_s`), the label on a reference
group (`reference_s`), then training on the ML side (`training_s`, which grows with the training set), then MD
again. The ML side serves its work first come, first served on `ml_ranks` ranks (fhi_al has one ML rank today;
more is the what-if of concurrent training); the reference groups serve their queue the same way. Calibrated
with the per-label times measured by `scripts/bench_parallel_busy.py`, checked against its K = 2 and K = 4 runs,
it predicts the groups' busy fraction and the wall time for K = 8 ... 256 and DFT costs of 1 minute to 1 hour.

    .venv/bin/python scripts/des_model.py [--measured scripts/results/bench_parallel_busy.json]

Writes scripts/results/des_model.json and readme_figs/des_model.png.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
FIGURE = REPO / "readme_figs" / "des_model.png"
GROUPS = (8, 16, 32, 64, 128, 256)
DFT_COSTS_S = (60.0, 300.0, 900.0, 3600.0)
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
    ml_ranks: int = 1


@dataclass(frozen=True)
class Outcome:
    busy_fraction: float  # groups' time in the reference / (K x window from the first label sent to the last back)
    wall_s: float  # from the start to the last label trained on
    ml_busy_fraction: float  # of the ML ranks over the wall time
    labels: int


def simulate(costs: Costs, setup: Setup) -> Outcome:
    """Run the model until `setup.labels` labels are computed and trained on."""
    events: list[tuple[float, int, str, int]] = []  # (time, sequence, kind, trajectory)
    sequence = 0

    def schedule(at: float, kind: str, trajectory: int) -> None:
        nonlocal sequence
        heapq.heappush(events, (at, sequence, kind, trajectory))
        sequence += 1

    ml_queue: list[tuple[str, int]] = [("md", t) for t in range(setup.trajectories)]
    ref_queue: list[int] = []
    ml_free, groups_free = setup.ml_ranks, setup.groups
    requested = done = trained = 0
    ml_busy_s = ref_busy_s = 0.0
    first_sent, last_back, now = math.inf, 0.0, 0.0

    def start_work() -> None:
        nonlocal ml_free, groups_free, ml_busy_s, ref_busy_s, first_sent
        while groups_free and ref_queue:
            groups_free -= 1
            first_sent = min(first_sent, now)
            ref_busy_s += costs.reference_s
            schedule(now + costs.reference_s, "labelled", ref_queue.pop(0))
        while ml_free and ml_queue:
            kind, trajectory = ml_queue.pop(0)
            seconds = (costs.md_s + costs.other_s if kind == "md"
                       else costs.training_at(costs.training_set + round(TRAIN_SHARE * done)))
            ml_free -= 1
            ml_busy_s += seconds
            schedule(now + seconds, kind, trajectory)

    start_work()
    while trained < setup.labels:
        now, _, kind, trajectory = heapq.heappop(events)
        if kind == "labelled":
            groups_free += 1
            done += 1
            last_back = now
            ml_queue.append(("train", trajectory))
            start_work()
            continue
        ml_free += 1
        if kind == "md" and requested < setup.labels:
            requested += 1
            ref_queue.append(trajectory)
        elif kind == "train":
            trained += 1
            ml_queue.append(("md", trajectory))
        start_work()
    window_s = max(last_back - first_sent, 1e-12)
    return Outcome(busy_fraction=ref_busy_s / (setup.groups * window_s), wall_s=now,
                   ml_busy_fraction=ml_busy_s / (setup.ml_ranks * now), labels=done)


def ml_ranks_needed(costs: Costs, groups: int, structures: int) -> int:
    """The sizing rule: ML work per label x K <= reference time x ml_ranks (the ML side keeps pace)."""
    ml_s = costs.md_s + costs.other_s + costs.training_at(structures)
    return max(1, math.ceil(groups * ml_s / costs.reference_s))


def calibrated(run: dict) -> tuple[Costs, Setup]:
    """Costs and set-up of one measured run of bench_parallel_busy.py."""
    per = run["per_label_s"]
    costs = Costs(reference_s=per["reference"], md_s=per["md"], training_s=per["training"], other_s=per["other"],
                  grows=False)
    return costs, Setup(groups=run["groups"], trajectories=run["settings"]["num_trajectories"],
                        labels=run["labels"])


def predictions(base: Costs, *, ensemble_scale: float = 1.0) -> list[dict]:
    rows = []
    for cost_s in DFT_COSTS_S:
        for groups in GROUPS:
            labels = LABELS_PER_GROUP * groups
            costs = replace(base, reference_s=cost_s, training_s=base.training_s * ensemble_scale)
            final_set = base.training_set + round(TRAIN_SHARE * labels)
            needed = ml_ranks_needed(costs, groups, final_set)
            for ml_ranks in sorted({1, needed}):
                outcome = simulate(costs, Setup(groups=groups, trajectories=2 * groups, labels=labels,
                                                ml_ranks=ml_ranks))
                rows.append({"reference_s": cost_s, "groups": groups, "ml_ranks": ml_ranks,
                             "ml_ranks_needed": needed, "ensemble_scale": ensemble_scale, **asdict(outcome)})
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (busy, wall, sizing) = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = dict(zip(DFT_COSTS_S, ("tab:red", "tab:orange", "tab:green", "tab:blue")))
    rows = report["predictions"]
    for cost_s, colour in colours.items():
        one = [r for r in rows if r["reference_s"] == cost_s and r["ml_ranks"] == 1 and r["ensemble_scale"] == 1]
        busy.plot([r["groups"] for r in one], [100 * r["busy_fraction"] for r in one], "o-", color=colour,
                  label=f"DFT {cost_s / 60:.0f} min, 1 ML rank")
        sized = [r for r in rows if r["reference_s"] == cost_s and r["ml_ranks"] == r["ml_ranks_needed"]
                 and r["ensemble_scale"] == 1]
        busy.plot([r["groups"] for r in sized], [100 * r["busy_fraction"] for r in sized], "s--", color=colour,
                  alpha=0.6, ms=4)
        wall.plot([r["groups"] for r in one], [r["wall_s"] / 3600 for r in one], "o-", color=colour,
                  label=f"DFT {cost_s / 60:.0f} min")
        wall.plot([r["groups"] for r in sized], [r["wall_s"] / 3600 for r in sized], "s--", color=colour, alpha=0.6,
                  ms=4)
        for scale, style in ((1.0, "o-"), (2.0, "^:")):
            needed = {r["groups"]: r["ml_ranks_needed"] for r in rows
                      if r["reference_s"] == cost_s and r["ensemble_scale"] == scale}
            sizing.plot(list(needed), list(needed.values()), style, color=colour,
                        label=f"DFT {cost_s / 60:.0f} min" + (", 2x ensemble" if scale != 1 else ""))
    for check in report["checks"]:
        busy.plot([check["groups"]], [100 * check["measured"]], "k*", ms=10)
        busy.plot([check["groups"]], [100 * check["predicted"]], "kx", ms=8)
    busy.plot([], [], "k*", label="measured here (K = 2, 4)")
    busy.plot([], [], "kx", label="model of those runs")
    busy.plot([], [], "k--", alpha=0.6, label="ml_ranks sized by the rule")
    busy.axhline(100 * TARGET_BUSY, color="gray", lw=0.8)
    busy.set_xscale("log", base=2)
    busy.set_xlabel("reference groups K")
    busy.set_ylabel("reference groups busy (%)")
    busy.set_ylim(0, 105)
    busy.legend(fontsize=7, loc="lower left")
    busy.set_title("Predicted busy fraction (ML side: one rank unless sized)", fontsize=9)
    wall.set_xscale("log", base=2)
    wall.set_yscale("log")
    wall.set_xlabel("reference groups K")
    wall.set_ylabel("wall time (h)")
    wall.legend(fontsize=7)
    wall.set_title(f"Wall time for {LABELS_PER_GROUP} labels per group (dashed: sized ml_ranks)", fontsize=9)
    sizing.set_xscale("log", base=2)
    sizing.set_yscale("log", base=2)
    sizing.set_xlabel("reference groups K")
    sizing.set_ylabel("ml_ranks to keep the groups fed")
    sizing.legend(fontsize=7)
    sizing.set_title("ml_ranks >= K x ML time per label / DFT time per label", fontsize=9)
    fig.suptitle(f"Discrete-event model calibrated on {report['calibration']['source']} "
                 f"(python scripts/des_model.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, default=RESULTS / "bench_parallel_busy.json")
    args = parser.parse_args()
    measured = json.loads(args.measured.read_text())
    checks = []
    for run in measured["runs"]:
        costs, setup = calibrated(run)
        checks.append({"groups": run["groups"], "measured": run["busy_fraction_mean"],
                       "predicted": simulate(costs, setup).busy_fraction, "costs": asdict(costs)})
    # the ML side's per-label cost, averaged over the measured runs, at their mean final training-set size
    runs = measured["runs"]
    base = Costs(reference_s=measured["cost_s"], md_s=sum(r["per_label_s"]["md"] for r in runs) / len(runs),
                 training_s=sum(r["per_label_s"]["training"] for r in runs) / len(runs),
                 other_s=sum(r["per_label_s"]["other"] for r in runs) / len(runs),
                 training_set=round(sum(r["settings"]["max_set_size"] for r in runs) / len(runs)))
    report = {"calibration": {"source": args.measured.name, "costs": asdict(base)}, "checks": checks,
              "predictions": predictions(base) + predictions(base, ensemble_scale=2.0),
              "labels_per_group": LABELS_PER_GROUP}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "des_model.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, FIGURE)
    for check in checks:
        print(f"K = {check['groups']}: measured {100 * check['measured']:.1f}% busy, "
              f"model {100 * check['predicted']:.1f}%")
    print(f"wrote {RESULTS / 'des_model.json'} and {FIGURE}")


if __name__ == "__main__":
    main()
