"""Summary of the full learning-efficiency runs in scripts/results/, each measured against the random-frame
baselines of its molecule at the benchmark's current budget (37,500 structure-epochs per member; not converged
at N = 500: ethanol's N = 500 reaches 16.3 meV/Å at this budget's 75 epochs and 11.6 after 200).

For every run: the reference calls random reference-MD frames need for the error fhi_al's delivered ensemble
reached, divided by the calls fhi_al paid (target >= 20x), the same for fhi_al's final data retrained from
scratch at the baselines' budget, the retrained data's worth in random frames per label (target >= 2x), and
the uncertainty calibration of analysis mode (target >= 0.6).

Reports whose baselines were trained with an earlier, smaller budget are placed on the current-budget baseline of
their molecule by their delivered error (which does not depend on the baseline); their "retrained" figures were
trained with that smaller budget and are left out, except where bench_data_quality retrained the same run's data
with the current protocol. Quick runs (a different baseline configuration) are left out. A run whose final
training and data were also trained to convergence, with random frames trained the same way (bench_final_training
and bench_data_quality with --random-sizes), gets a second row, "at convergence", measured against those random
frames. Writes scripts/results/learning_efficiency_summary.{json,png} and copies the plot to readme_figs/.

    .venv/bin/python scripts/plot_learning_efficiency_summary.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning_efficiency import FULL, baseline_means, equivalent_baseline_labels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
FIGS = REPO / "readme_figs"
NAME = "learning_efficiency_summary"
TARGET_CALL_RATIO, TARGET_DATA_RATIO, TARGET_SPEARMAN = 20.0, 2.0, 0.6
BUDGET = FULL["structure_epochs"]
CALL_AXIS, DATA_AXIS = (1.0, 60.0), (0.2, 3.0)  # ratios below an axis' start are drawn at its edge, with their value


def current_baseline(molecule: str, reference: str, temperature_K: float) -> list[dict] | None:
    """Seed-0 rows of the molecule's current-budget baseline cache, or None when it has not been trained."""
    path = (RESULTS / f"learning_efficiency_baseline_{molecule}_{reference}_{temperature_K:g}K_"
                      f"min{FULL['min_epochs']}ep_se{BUDGET}.json")
    if not path.is_file():
        return None
    return [r for r in json.loads(path.read_text()) if r["seed"] == 0]


def control_report(report_path: Path, control: str) -> Path:
    """The report of a control script (data_quality, final_training) on the run of a benchmark report."""
    return RESULTS / f"{control}{report_path.name.removeprefix('learning_efficiency')}"


def retrained_by_control(report_path: Path) -> float | None:
    """The run's data retrained by bench_data_quality (same protocol as the current baselines), if done."""
    path = control_report(report_path, "data_quality")
    if not path.is_file():
        return None
    control = json.loads(path.read_text())
    if control["protocol"]["structure_epochs"] != BUDGET:
        return None
    return control["data_quality"]["sets"]["fhi_al final data"]["kept_weights"]["forces_mae"]


def converged_row(path: Path, row: dict) -> dict | None:
    """The row of the run at convergence: its final training converged as the tool's default and its data
    retrained from scratch to convergence (bench_final_training), against random frames trained the same way."""
    control = control_report(path, "final_training")
    if not control.is_file():
        return None
    final = json.loads(control.read_text())
    warm, scratch = final.get("warm_equivalent"), final.get("scratch_equivalent")
    if not warm or not scratch:  # the random frames of the control are not converged ones
        return None
    paid, stride = row["reference_calls"], row["stride_steps"]
    return {**{k: row[k] for k in ("labels", "reference_calls", "stride_steps", "spearman")},
            "run": f"{row['run']} at convergence", "file": control.name,
            "random_sizes": warm["random_sizes"], "random_forces_mae_meV_per_A": [
                1e3 * mae for mae, _ in sorted(final["random_frames"])[::-1]],
            "delivered_forces_mae_meV_per_A": 1e3 * final["warm"]["kept_weights"]["forces_mae"],
            "delivered_random_frames_equivalent": warm["random_frames"],
            "call_ratio_delivered": warm["random_frames"] * stride / paid,
            "retrained_forces_mae_meV_per_A": 1e3 * final["scratch"]["kept_weights"]["forces_mae"],
            "retrained_random_frames_equivalent": scratch["random_frames"],
            "call_ratio_retrained": scratch["random_frames"] * stride / paid,
            "data_ratio_retrained": scratch["random_frames"] / row["labels"]}


def calls_to_reach(curve: list[dict], mae: float) -> int | None:
    return next((row["reference_calls"] for row in curve if row["forces_mae"] <= mae), None)


def row_of(path: Path) -> dict | None:
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or "efficiency_calls" not in report or report["quick"]:
        return None
    base = current_baseline(report["molecule"], report["reference"], report["temperature_K"])
    if base is None:
        return None
    sizes, maes, _ = baseline_means(base, "forces_mae")
    calls = report["efficiency_calls"]
    stride = calls["baseline_stride_steps"]
    labels = report["efficiency_forces"]["fhi_al_final_labels"]
    delivered = calls["fhi_al_final_mae"]
    equivalent, extrapolated = equivalent_baseline_labels(sizes, maes, delivered)
    reached = calls_to_reach(report["fhi_al"], float(maes[-1]))
    row = {"run": f"{report['molecule']} [{report.get('variant') or 'default'}]", "file": path.name,
           "labels": labels, "reference_calls": calls["fhi_al_final_calls"], "stride_steps": stride,
           "baseline_sizes": sizes.tolist(), "baseline_forces_mae_meV_per_A": (1e3 * maes).tolist(),
           "delivered_forces_mae_meV_per_A": 1e3 * delivered,
           "delivered_random_frames_equivalent": equivalent, "delivered_extrapolated": extrapolated,
           "call_ratio_delivered": equivalent * stride / calls["fhi_al_final_calls"],
           "calls_to_largest_baseline_error": reached,
           "call_ratio_at_largest_baseline": (int(sizes[-1]) * stride / reached) if reached else None,
           "spearman": report["calibration_analysis"].get("spearman_max_error")}
    retrained, source = None, None
    if report["baseline_config"]["structure_epochs"] == BUDGET and report.get("fhi_al_data_retrained"):
        retrained, source = report["fhi_al_data_retrained"]["forces_mae"], "benchmark"
    elif (control := retrained_by_control(path)) is not None:
        retrained, source = control, "bench_data_quality"
    if retrained is not None:
        equivalent, extrapolated = equivalent_baseline_labels(sizes, maes, retrained)
        row.update(retrained_forces_mae_meV_per_A=1e3 * retrained, retrained_by=source,
                   retrained_random_frames_equivalent=equivalent, retrained_extrapolated=extrapolated,
                   call_ratio_retrained=equivalent * stride / calls["fhi_al_final_calls"],
                   data_ratio_retrained=equivalent / labels)
    return row


def bar_text(value: float, axis_kind: str) -> str:
    """A bar's label: call ratios with one decimal (19.9x is not 20x), data ratios and Spearman with two."""
    if axis_kind == "calls":
        return f"{value:.1f}×" if value >= 1 else f"{value:.2g}×"
    return f"{value:.2f}×" if axis_kind == "data" else f"{value:.2f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (calls, data, rank) = plt.subplots(1, 3, figsize=(15, 0.55 * len(rows) + 2.8), sharey=True,
                                            gridspec_kw={"width_ratios": [1.3, 1, 0.7]})
    y = np.arange(len(rows))
    get = lambda key: [r.get(key) if r.get(key) is not None else np.nan for r in rows]  # noqa: E731
    calls.barh(y + 0.2, get("call_ratio_delivered"), height=0.4, color="tab:blue", label="delivered ensemble")
    calls.barh(y - 0.2, get("call_ratio_retrained"), height=0.4, color="tab:green",
               label="its data retrained from scratch")
    calls.axvline(TARGET_CALL_RATIO, color="tab:red", ls="--", lw=1, label=f"target {TARGET_CALL_RATIO:g}×")
    calls.set_xlabel("reference calls of random-frame reference MD for the same test force MAE\n"
                     "/ reference calls fhi_al paid")
    data.barh(y, get("data_ratio_retrained"), height=0.5, color="tab:green")
    data.axvline(1.0, color="grey", lw=1)
    data.axvline(TARGET_DATA_RATIO, color="tab:red", ls="--", lw=1, label=f"target {TARGET_DATA_RATIO:g}×")
    data.set_xlabel("random frames of equal error / fhi_al labels\n(data retrained from scratch)")
    rank.barh(y, get("spearman"), height=0.5, color="tab:purple")
    rank.axvline(TARGET_SPEARMAN, color="tab:red", ls="--", lw=1, label=f"target {TARGET_SPEARMAN:g}")
    rank.set_xlim(0, 1)
    rank.set_xlabel("Spearman: uncertainty vs true\nlargest force error (analysis mode)")
    calls.set_yticks(y, [f"{r['run']}\n{r['labels']} labels, {r['reference_calls']} calls, "
                         f"{r['delivered_forces_mae_meV_per_A']:.1f} meV/Å" for r in rows], fontsize=8)
    for axis in (calls, data):
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    calls.set_xlim(*CALL_AXIS)
    data.set_xlim(*DATA_AXIS)
    calls.set_xticks([1, 2, 5, 10, 20, 50])
    data.set_xticks([0.25, 0.5, 1, 2, 3])
    for axis, kind, keys, offsets in ((calls, "calls", ("call_ratio_delivered", "call_ratio_retrained"), (0.2, -0.2)),
                                      (data, "data", ("data_ratio_retrained",), (0.0,)),
                                      (rank, "rank", ("spearman",), (0.0,))):
        low = axis.get_xlim()[0]
        for key, offset in zip(keys, offsets):
            for i, value in enumerate(get(key)):
                if not np.isnan(value):
                    axis.text(max(value, low), i + offset, f" {bar_text(value, kind)}", va="center", fontsize=7)
        axis.grid(True, axis="x", which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    fig.suptitle(f"fhi_al against random reference-MD frames, baselines at {BUDGET:,} structure-epochs per member "
                 "(N = 500: 75 epochs, not converged); rows 'at convergence': all models trained to convergence",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    reports = sorted(p for p in RESULTS.glob("learning_efficiency_*.json")
                     if not p.name.startswith(("learning_efficiency_baseline_", "learning_efficiency_decorrelation_",
                                               NAME)))
    rows = [row for path in reports for row in [row_of(path)] if row]
    rows += [converged for row in list(rows) for converged in [converged_row(RESULTS / row["file"], row)] if converged]
    if not rows:
        sys.stderr.write("no full learning-efficiency report with a baseline at the current budget in "
                         "scripts/results/\n")
        return 1
    rows.sort(key=lambda r: (r["run"].split()[0], r["run"]))
    left_out = sorted({p.name for p in reports} - {r["file"] for r in rows})
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"baseline_structure_epochs": BUDGET, "runs": rows,
                                                      "left_out": left_out}, indent=1) + "\n")
    png = RESULTS / f"{NAME}.png"
    plot(rows, png)
    FIGS.mkdir(exist_ok=True)
    shutil.copy(png, FIGS / png.name)
    fmt = lambda v, spec: format(v, spec) if v is not None else "–"  # noqa: E731
    for r in rows:
        sys.stdout.write(f"{r['run']:42s} {r['labels']:4d} labels {r['reference_calls']:5d} calls  delivered "
                         f"{r['delivered_forces_mae_meV_per_A']:5.1f} meV/Å ({r['call_ratio_delivered']:5.1f}x)  "
                         f"retrained {fmt(r.get('retrained_forces_mae_meV_per_A'), '5.1f')} "
                         f"({fmt(r.get('call_ratio_retrained'), '5.1f')}x calls, "
                         f"{fmt(r.get('data_ratio_retrained'), '4.2f')}x data)  spearman {fmt(r['spearman'], '.2f')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
