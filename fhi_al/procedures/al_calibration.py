"""Active learning's calibrated uncertainty: the ensemble's force spread scaled per system to an expected force
error in eV/Å (fhi_al.calibration), refitted on the validation labels at the start and after every training,
kept in the restart record and written to results/calibration.json with one plot per system at the end.

Until a system has been calibrated (no validation frame of it yet) its values are the raw spread (scale 1):
the log says so, and an absolute threshold then compares the raw spread with threshold_eV_per_A.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..calibration import CalibrationFit, CalibrationMap, calibrate, plot_calibration, write_calibration
from ..logs import DETAIL
from ..systems import System
from .system_metrics import frames_by_system

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
MIN_FRAMES = 1  # a system is calibrated from its first validation frame on (its atoms are the sample)


class AlCalibration:
    """The calibration map of a run, refitted on the validation frames."""

    def __init__(self, results_dir: Path, systems: Sequence[System], saved: dict[str, Any] | None):
        self.results_dir = Path(results_dir)
        self.systems = list(systems)
        self.map = CalibrationMap.from_state_dict(saved) if saved else CalibrationMap()
        self.fits: dict[str, CalibrationFit] = {}
        self.warned: set[str] = set()

    def refit(self, calc: Calculator, valid_frames: Sequence[Atoms], *, labels: int, stage: str = "al",
              plot: bool = False) -> dict[str, CalibrationFit]:
        grouped = {name: frames for name, frames in frames_by_system(valid_frames, self.systems).items() if frames}
        if not grouped:
            return {}
        self.fits = calibrate(calc, grouped, min_frames=MIN_FRAMES)
        self.map.update(self.fits)
        write_calibration(self.results_dir / CALIBRATION_FILE, self.fits, stage=stage, labels=labels)
        for name, fit in self.fits.items():
            log.info("calibration of %s: expected force error = %.2f × ensemble spread (%d validation frames; 95 %% "
                     "interval covers %.0f %% of the errors)", name, fit.scale, fit.n_frames, 100 * fit.coverage_95,
                     extra=DETAIL)
        if plot:
            self.plot()
        return self.fits

    def plot(self) -> None:
        for name, fit in self.fits.items():
            suffix = "" if len(self.systems) == 1 else f"_{name}"
            plot_calibration(self.results_dir / f"calibration{suffix}.png", fit.spread_eV_per_A, fit.error_eV_per_A,
                             fit)

    def calibrated(self, raw_eV_per_A: float, system: str) -> float:
        """The expected force error of a raw spread; the raw spread itself before the system's first fit."""
        value = self.map.calibrated(raw_eV_per_A, system)
        if value is None:
            if system not in self.warned:
                self.warned.add(system)
                log.warning("no calibration for %s yet (no validation label of it): its uncertainty is the raw "
                            "ensemble spread until the first one", system)
            return float(raw_eV_per_A)
        return float(value)

    def summary(self) -> str:
        parts = [f"{name}: ×{fit.scale:.2f}, 68 % / 95 % intervals cover {100 * fit.coverage_68:.0f} % / "
                 f"{100 * fit.coverage_95:.0f} %" for name, fit in self.fits.items()]
        return "; ".join(parts)

    def state_dict(self) -> dict[str, Any]:
        return self.map.state_dict()


def energy_spread_per_sqrt_atom(calc: Calculator, frames: Sequence[Atoms]) -> list[float]:
    """The members' energy standard deviation divided by √N on each frame (eV), for the uncertainty bias width."""
    frames = [frame.copy() for frame in frames]
    results = calc.calculate_batch(frames) if hasattr(calc, "calculate_batch") else []
    if not results:
        for frame in frames:
            frame.calc = calc
            frame.get_potential_energy()
            results.append(dict(calc.results))
    return [float(np.std(r["energy_comm"])) / np.sqrt(len(frame)) for r, frame in zip(results, frames)]
