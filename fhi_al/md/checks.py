"""Whether a frame is still physical: non-finite numbers, atoms too close (covalent radii) or flying apart,
overheating, a collapsed, exploded or flat cell, reference forces above the trust bound; with the defaults'
measured justification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from ..neighbours import neighbour_list
from .dynamics import kinetic_temperature_K

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE_A = 5.0
# Instantaneous temperatures of small molecules fluctuate strongly (chi-squared with 3N-3 dof):
# for 8 atoms, 5x the target has a probability below 1e-12 per step in a healthy run.
DEFAULT_MAX_TEMPERATURE_FACTOR = 5.0
# Cell collapse / explosion under NPT: the volume relative to the starting structure's. Condensed matter changes
# volume by far less at the pressures and temperatures an MD samples (Cu at 100 GPa: V/V0 ~ 0.72; melting: +5%),
# so a volume halved is a model without repulsion and a volume doubled is a cell flying apart.
MIN_VOLUME_RATIO = 0.5
MAX_VOLUME_RATIO = 2.0
# A cell whose volume is below this fraction of the product of its edge lengths has sheared flat: for two
# orthogonal vectors the fraction is the sine of the third vector's angle to their plane, so 0.05 is ~3 degrees
# (an fcc primitive cell has 0.71, a hexagonal one 0.87).
MIN_CELL_FLATNESS = 0.05
# Closest contact d_ij / (r_cov,i + r_cov,j) below which a frame has left the physical region. Equilibrium
# GFN2-xTB MD of water and ethanol stays above 0.9 at 500 K and 0.87 at 1000 K (measured, 200 frames each;
# tests/test_frame_guard.py checks it); a poor foundation model pushed atoms to 0.71 Å (O-H: 0.73 of the sum).
DEFAULT_MIN_DISTANCE_FRACTION = 0.75
# Largest reference force on an atom (eV/Å) that a stored label may carry: DP-GEN's upper trust level idea
# applied to the label itself. Healthy MD frames of water/ethanol at 1000 K stay below 9 eV/Å (measured, tests);
# the poor foundation's frames reached a median of 36 eV/Å.
DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A = 20.0
# Rejection reasons start with one of these kinds (the summary counts rejections per kind).
TOO_CLOSE, TOO_HOT = "atoms too close", "kinetic temperature too high"
FORCE_ABOVE = "reference force above bound"

CONTACT_SEARCH_FRACTION = 1.5  # contacts farther than this fraction of their covalent-radii sum are not looked at


def contact_cutoff_A(numbers: np.ndarray) -> float:
    """Neighbour-list cutoff that holds every pair closer than CONTACT_SEARCH_FRACTION of its radii sum."""
    return CONTACT_SEARCH_FRACTION * 2.0 * float(covalent_radii[numbers].max())


def closest_contact_fraction(atoms: Atoms) -> float:
    """min over atom pairs of d_ij / (r_cov,i + r_cov,j) (periodic images included), from a linear-scaling
    neighbour list; inf for one atom or when no pair is within CONTACT_SEARCH_FRACTION of its radii sum."""
    if len(atoms) < 2:
        return float("inf")
    first, second, distances = neighbour_list("ijd", atoms, contact_cutoff_A(atoms.numbers))
    return contact_fraction_of_pairs(atoms.numbers, first, second, distances)


def contact_fraction_of_pairs(numbers: np.ndarray, first: np.ndarray, second: np.ndarray,
                              distances: np.ndarray) -> float:
    """closest_contact_fraction from a neighbour list already at hand (any cutoff >= contact_cutoff_A)."""
    if len(distances) == 0:
        return float("inf")
    radii = covalent_radii[numbers]
    smallest = float((distances / (radii[first] + radii[second])).min())
    return smallest if smallest <= CONTACT_SEARCH_FRACTION else float("inf")


def reference_force_rejection(forces_eV_per_A: np.ndarray, max_force_eV_per_A: float | None) -> str | None:
    """A reason when the largest per-atom reference force exceeds the bound (None: keep the label)."""
    if max_force_eV_per_A is None or len(forces_eV_per_A) == 0:
        return None
    largest = float(np.linalg.norm(np.asarray(forces_eV_per_A, dtype=float), axis=1).max())
    if largest > max_force_eV_per_A:
        return (f"{FORCE_ABOVE}: largest reference force {largest:.1f} eV/Å > max_reference_force "
                f"{max_force_eV_per_A} eV/Å")
    return None


def rejection_kind(reason: str) -> str:
    """The kind a rejection reason starts with (TOO_CLOSE, TOO_HOT, FORCE_ABOVE), else 'other'."""
    return next((kind for kind in (TOO_CLOSE, TOO_HOT, FORCE_ABOVE) if reason.startswith(kind)), "other")


@dataclass(frozen=True)
class FrameBounds:
    """The physical region of model-driven MD (settings ACTIVE_LEARNING.min_distance_fraction,
    max_reference_force, max_temperature_factor): a frame outside it is neither labelled nor stored."""

    min_distance_fraction: float | None = DEFAULT_MIN_DISTANCE_FRACTION
    max_reference_force_eV_per_A: float | None = DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A
    max_temperature_factor: float = DEFAULT_MAX_TEMPERATURE_FACTOR

    @classmethod
    def from_settings(cls, al_settings: Any) -> "FrameBounds":
        return cls(min_distance_fraction=al_settings.min_distance_fraction,
                   max_reference_force_eV_per_A=al_settings.max_reference_force,
                   max_temperature_factor=al_settings.max_temperature_factor)

    def detector(self, temperature_K: float) -> "BlowUpDetector":
        return BlowUpDetector(target_temperature_K=temperature_K, max_temperature_factor=self.max_temperature_factor,
                              min_distance_fraction=self.min_distance_fraction)


class BlowUpDetector:
    """Tells whether a frame is unphysical: non-finite numbers, atoms closer than `min_distance_fraction` of
    their covalent radii sum, an atom far from all others, overheating, and for periodic frames a non-finite,
    flat, collapsed or exploded cell."""

    def __init__(self, *, target_temperature_K: float, max_distance_A: float = DEFAULT_MAX_DISTANCE_A,
                 max_temperature_factor: float = DEFAULT_MAX_TEMPERATURE_FACTOR,
                 min_distance_fraction: float | None = DEFAULT_MIN_DISTANCE_FRACTION):
        self.target_temperature_K = target_temperature_K
        self.max_distance_A = max_distance_A
        self.max_temperature_factor = max_temperature_factor
        self.min_distance_fraction = min_distance_fraction

    def check(self, atoms: Atoms, forces_eV_per_A: np.ndarray | None = None, *,
              reference_volume_A3: float | None = None) -> str | None:
        """A reason string if the frame blew up, else None.

        `forces_eV_per_A` defaults to the forces already computed by the attached calculator (no new
        calculation is triggered). With `reference_volume_A3` (the starting cell's volume) a periodic cell
        is also checked for collapse and explosion.
        """
        if forces_eV_per_A is None and atoms.calc is not None:
            forces_eV_per_A = atoms.calc.results.get("forces")
        cell_reason = cell_problem(atoms, reference_volume_A3)
        if cell_reason is not None:
            return cell_reason
        if not np.isfinite(atoms.get_positions()).all():
            return "non-finite positions"
        if not np.isfinite(atoms.get_momenta()).all():
            return "non-finite velocities"
        if forces_eV_per_A is not None and not np.isfinite(forces_eV_per_A).all():
            return "non-finite forces"
        pairs = self.pairs(atoms)
        isolated = self.isolated_atoms(atoms, pairs)
        if isolated:
            return (f"atom(s) {isolated} farther than {self.max_distance_A} Å from all others")
        temperature_K = kinetic_temperature_K(atoms)
        if temperature_K > self.max_temperature_factor * self.target_temperature_K:
            return (f"{TOO_HOT}: {temperature_K:.0f} K above {self.max_temperature_factor} x "
                    f"target {self.target_temperature_K:.0f} K")
        if self.min_distance_fraction is not None:
            contact = contact_fraction_of_pairs(atoms.numbers, *pairs)
            if contact < self.min_distance_fraction:
                return (f"{TOO_CLOSE}: closest contact {contact:.2f} of the covalent radii sum < "
                        f"min_distance_fraction {self.min_distance_fraction}")
        return None

    def pairs(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first, second, distance) of one neighbour list that serves both the flying-atom and the contact
        check; empty for a single atom."""
        if len(atoms) < 2:
            return np.empty(0, dtype=int), np.empty(0, dtype=int), np.empty(0)
        cutoff_A = max(self.max_distance_A, contact_cutoff_A(atoms.numbers))
        return neighbour_list("ijd", atoms, cutoff_A)

    def isolated_atoms(self, atoms: Atoms, pairs: tuple[np.ndarray, ...] | None = None) -> list[int]:
        """Atoms with no other atom within max_distance_A (`pairs`: from `self.pairs(atoms)`, if at hand)."""
        if len(atoms) < 2:
            return []
        first, _, distances = self.pairs(atoms) if pairs is None else pairs
        with_neighbour = np.unique(first[distances <= self.max_distance_A])
        return sorted(set(range(len(atoms))) - set(with_neighbour.tolist()))


def cell_problem(atoms: Atoms, reference_volume_A3: float | None) -> str | None:
    """Why the cell of a periodic frame is unphysical (non-finite, sheared flat, volume collapsed or exploded
    relative to `reference_volume_A3`), else None. Non-periodic frames have no cell to check."""
    if not atoms.pbc.any():
        return None
    cell = atoms.get_cell().array
    if not np.isfinite(cell).all():
        return "non-finite cell"
    if not atoms.pbc.all():
        return None
    volume_A3 = abs(float(np.linalg.det(cell)))
    edges = float(np.prod(np.linalg.norm(cell, axis=1)))
    if edges == 0.0 or volume_A3 < MIN_CELL_FLATNESS * edges:
        return f"degenerate cell (volume {volume_A3:.3g} Å³ for edge lengths {np.linalg.norm(cell, axis=1)})"
    if reference_volume_A3 is None:
        return None
    ratio = volume_A3 / reference_volume_A3
    if ratio < MIN_VOLUME_RATIO:
        return f"cell collapsed: volume {ratio:.2f} x the starting volume (below {MIN_VOLUME_RATIO})"
    if ratio > MAX_VOLUME_RATIO:
        return f"cell exploded: volume {ratio:.2f} x the starting volume (above {MAX_VOLUME_RATIO})"
    return None
