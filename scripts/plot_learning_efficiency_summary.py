"""Summary of every learning-efficiency run in scripts/results/ (one bar per molecule / configuration / variant):
how many random reference-MD labels the baseline needs for fhi_al's final force error, divided by the labels
fhi_al used (> 1: active learning needed fewer), the same ratio for fhi_al's final data retrained from scratch,
and the uncertainty calibration of analysis mode. Writes scripts/results/learning_efficiency_summary.{json,png}
and copies the plot to readme_figs/.

    .venv/bin/python scripts/plot_learning_efficiency_summary.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning_efficiency import baseline_means, equivalent_baseline_labels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
FIGS = REPO / "readme_figs"
NAME = "learning_efficiency_summary"
TARGET_RATIO, TARGET_SPEARMAN = 5.0, 0.6


def row_of(path: Path) -> dict | None:
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or "efficiency_forces" not in report:
        return None
    eff = report["efficiency_forces"]
    label = f"{report['molecule']} {'quick' if report['quick'] else 'full'}"
    label += f" [{report['variant']}]" if report.get("variant") else ""
    label += f" (N={eff['baseline_largest_n']} reached)" if eff["ratio"] else ""
    row = {"run": label, "file": path.name, "labels": eff["fhi_al_final_labels"],
           "forces_mae_meV_per_A": 1e3 * eff["fhi_al_final_mae"],
           # N_max / labels at which fhi_al reached the largest baseline if it did; else the labels the baseline
           # needs for fhi_al's final error (interpolated) / fhi_al's labels
           "ratio_forces": eff["ratio"] or eff["equivalent_ratio"],
           "reached_largest_baseline": eff["ratio"] is not None,
           "ratio_energy": report["efficiency_energy"]["equivalent_ratio"],
           "spearman": report["calibration_analysis"].get("spearman_max_error"),
           "baseline_sizes": sorted({r["n_labels"] for r in report["baseline"]}),
           "seeds": len({r["seed"] for r in report["baseline"]}), "test_frames": report["n_test_frames"]}
    retrained = report.get("fhi_al_data_retrained")
    if retrained:
        sizes, means, _ = baseline_means(report["baseline"], "forces_mae")
        equivalent, _ = equivalent_baseline_labels(sizes, means, retrained["forces_mae"])
        row.update(retrained_forces_mae_meV_per_A=1e3 * retrained["forces_mae"],
                   ratio_forces_retrained=equivalent / max(retrained["n_labels"], 1))
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 2.2), sharey=True)
    y = np.arange(len(rows))
    left.barh(y + 0.2, [r["ratio_forces"] for r in rows], height=0.4, color="tab:blue",
              label="fhi_al ensemble as trained (warm start)")
    left.barh(y - 0.2, [r.get("ratio_forces_retrained", np.nan) for r in rows], height=0.4, color="tab:green",
              label="fhi_al's data, retrained from scratch")
    left.axvline(1.0, color="grey", lw=1)
    left.axvline(TARGET_RATIO, color="tab:red", ls="--", lw=1, label=f"target {TARGET_RATIO:g}×")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("random-MD labels for the same force MAE / fhi_al labels\n(runs that reach the largest "
                    "baseline: its N / labels at which fhi_al reached its error)")
    left.set_yticks(y, [f"{r['run']}  ({r['labels']} labels, {r['forces_mae_meV_per_A']:.0f} meV/Å)" for r in rows],
                    fontsize=8)
    left.legend(fontsize=8, loc="lower right")
    right.barh(y, [r["spearman"] if r["spearman"] is not None else np.nan for r in rows], color="tab:purple")
    right.axvline(TARGET_SPEARMAN, color="tab:red", ls="--", lw=1, label=f"target {TARGET_SPEARMAN:g}")
    right.set_xlim(0, 1)
    right.set_xlabel("Spearman: uncertainty vs true max force error (analysis mode)")
    right.legend(fontsize=8, loc="lower right")
    for axis in (left, right):
        axis.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    rows = [row for path in sorted(RESULTS.glob("learning_efficiency_*.json"))
            if not path.name.startswith(("learning_efficiency_baseline_", NAME)) for row in [row_of(path)] if row]
    if not rows:
        sys.stderr.write("no learning-efficiency reports in scripts/results/\n")
        return 1
    rows.sort(key=lambda r: (r["run"].split()[0], "quick" in r["run"], r["run"]))
    (RESULTS / f"{NAME}.json").write_text(json.dumps(rows, indent=1) + "\n")
    png = RESULTS / f"{NAME}.png"
    plot(rows, png)
    FIGS.mkdir(exist_ok=True)
    shutil.copy(png, FIGS / png.name)
    for row in rows:
        sys.stdout.write(f"{row['run']:45s} labels {row['labels']:4d}  forces {row['forces_mae_meV_per_A']:5.1f} "
                         f"meV/Å  ratio {row['ratio_forces']:.2f}  retrained "
                         f"{row.get('ratio_forces_retrained', float('nan')):.2f}  spearman {row['spearman']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
