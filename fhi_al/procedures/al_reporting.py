"""What active learning records as it goes (uncertainty checks, analysis points; durable JSON lines under
analysis/) and the plots drawn from those records: uncertainty traces with the threshold, labels per
trajectory, and the calibration of uncertainty against the true force error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..durable import append_durable, read_json_lines
from ..logs import DETAIL
from .reporting import _pyplot, save_figure

log = logging.getLogger(__name__)

CHECKS_FILE = "uncertainty_checks.jsonl"
ANALYSIS_FILE = "analysis.jsonl"
LABELLED = ("crossed", "forced", "blow-up")  # decisions that sent the frame to the reference


def append_check(folder: Path, trajectory: int, check: Any, decision: Any, *, extra: dict | None = None) -> None:
    """One uncertainty check; `extra` adds fields (calibrated uncertainty, bias energy and force)."""
    record = {"trajectory": trajectory, "md_step": check.md_step, "uncertainty": check.uncertainty_eV_per_A,
              "threshold": decision.threshold, "decision": decision.kind, **(extra or {})}
    append_durable(folder / CHECKS_FILE, json.dumps(record) + "\n")


def append_blow_up_label(folder: Path, trajectory: int, md_step: int) -> None:
    """A label requested because the trajectory kept blowing up (no uncertainty value: the frame exploded)."""
    record = {"trajectory": trajectory, "md_step": md_step, "uncertainty": None, "threshold": None,
              "decision": "blow-up"}
    append_durable(folder / CHECKS_FILE, json.dumps(record) + "\n")


def append_analysis(folder: Path, trajectory: int, check: Any, predicted_forces: np.ndarray,
                    reference_forces: np.ndarray, *, calibrated_eV_per_A: float | None = None) -> None:
    error = np.linalg.norm(np.asarray(predicted_forces) - np.asarray(reference_forces), axis=1)
    record = {"trajectory": trajectory, "md_step": check.md_step, "uncertainty": check.uncertainty_eV_per_A,
              "uncertainty_calibrated_eV_per_A": calibrated_eV_per_A,
              "true_error_max": float(error.max()), "true_error_mean": float(error.mean())}
    append_durable(folder / ANALYSIS_FILE, json.dumps(record) + "\n")


def calibrated_view(record: dict) -> tuple[float, float | None]:
    """(uncertainty, threshold) of a check as expected force errors in eV/Å: the calibrated value and the
    threshold scaled by the same factor (records written before calibration existed stay raw)."""
    raw, threshold = record["uncertainty"], record["threshold"]
    calibrated = record.get("uncertainty_calibrated_eV_per_A")
    if calibrated is None or not raw:
        return raw, threshold
    if record.get("threshold_mode") == "absolute":
        return calibrated, threshold
    return calibrated, None if threshold is None else threshold * calibrated / raw


def uncertainty_traces(folder: Path, path: Path) -> None:
    records = [r for r in read_json_lines(folder / CHECKS_FILE) if r["uncertainty"] is not None]
    if not records:
        return
    calibrated = all("uncertainty_calibrated_eV_per_A" in r for r in records)
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(9, 4))
    for index in sorted({r["trajectory"] for r in records}):
        mine = [r for r in records if r["trajectory"] == index]
        axis.plot([r["md_step"] for r in mine], [1e3 * calibrated_view(r)[0] for r in mine], lw=0.8,
                  label=f"trajectory {index}")
        labelled = [r for r in mine if r["decision"] in LABELLED]
        axis.plot([r["md_step"] for r in labelled], [1e3 * calibrated_view(r)[0] for r in labelled], "kx", ms=5)
    with_threshold = [r for r in records if r["threshold"] is not None]
    order = np.argsort([r["md_step"] for r in with_threshold], kind="stable")
    axis.plot([with_threshold[i]["md_step"] for i in order],
              [1e3 * calibrated_view(with_threshold[i])[1] for i in order], "r--", lw=1, label="threshold")
    axis.set_xlabel("MD step")
    axis.set_ylabel("expected force error (meV/Å)" if calibrated else "force uncertainty (meV/Å)")
    axis.set_title("Uncertainty along the MLFF trajectories (x: sent to the reference)")
    axis.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def labels_per_trajectory(folder: Path, path: Path) -> None:
    records = [r for r in read_json_lines(folder / CHECKS_FILE) if r["decision"] in LABELLED]
    if not records:
        return
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    for index in sorted({r["trajectory"] for r in records}):
        steps = sorted(r["md_step"] for r in records if r["trajectory"] == index)
        axis.step(steps, np.arange(1, len(steps) + 1), where="post", label=f"trajectory {index}")
    axis.set_xlabel("MD step")
    axis.set_ylabel("labels requested")
    axis.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def calibration(folder: Path, path: Path) -> float | None:
    """Scatter of uncertainty vs true force error; returns (and logs) their Spearman correlation."""
    records = read_json_lines(folder / ANALYSIS_FILE)
    if len(records) < 3:
        log.info("calibration: only %d analysis points; no plot", len(records), extra=DETAIL)
        return None
    from scipy.stats import spearmanr

    uncertainty = np.array([r["uncertainty"] for r in records])
    error = np.array([r["true_error_max"] for r in records])
    rho = float(spearmanr(uncertainty, error).statistic)
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5, 5))
    axis.loglog(1e3 * uncertainty, 1e3 * error, "o", ms=3, alpha=0.6)
    axis.set_xlabel("predicted force uncertainty (meV/Å)")
    axis.set_ylabel("true max force error (meV/Å)")
    axis.set_title(f"Calibration: Spearman ρ = {rho:.2f} ({len(records)} points)")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    low, high = axis.get_xlim()
    low, high = min(low, axis.get_ylim()[0]), max(high, axis.get_ylim()[1])
    axis.plot([low, high], [low, high], "--", color="grey", lw=0.8, label="error = uncertainty")
    axis.legend(fontsize=8, loc="upper left")
    for scale in (axis.xaxis, axis.yaxis):  # plain numbers at 1, 2, 5 x 10^n: several labels per decade
        scale.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        scale.set_major_formatter(FormatStrFormatter("%g"))
        scale.set_minor_formatter(NullFormatter())
    save_figure(fig, path)
    plt.close(fig)
    log.info("Uncertainty calibration: Spearman correlation %.2f over %d analysis points.", rho, len(records))
    return rho
