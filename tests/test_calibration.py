"""Calibrated force uncertainty: the scale fit recovers a known scale, coverage and reliability behave as the
Gaussian model says, the per-atom errors of a stand-in ensemble match a direct computation, and the state,
JSON history and plot survive their round trips."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron

from fhi_al import calibration
from fhi_al.calibration import (CalibrationFit, CalibrationMap, calibrate, coverage, fit_scale, interval_factor,
                                miscalibration_area, per_atom_errors, plot_calibration, write_calibration)
from fhi_al.labeling.label import REF_FORCES_KEY

TRUE_SCALE = 2.5


def gaussian_errors(rng: np.random.Generator, n_atoms: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Spreads log-uniform in [1 meV/Å, 1 eV/Å] and errors |N(0, (scale * spread)^2 / 3 * I_3)|."""
    spread = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), n_atoms))
    vectors = rng.normal(size=(n_atoms, 3)) * (scale * spread / np.sqrt(3.0))[:, None]
    return spread, np.linalg.norm(vectors, axis=1)


def test_the_fit_recovers_a_known_scale_and_calibrates_the_coverage(rng):
    spread, error = gaussian_errors(rng, 20000, TRUE_SCALE)
    scale = fit_scale(spread, error)
    assert scale == pytest.approx(TRUE_SCALE, rel=0.03)
    assert coverage(spread, error, scale, 0.68) == pytest.approx(0.68, abs=0.03)
    assert coverage(spread, error, scale, 0.95) == pytest.approx(0.95, abs=0.03)
    assert coverage(spread, error, 1.0, 0.95) < 0.5  # the raw spread is 2.5x too small
    before, after = miscalibration_area(spread, error, 1.0), miscalibration_area(spread, error, scale)
    assert after < 0.03
    assert before > 0.2 and after < before / 5


def test_a_scale_fitted_on_one_set_holds_on_fresh_data(rng):
    scale = fit_scale(*gaussian_errors(rng, 300, TRUE_SCALE))  # a few validation frames' worth
    spread, error = gaussian_errors(rng, 20000, TRUE_SCALE)
    assert coverage(spread, error, scale, 0.95) == pytest.approx(0.95, abs=0.04)


def test_interval_factor_is_the_chi_square_quantile_and_coverage_grows_with_p(rng):
    assert interval_factor(0.95) ** 2 * 3 == pytest.approx(7.8147, abs=1e-3)
    assert interval_factor(0.68) ** 2 * 3 == pytest.approx(3.5059, abs=1e-3)
    spread, error = gaussian_errors(rng, 2000, TRUE_SCALE)
    levels = np.linspace(0.05, 0.95, 19)
    observed = [coverage(spread, error, TRUE_SCALE, p) for p in levels]
    assert np.all(np.diff(observed) >= 0) and observed[-1] > observed[0]
    assert np.all(np.diff([interval_factor(p) for p in levels]) > 0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            interval_factor(bad)


def test_the_scale_is_dimensionless_and_linear_in_the_error(rng):
    spread, error = gaussian_errors(rng, 500, TRUE_SCALE)
    scale = fit_scale(spread, error)
    assert fit_scale(7.0 * spread, 7.0 * error) == pytest.approx(scale, rel=1e-12)
    assert fit_scale(spread, 3.0 * error) == pytest.approx(3.0 * scale, rel=1e-12)
    assert fit_scale(spread, error) == pytest.approx(np.sqrt(np.mean((error / spread) ** 2)), rel=1e-12)


def test_bad_input_is_refused_and_a_zero_spread_is_floored():
    for spread, error in (([], []), ([0.1, 0.2], [0.1]), ([0.1, np.nan], [0.1, 0.1]), ([-0.1], [0.1])):
        with pytest.raises(ValueError):
            fit_scale(spread, error)
    assert math.isfinite(fit_scale([0.0, 0.1], [0.0, 0.1]))
    assert fit_scale([0.0], [1e-6]) == pytest.approx(1.0)  # spread raised to the 1e-6 eV/Å floor


class PerturbedEMTEnsemble(Calculator):
    """Two 'members': EMT on the positions stretched and shrunk by 1 % about the centre, as forces_comm."""

    implemented_properties = ["energy", "forces", "forces_comm"]
    factors = (1.01, 0.99)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = [], []
        for factor in self.factors:
            member = self.atoms.copy()
            centre = member.get_center_of_mass()
            member.positions = centre + factor * (member.positions - centre)
            member.calc = EMT()
            energies.append(member.get_potential_energy())
            forces.append(member.get_forces())
        self.results = {"energy": float(np.mean(energies)), "forces": np.mean(forces, axis=0),
                        "forces_comm": np.array(forces)}


def labelled_clusters(rng: np.random.Generator, count: int) -> list:
    """Rattled Cu clusters of 13 and 55 atoms with EMT forces as REF_forces and a SinglePointCalculator
    of their own (zeros) that must survive the evaluation."""
    frames = []
    for index in range(count):
        atoms = Icosahedron("Cu", 2 + index % 2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        reference = atoms.copy()
        reference.calc = EMT()
        atoms.arrays[REF_FORCES_KEY] = reference.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    return frames


def direct_errors(frames: list) -> tuple[np.ndarray, np.ndarray]:
    spreads, errors = [], []
    for frame in frames:
        members = PerturbedEMTEnsemble()
        members.calculate(frame.copy())
        comm = members.results["forces_comm"]
        mean = comm.mean(axis=0)
        spreads.append(np.sqrt(np.mean(np.sum((comm - mean) ** 2, axis=2), axis=0)))
        errors.append(np.linalg.norm(mean - frame.arrays[REF_FORCES_KEY], axis=1))
    return np.concatenate(spreads), np.concatenate(errors)


def test_per_atom_errors_of_a_stand_in_ensemble_match_numpy(rng):
    frames = labelled_clusters(rng, 3)
    before = [(frame.calc, set(frame.arrays), frame.positions.copy(), frame.arrays[REF_FORCES_KEY].copy())
              for frame in frames]
    spread, error = per_atom_errors(PerturbedEMTEnsemble(), frames)
    expected_spread, expected_error = direct_errors(frames)
    assert spread.shape == error.shape == (13 + 55 + 13,)
    np.testing.assert_allclose(spread, expected_spread, rtol=1e-12)
    np.testing.assert_allclose(error, expected_error, rtol=1e-12)
    assert not np.allclose(spread, error)  # the two quantities are not confused
    for frame, (calc, keys, positions, reference) in zip(frames, before):
        assert frame.calc is calc and set(frame.arrays) == keys
        np.testing.assert_array_equal(frame.positions, positions)
        np.testing.assert_array_equal(frame.arrays[REF_FORCES_KEY], reference)
        np.testing.assert_array_equal(frame.get_forces(), 0.0)
    del frames[1].arrays[REF_FORCES_KEY]
    with pytest.raises(ValueError, match="frame 1"):
        per_atom_errors(PerturbedEMTEnsemble(), frames)


def test_calibrate_fits_each_system_with_enough_frames(rng):
    frames = {"small": labelled_clusters(rng, 3), "one": labelled_clusters(rng, 1)}
    fits = calibrate(PerturbedEMTEnsemble(), frames, min_frames=2)
    assert list(fits) == ["small"]
    fit = fits["small"]
    assert (fit.n_frames, fit.n_atoms) == (3, 81)
    assert fit.scale == pytest.approx(fit_scale(*direct_errors(frames["small"])), rel=1e-12)
    assert fit.miscalibration_area <= fit.miscalibration_area_raw
    assert fit.spread_eV_per_A.shape == fit.error_eV_per_A.shape == (81,)
    assert -1.0 <= fit.spearman <= 1.0


def synthetic_fit(rng, system: str = "water", scale: float = TRUE_SCALE, n_atoms: int = 600) -> CalibrationFit:
    spread, error = gaussian_errors(rng, n_atoms, scale)
    return CalibrationFit.from_arrays(system, spread, error, n_frames=n_atoms // 3)


def test_the_map_is_none_before_a_fit_and_survives_its_state_dict(rng):
    calibration_map = CalibrationMap()
    assert calibration_map.scale("water") is None and calibration_map.calibrated(0.1, "water") is None
    fit = synthetic_fit(rng)
    calibration_map.update({"water": fit})
    assert calibration_map.calibrated(0.1, "water") == pytest.approx(0.1 * fit.scale)
    calibration_map.update({"ice": synthetic_fit(rng, "ice", scale=1.5)})
    assert calibration_map.scale("water") == fit.scale  # an update keeps the other systems' fits
    state = json.loads(json.dumps(calibration_map.state_dict(), allow_nan=False))
    restored = CalibrationMap.from_state_dict(state)
    assert restored.fits == calibration_map.fits
    assert restored.calibrated(0.2, "ice") == calibration_map.calibrated(0.2, "ice")
    with pytest.raises(ValueError, match="version"):
        CalibrationMap.from_state_dict({**state, "version": 99})


def test_a_nan_spearman_round_trips_as_null():
    fit = CalibrationFit.from_arrays("dimer", [0.1, 0.1], [0.2, 0.1], n_frames=1)
    assert math.isnan(fit.spearman) and fit.as_record()["spearman"] is None
    assert math.isnan(CalibrationFit.from_record(fit.as_record()).spearman)


def test_write_calibration_keeps_the_history_of_the_scale(rng, tmp_path):
    path = tmp_path / "results" / "calibration.json"
    first = {"water": synthetic_fit(rng, scale=3.0)}
    second = {"water": synthetic_fit(rng, scale=2.0), "ice": synthetic_fit(rng, "ice")}
    write_calibration(path, first, stage="active_learning", labels=10)
    write_calibration(path, second, stage="active_learning", labels=20)
    write_calibration(path, second, stage="active_learning", labels=20)  # a restart redoing the refit
    saved = json.loads(path.read_text())
    assert saved["model"] == "scale factor, u = k·spread, Gaussian error components"
    assert saved["labels"] == 20 and saved["stage"] == "active_learning"
    assert set(saved["systems"]) == {"water", "ice"}
    assert saved["systems"]["ice"] == second["ice"].as_record()
    assert saved["interval_factors"]["95"] == pytest.approx(interval_factor(0.95))
    assert [entry["labels"] for entry in saved["history"]] == [10, 20]
    scales = [entry["systems"]["water"]["scale"] for entry in saved["history"]]
    assert scales == [first["water"].scale, second["water"].scale] and scales[0] > scales[1]


def test_plot_calibration_writes_a_png(rng, tmp_path):
    fit = synthetic_fit(rng)
    path = tmp_path / "calibration_water.png"
    plot_calibration(path, fit.spread_eV_per_A, fit.error_eV_per_A, fit)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_module_imports_only_lower_layers():
    tree = ast.parse(Path(calibration.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
                 if alias.name.startswith("fhi_al")}
    assert imported <= {"durable", "uncertainty", "errors"}, imported
    assert calibration.REF_FORCES_KEY == REF_FORCES_KEY
