"""Calibrated ensemble force uncertainty: the raw per-atom spread turned into an expected force error in eV/Å.

The ensemble's raw per-atom uncertainty is the spread s_i = sqrt(mean over members |F_m,i - F_mean,i|^2)
(`fhi_al.uncertainty.per_atom_force_spread`). The calibrated uncertainty is u_i = k * s_i, one scale factor k
per system, fitted on labelled validation frames. u_i is the RMS of the norm of the per-atom force error
|dF_i| = |F_mean,i - F_ref,i|: the model says each Cartesian component of dF_i is N(0, u_i^2 / 3), so
|dF_i|^2 / (u_i^2 / 3) is chi-square with 3 degrees of freedom, and |dF_i| <= u_i * interval_factor(p) holds
with probability p. Maximum likelihood gives the closed form k^2 = mean_i(|dF_i|^2 / s_i^2).

Why one scale factor and not a richer map:
- one parameter is stable with the handful of validation frames a run has early on; isotonic regression or
  conformal maps need far more data before they say anything reliable;
- it is monotone: the ranking of frames by uncertainty (which decides what is labelled) is kept, and it
  commutes with the per-frame max reduction, so a calibrated frame uncertainty is k x the raw one;
- it keeps a threshold in eV/Å meaningful across systems and across refits.

Spreads below `SPREAD_FLOOR_EV_PER_A` (1e-6 eV/Å) are raised to it wherever a spread divides or scales
(fit, coverage, plots): an atom on which all members agree exactly (often a symmetric site whose force is
zero by symmetry, so its error is ~0 too) must not divide by zero. An atom with a tiny spread and a large
error still pulls k up strongly: that is what the likelihood says, and what the reliability plot shows.

`calibrate` fits every system's validation frames; `CalibrationMap` keeps the latest scale of each system
for active learning (saved in the restart record); `write_calibration` and `plot_calibration` report it.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .durable import atomic_write_bytes, atomic_write_json, read_json
from .uncertainty import per_atom_force_spread

log = logging.getLogger(__name__)

SPREAD_FLOOR_EV_PER_A = 1e-6
REF_FORCES_KEY = "REF_forces"  # Atoms.arrays, eV/Å: fhi_al.labeling.label.REF_FORCES_KEY
MODEL_FORM = "scale factor, u = k·spread, Gaussian error components"
LEVELS = np.linspace(0.01, 0.99, 99)  # expected coverages of the reliability curve
SCORES = ("coverage_68_raw", "coverage_68", "coverage_95_raw", "coverage_95", "miscalibration_area_raw",
          "miscalibration_area", "spearman")  # CalibrationFit's numbers besides the scale and the counts
STATE_VERSION = 1
FILE_VERSION = 1


def _checked(spread_eV_per_A: Any, error_eV_per_A: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as flat float arrays of the same, non-zero length, finite and non-negative (else ValueError)."""
    spread = np.asarray(spread_eV_per_A, dtype=float).reshape(-1)
    error = np.asarray(error_eV_per_A, dtype=float).reshape(-1)
    if spread.size == 0 or spread.shape != error.shape:
        raise ValueError(f"spread and error need the same non-zero number of atoms, got {spread.size} and "
                         f"{error.size}")
    if not (np.isfinite(spread).all() and np.isfinite(error).all()) or (spread < 0).any() or (error < 0).any():
        raise ValueError("spread and error must be finite and non-negative")
    return spread, error


def _floored(spread: np.ndarray) -> np.ndarray:
    return np.maximum(spread, SPREAD_FLOOR_EV_PER_A)


def fit_scale(spread_eV_per_A: Any, error_eV_per_A: Any) -> float:
    """Maximum-likelihood scale k of u = k * spread: k = sqrt(mean(|dF|^2 / spread^2)), spreads floored at
    SPREAD_FLOOR_EV_PER_A. Dimensionless; ValueError for empty or mismatched input."""
    spread, error = _checked(spread_eV_per_A, error_eV_per_A)
    return float(np.sqrt(np.mean((error / _floored(spread)) ** 2)))


def interval_factor(p: float) -> float:
    """f with P(|dF| <= u * f) = p under the model (three Gaussian components of variance u^2 / 3):
    sqrt(chi2.ppf(p, 3) / 3); f(0.68) ~ 1.07, f(0.95) ~ 1.61."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a coverage level must be between 0 and 1, got {p}")
    from scipy.stats import chi2

    return float(np.sqrt(chi2.ppf(p, 3) / 3.0))


def _observed(spread: np.ndarray, error: np.ndarray, scale: float, levels: Sequence[float]) -> np.ndarray:
    if not (math.isfinite(scale) and scale >= 0.0):
        raise ValueError(f"the scale must be finite and non-negative, got {scale}")
    factors = np.array([interval_factor(p) for p in levels])
    bounds = scale * _floored(spread)[:, None] * factors[None, :]
    return np.mean(error[:, None] <= bounds, axis=0)


def coverage(spread_eV_per_A: Any, error_eV_per_A: Any, scale: float, p: float) -> float:
    """Observed fraction of atoms whose error is within scale * spread * interval_factor(p) (ideal: p)."""
    spread, error = _checked(spread_eV_per_A, error_eV_per_A)
    return float(_observed(spread, error, scale, [p])[0])


def reliability_curve(spread_eV_per_A: Any, error_eV_per_A: Any, scale: float,
                      levels: Sequence[float] = LEVELS) -> np.ndarray:
    """Observed coverage at each expected coverage in `levels` (the diagonal when calibrated)."""
    spread, error = _checked(spread_eV_per_A, error_eV_per_A)
    return _observed(spread, error, scale, levels)


def miscalibration_area(spread_eV_per_A: Any, error_eV_per_A: Any, scale: float,
                        levels: Sequence[float] = LEVELS) -> float:
    """Mean |observed coverage - p| over `levels`: the area between the reliability curve and the diagonal
    (0 is perfect, 0.5 the worst)."""
    levels = np.asarray(levels, dtype=float)
    return float(np.mean(np.abs(reliability_curve(spread_eV_per_A, error_eV_per_A, scale, levels) - levels)))


def spearman(spread_eV_per_A: Any, error_eV_per_A: Any) -> float:
    """Spearman rank correlation of spread and error; nan (no warning) for fewer than 3 atoms or a constant."""
    spread, error = _checked(spread_eV_per_A, error_eV_per_A)
    if spread.size < 3 or np.ptp(spread) == 0.0 or np.ptp(error) == 0.0:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(spread, error).statistic)


def per_atom_errors(calc: Any, frames: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(raw spread, |ensemble mean force - REF force|) of every atom of the labelled `frames`, in eV/Å,
    concatenated in frame order. `calc` is an ASE calculator with the result `forces_comm` [M, N, 3] (e.g.
    fhi_al.ensemble.EnsembleCalculator); it evaluates a copy of each frame, so the frames keep their own
    calculators. A frame without arrays["REF_forces"] is a ValueError."""
    for index, frame in enumerate(frames):
        if REF_FORCES_KEY not in frame.arrays:
            raise ValueError(f"frame {index} has no {REF_FORCES_KEY}: only labelled frames can calibrate")
    spreads, errors = [], []
    for frame, results in zip(frames, _results(calc, frames)):
        spreads.append(per_atom_force_spread(results["forces_comm"]))
        mean_forces = np.asarray(results["forces"], dtype=float)
        errors.append(np.linalg.norm(mean_forces - np.asarray(frame.arrays[REF_FORCES_KEY], dtype=float), axis=1))
    if not spreads:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(spreads), np.concatenate(errors)


def _results(calc: Any, frames: Sequence[Any]) -> list[dict[str, Any]]:
    """The calculator's results for copies of `frames`: in one batched call where the calculator has one
    (`calculate_batch`, the ensemble calculator), else frame by frame."""
    copies = [frame.copy() for frame in frames]  # Atoms.copy leaves the calculator behind
    batch = getattr(calc, "calculate_batch", None)
    if batch is not None and copies:
        return list(batch(copies))
    results = []
    for atoms in copies:
        atoms.calc = calc
        calc.get_property("forces", atoms)  # raw results: no constraint is applied to calc.results
        results.append(dict(calc.results))
    return results


@dataclass
class CalibrationFit:
    """The scale of one system and how well it describes that system's validation errors. `*_raw` values
    use scale 1 (the uncalibrated spread); coverages are observed fractions at the 68 % and 95 % levels.
    The per-atom arrays of the fit travel along (not in the record) for `plot_calibration`."""

    system: str
    scale: float
    n_frames: int
    n_atoms: int
    coverage_68_raw: float
    coverage_68: float
    coverage_95_raw: float
    coverage_95: float
    miscalibration_area_raw: float
    miscalibration_area: float
    spearman: float
    spread_eV_per_A: np.ndarray | None = field(default=None, repr=False, compare=False)
    error_eV_per_A: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_arrays(cls, system: str, spread_eV_per_A: Any, error_eV_per_A: Any, *,
                    n_frames: int) -> CalibrationFit:
        spread, error = _checked(spread_eV_per_A, error_eV_per_A)
        scale = fit_scale(spread, error)
        return cls(system=str(system), scale=scale, n_frames=int(n_frames), n_atoms=int(spread.size),
                   coverage_68_raw=coverage(spread, error, 1.0, 0.68),
                   coverage_68=coverage(spread, error, scale, 0.68),
                   coverage_95_raw=coverage(spread, error, 1.0, 0.95),
                   coverage_95=coverage(spread, error, scale, 0.95),
                   miscalibration_area_raw=miscalibration_area(spread, error, 1.0),
                   miscalibration_area=miscalibration_area(spread, error, scale),
                   spearman=spearman(spread, error), spread_eV_per_A=spread, error_eV_per_A=error)

    def as_record(self) -> dict[str, Any]:
        """The JSON-ready numbers (nan as None), without the per-atom arrays."""
        record = {}
        for name in _RECORD_FIELDS:
            value = getattr(self, name)
            record[name] = None if isinstance(value, float) and math.isnan(value) else value
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CalibrationFit:
        """The fit of `as_record` (without the per-atom arrays)."""
        scores = {name: math.nan if record[name] is None else float(record[name]) for name in SCORES}
        return cls(system=str(record["system"]), scale=float(record["scale"]), n_frames=int(record["n_frames"]),
                   n_atoms=int(record["n_atoms"]), **scores)


_RECORD_FIELDS = ("system", "scale", "n_frames", "n_atoms") + SCORES


def calibrate(calc: Any, frames_by_system: Mapping[str, Sequence[Any]], *,
              min_frames: int = 1) -> dict[str, CalibrationFit]:
    """One CalibrationFit per system from its labelled (validation) frames, evaluated with `calc`; systems
    with fewer than `min_frames` frames are left out. Each fit carries its per-atom spread and error."""
    if min_frames < 1:
        raise ValueError(f"min_frames must be at least 1, got {min_frames}")
    fits = {}
    for system, frames in frames_by_system.items():
        if len(frames) < min_frames:
            log.debug("Calibration of %s: %d validation frames, fewer than %d; not fitted.", system, len(frames),
                     min_frames)
            continue
        spread, error = per_atom_errors(calc, frames)
        fit = CalibrationFit.from_arrays(system, spread, error, n_frames=len(frames))
        log.debug("Calibration of %s: scale %.3g from %d frames (%d atoms); 95%% coverage %.0f%% raw -> %.0f%%, "
                 "miscalibration area %.3f -> %.3f.", system, fit.scale, fit.n_frames, fit.n_atoms,
                 100 * fit.coverage_95_raw, 100 * fit.coverage_95, fit.miscalibration_area_raw,
                 fit.miscalibration_area)
        fits[str(system)] = fit
    return fits


class CalibrationMap:
    """The latest fit of each system: what active learning multiplies a raw uncertainty with. A system
    without a fit yet has no calibrated uncertainty (None), so the caller decides what to do before it."""

    def __init__(self) -> None:
        self.fits: dict[str, CalibrationFit] = {}

    def scale(self, system: str) -> float | None:
        fit = self.fits.get(str(system))
        return None if fit is None else fit.scale

    def update(self, fits: Mapping[str, CalibrationFit]) -> None:
        """Replace the fits of the systems in `fits`; the other systems keep theirs."""
        for system, fit in fits.items():
            self.fits[str(system)] = fit

    def calibrated(self, value_eV_per_A: float, system: str) -> float | None:
        """k x a raw uncertainty of `system` (a per-atom spread or its per-frame max or mean), in eV/Å."""
        scale = self.scale(system)
        return None if scale is None else scale * float(value_eV_per_A)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "fits": {system: fit.as_record() for system, fit in self.fits.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CalibrationMap:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"calibration state version {state.get('version')!r}, expected {STATE_VERSION}")
        calibration = cls()
        calibration.fits = {str(system): CalibrationFit.from_record(record)
                            for system, record in state["fits"].items()}
        return calibration


def _history_entry(fits: Mapping[str, CalibrationFit], stage: str, labels: int) -> dict[str, Any]:
    return {"stage": stage, "labels": int(labels),
            "systems": {system: {key: fit.as_record()[key] for key in ("scale", "n_frames", "n_atoms", "coverage_68",
                                                                          "coverage_95", "miscalibration_area")}
                        for system, fit in fits.items()}}


def _previous_history(path: Path) -> list[dict[str, Any]]:
    try:
        previous = read_json(path, default={})
    except ValueError:  # json.JSONDecodeError; atomic writes make this a foreign or hand-edited file
        log.warning("%s: unreadable; starting a new calibration history", path)
        return []
    history = previous.get("history") if isinstance(previous, dict) else None
    return list(history) if isinstance(history, list) else []


def write_calibration(path_json: str | os.PathLike, fits: Mapping[str, CalibrationFit], *, stage: str,
                      labels: int) -> None:
    """Atomically write every system's record, the model's form and the 68 %/95 % interval factors, with a
    `history` of all fits so far (read from the existing file; one entry per refit, with the labels count).
    A refit repeated with the same stage and labels (a restart redoing it) replaces its entry."""
    path = Path(path_json)
    history = _previous_history(path)
    entry = _history_entry(fits, stage, labels)
    if history and history[-1].get("stage") == entry["stage"] and history[-1].get("labels") == entry["labels"]:
        history[-1] = entry
    else:
        history.append(entry)
    atomic_write_json(path, {"version": FILE_VERSION, "model": MODEL_FORM, "stage": stage, "labels": int(labels),
                             "spread_floor_eV_per_A": SPREAD_FLOOR_EV_PER_A,
                             "interval_factors": {"68": interval_factor(0.68), "95": interval_factor(0.95)},
                             "systems": {system: fit.as_record() for system, fit in fits.items()},
                             "history": history})


def _save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    log.debug("wrote %s", path)


def _reliability_panel(axis: Any, spread: np.ndarray, error: np.ndarray, fit: CalibrationFit) -> None:
    levels = np.concatenate([[0.0], LEVELS, [1.0]])
    for scale, area, style, name in ((1.0, fit.miscalibration_area_raw, "--", "raw spread"),
                                     (fit.scale, fit.miscalibration_area, "-", f"calibrated (k = {fit.scale:.3g})")):
        observed = np.concatenate([[0.0], reliability_curve(spread, error, scale, LEVELS), [1.0]])
        axis.plot(levels, observed, style, label=f"{name}, area {area:.3f}")
    axis.plot([0, 1], [0, 1], ":", color="grey", lw=0.8, label="ideal")
    axis.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="expected coverage p",
             ylabel="observed coverage", title="(a) reliability")
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)


def _error_panel(axis: Any, spread: np.ndarray, error: np.ndarray, fit: CalibrationFit) -> None:
    u_meV_per_A = 1e3 * fit.scale * _floored(spread)
    error_meV_per_A = 1e3 * error
    shown = error_meV_per_A > 0  # log axes: an exact zero error cannot be drawn
    axis.loglog(u_meV_per_A[shown], error_meV_per_A[shown], "o", ms=2, alpha=0.4)
    positive = np.concatenate([u_meV_per_A[shown], error_meV_per_A[shown]])
    low, high = (positive.min() / 2, positive.max() * 2) if positive.size else (1e-3, 1e3)
    line = np.array([low, high])
    for p, style in ((0.68, "--"), (0.95, "-")):
        axis.plot(line, line * interval_factor(p), style, color="tab:red", lw=1,
                  label=f"{100 * p:.0f} % interval, u·{interval_factor(p):.2f}")
    axis.set(xlim=(low, high), ylim=(low, high), xlabel="calibrated uncertainty u (meV/Å)",
             ylabel="per-atom force error |ΔF| (meV/Å)",
             title=f"(b) inside the 68 % interval: {100 * fit.coverage_68:.0f} %, inside the 95 %: "
                   f"{100 * fit.coverage_95:.0f} %")
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)


def plot_calibration(path_png: str | os.PathLike, spread_eV_per_A: Any, error_eV_per_A: Any,
                     fit: CalibrationFit) -> None:
    """Two panels for one system: (a) expected vs observed coverage, raw and calibrated, with the diagonal;
    (b) per-atom |ΔF| against the calibrated u = k * spread on log axes with the 68 % and 95 % interval lines."""
    spread, error = _checked(spread_eV_per_A, error_eV_per_A)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reliability, errors) = plt.subplots(1, 2, figsize=(11, 5))
    _reliability_panel(reliability, spread, error, fit)
    _error_panel(errors, spread, error, fit)
    fig.suptitle(f"Force uncertainty calibration of {fit.system}: {fit.n_frames} frames, {fit.n_atoms} atoms, "
                 f"Spearman {fit.spearman:.2f}")
    try:
        _save_png(fig, Path(path_png))
    finally:
        plt.close(fig)
