"""Metadynamics on collective variables: a history-dependent bias of Gaussian hills, plain or well-tempered,
added to the forces of any calculator.

Every `pace_steps` MD steps a hill of height h and widths σ is deposited at the current CV values s(R). The
bias is V(s) = Σ_hills h_k exp(−½ Σ_d (Δs_d / σ_d)²), with Δs wrapped into (−π, π] for a torsion, and its
forces on the atoms are −∇_R V(s(R)) = −Σ_d ∂V/∂s_d ∇_R s_d (chain rule).

Well-tempered metadynamics (biasfactor γ > 1) lowers each new hill to h exp(−V(s)/(k_B ΔT)) with
ΔT = T(γ − 1), so the bias converges instead of growing forever, and the free energy is
F(s) = −(γ/(γ − 1)) V(s) + const. Plain metadynamics (biasfactor None) keeps h and F(s) = −V(s) + const.

Defaults, for an active-learning MD of a few thousand steps of 0.5 fs on a small molecule that should leave a
torsional well ~0.6 eV deep. One hill of 0.02 eV and σ = 0.3 rad adds h σ √(2π) ≈ 0.015 eV·rad of bias;
a well ~2 rad wide and 0.6 eV deep holds ~0.6 eV·rad, so ~40 full hills fill it (more with the
well-tempered decay), i.e. ~1000-3000 steps at one hill per 25 steps (12.5 fs: enough for the molecule to
move away from the last hill between depositions, far shorter than the run). σ is about the thermal
spread of the CV in its well: 0.3 rad for a torsion, 0.15 rad for a stiffer bond angle, 0.1 Å for a
distance. A biasfactor of 20 puts the sampling temperature T γ near 6000 K at 300 K, i.e. k_B T γ ≈ 0.5 eV,
so barriers of the order of 0.6 eV are crossed repeatedly while the hills still shrink.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms, units

from ..durable import append_durable, atomic_write_text, read_json_lines
from ..settings.md_schema import DEFAULT_HILL_HEIGHT_eV as DEFAULT_HEIGHT_eV
from ..settings.md_schema import DEFAULT_PACE_STEPS, DEFAULT_SIGMA  # noqa: F401 - the settings' defaults, one source
from .colvars import CollectiveVariable, wrap_angle

log = logging.getLogger(__name__)

DEFAULT_BIASFACTOR = 20.0
_GRID_CHUNK_VALUES = 4_000_000  # points × hills × CVs evaluated at once by bias_potential_grid


@dataclass
class Hill:
    """One Gaussian of the bias: deposited at MD `step`, centred at `center` (the CV values), `height_eV` high,
    `sigma` wide along each CV (Å or rad)."""

    step: int
    center: tuple[float, ...]
    height_eV: float
    sigma: tuple[float, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_record(cls, record: dict) -> "Hill":
        return cls(step=int(record["step"]), center=tuple(float(v) for v in record["center"]),
                   height_eV=float(record["height_eV"]), sigma=tuple(float(v) for v in record["sigma"]))


class Metadynamics:
    """The metadynamics bias on `cvs`: hills of `height_eV` and widths `sigma` (one per CV, Å or rad) every
    `pace_steps` steps, well-tempered with `biasfactor` (None: plain) at `temperature_K`. Hills are appended
    to `hills_path` (JSON lines) as they are deposited, and `load_hills` reads them back after a restart.
    """

    def __init__(self, cvs: Sequence[CollectiveVariable], *, height_eV: float, sigma: Sequence[float],
                 pace_steps: int, biasfactor: float | None, temperature_K: float, hills_path: Path | None = None):
        _check_parameters(cvs, height_eV, sigma, pace_steps, biasfactor, temperature_K)
        self.cvs = tuple(cvs)
        self.height_eV = float(height_eV)
        self.sigma = tuple(float(s) for s in sigma)
        self.pace_steps = int(pace_steps)
        self.biasfactor = None if biasfactor is None else float(biasfactor)
        self.temperature_K = float(temperature_K)
        self.hills_path = None if hills_path is None else Path(hills_path)
        self.hills: list[Hill] = []
        self._periodic = np.array([cv.periodic for cv in self.cvs])
        self._clear_arrays()

    def __len__(self) -> int:
        return len(self.hills)

    @property
    def dimension(self) -> int:
        return len(self.cvs)

    def cv_values(self, atoms: Atoms) -> np.ndarray:
        """The current values of the CVs, shape [D]."""
        return np.array([cv.value_and_gradient(atoms)[0] for cv in self.cvs])

    def bias_potential(self, s: np.ndarray) -> float:
        """V(s) in eV at one point s of CV space (shape [D])."""
        return self.bias_and_gradient(s)[0]

    def bias_potential_grid(self, points: np.ndarray) -> np.ndarray:
        """V at each of the [P, D] `points` (for one CV, [P] will do), shape [P]."""
        points = np.asarray(points, dtype=float).reshape(-1, self.dimension)
        chunk = max(1, _GRID_CHUNK_VALUES // max(1, len(self.hills) * self.dimension))
        parts = [self._gaussians_many(points[start:start + chunk]).sum(axis=1)
                 for start in range(0, len(points), chunk)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def bias_and_gradient(self, s: np.ndarray) -> tuple[float, np.ndarray]:
        """V(s) (eV) and ∂V/∂s (shape [D], eV per Å or per rad) at one point s."""
        s = np.asarray(s, dtype=float)[None, :]
        delta = self._delta(s)[0]
        weights = self._heights * np.exp(-0.5 * ((delta / self._sigmas) ** 2).sum(axis=1))
        return float(weights.sum()), -(weights[:, None] * delta / self._sigmas**2).sum(axis=0)

    def energy_forces(self, atoms: Atoms, results: dict | None = None) -> tuple[float, np.ndarray]:
        """The bias energy (eV) and its forces on the atoms (eV/Å, [N, 3]); `results` (the base calculator's
        results) is not needed by this bias."""
        forces = np.zeros((len(atoms), 3))
        values_gradients = [cv.value_and_gradient(atoms) for cv in self.cvs]
        bias_eV, d_bias = self.bias_and_gradient(np.array([value for value, _ in values_gradients]))
        for d_bias_d, (_, gradient) in zip(d_bias, values_gradients):
            forces -= d_bias_d * gradient
        return bias_eV, forces

    def hill_height_eV(self, s: np.ndarray) -> float:
        """The height of a hill deposited at s now: h, or h exp(−V(s) / (k_B T (γ − 1))) when well-tempered."""
        if self.biasfactor is None:
            return self.height_eV
        bias_temperature_eV = units.kB * self.temperature_K * (self.biasfactor - 1.0)
        return self.height_eV * float(np.exp(-self.bias_potential(s) / bias_temperature_eV))

    def deposit(self, atoms: Atoms, step: int) -> Hill:
        """Add a hill at the current CV values and, with a hills file, append it there durably."""
        s = self.cv_values(atoms)
        hill = Hill(step=int(step), center=tuple(float(v) for v in s), height_eV=self.hill_height_eV(s),
                    sigma=self.sigma)
        if self.hills_path is not None:
            append_durable(self.hills_path, hill.to_json())
        self._add(hill)
        log.debug("hill %d at step %d: s = %s, height %.4g eV", len(self), step, hill.center, hill.height_eV)
        return hill

    def maybe_deposit(self, atoms: Atoms, step: int) -> Hill | None:
        """Deposit at each positive multiple of `pace_steps`, once per step (a step repeated after a restart
        deposits nothing). Returns the new hill or None. Forces computed before a deposit are stale."""
        if step <= 0 or step % self.pace_steps or step in self._steps:
            return None
        return self.deposit(atoms, step)

    def free_energy(self, points: np.ndarray) -> np.ndarray:
        """The free-energy estimate F at the [P, D] `points` (eV, shape [P]), shifted so that its minimum is 0:
        −(γ/(γ − 1)) V well-tempered, −V plain."""
        bias = self.bias_potential_grid(points)
        factor = 1.0 if self.biasfactor is None else self.biasfactor / (self.biasfactor - 1.0)
        free = -factor * bias
        return free - free.min() if free.size else free

    def load_hills(self) -> None:
        """Replace the hills by those of `hills_path` (none if the file does not exist)."""
        self.hills = []
        self._clear_arrays()
        if self.hills_path is None:
            return
        for record in read_json_lines(self.hills_path):
            self._add(_checked_hill(Hill.from_record(record), self.dimension, self.hills_path))
        if _torn(self.hills_path):  # the next append would otherwise continue the torn line
            atomic_write_text(self.hills_path, "".join(hill.to_json() for hill in self.hills))
        log.debug("%s: %d metadynamics hills read", self.hills_path, len(self))

    def _add(self, hill: Hill) -> None:
        self.hills.append(hill)
        self._steps.add(hill.step)
        self._centers = np.vstack([self._centers, hill.center])
        self._sigmas = np.vstack([self._sigmas, hill.sigma])
        self._heights = np.append(self._heights, hill.height_eV)

    def _clear_arrays(self) -> None:
        self._steps: set[int] = set()
        self._centers = np.zeros((0, self.dimension))
        self._sigmas = np.zeros((0, self.dimension))
        self._heights = np.zeros(0)

    def _delta(self, points: np.ndarray) -> np.ndarray:
        """points − centres, [P, H, D], wrapped into (−π, π] along the periodic CVs."""
        delta = points[:, None, :] - self._centers[None, :, :]
        if self._periodic.any():
            delta[..., self._periodic] = wrap_angle(delta[..., self._periodic])
        return delta

    def _gaussians_many(self, points: np.ndarray) -> np.ndarray:
        """The value of each hill at each point, [P, H]."""
        exponent = -0.5 * ((self._delta(points) / self._sigmas[None]) ** 2).sum(axis=2)
        return self._heights[None, :] * np.exp(exponent)


def _check_parameters(cvs: Sequence[CollectiveVariable], height_eV: float, sigma: Sequence[Any],
                      pace_steps: int, biasfactor: float | None, temperature_K: float) -> None:
    """ValueError for parameters no metadynamics can run with (the settings layer reports them to users)."""
    if not cvs:
        raise ValueError("metadynamics needs at least one collective variable")
    if len(sigma) != len(cvs) or any(not s > 0 for s in sigma):
        raise ValueError(f"need one positive sigma per collective variable ({len(cvs)}), got {list(sigma)}")
    if not height_eV > 0 or pace_steps < 1 or not temperature_K > 0:
        raise ValueError(f"need height > 0, pace >= 1 and temperature > 0, got {height_eV}, {pace_steps}, "
                         f"{temperature_K}")
    if biasfactor is not None and not biasfactor > 1:
        raise ValueError(f"the biasfactor of well-tempered metadynamics must be > 1, got {biasfactor}")


def _checked_hill(hill: Hill, dimension: int, path: Path) -> Hill:
    if len(hill.center) != dimension or len(hill.sigma) != dimension:
        raise ValueError(f"{path}: a hill of {len(hill.center)} collective variables does not fit a bias on "
                         f"{dimension}; was the file written with other collective variables?")
    return hill


def _torn(path: Path) -> bool:
    """True if the file does not end with a complete line (a kill during an append)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"
