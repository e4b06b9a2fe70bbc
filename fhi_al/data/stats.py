"""Statistics of a labelled training set that models use as parameters (E0s, neighbour counts, scales).

Recomputed before every training session because the data grows during active learning.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from ..architectures.base import DatasetStatistics, reference_labels
from ..errors import InputError

log = logging.getLogger(__name__)

SOURCE_SETTINGS = "settings"
SOURCE_LEAST_SQUARES = "least_squares"


def compute_statistics(atoms_list: Sequence[Atoms], *, cutoff_A: float,
                       atomic_energies: Mapping[int, float] | None = None) -> DatasetStatistics:
    """Statistics of `atoms_list` (labelled structures): E0s (given or least squares), mean number of
    neighbours within `cutoff_A` (over atoms with at least one, as mace counts), per-atom interaction
    energy mean/std and force RMS (overall and per element), and least-squares E0s
    (`per_type_energy_shifts`, also when `atomic_energies` are given)."""
    if not atoms_list:
        raise InputError("cannot compute statistics of an empty training set", where="training set")
    species = sorted({int(z) for atoms in atoms_list for z in atoms.numbers})
    energies, forces = zip(*(reference_labels(atoms) for atoms in atoms_list))
    counts = np.array([[np.count_nonzero(atoms.numbers == z) for z in species] for atoms in atoms_list], float)
    fitted = least_squares_atomic_energies(species, counts, np.array(energies), warn=atomic_energies is None)
    e0s, source = _atomic_energies(species, counts, np.array(energies), atomic_energies, fitted)
    e0_vector = np.array([e0s[z] for z in species])
    per_atom = (np.array(energies) - counts @ e0_vector) / counts.sum(axis=1)
    all_forces = np.concatenate(forces)
    all_numbers = np.concatenate([atoms.numbers for atoms in atoms_list])
    return DatasetStatistics(
        species=species, atomic_energies_eV=e0s, atomic_energies_source=source,
        num_neighbors_mean=mean_num_neighbors(atoms_list, cutoff_A=cutoff_A),
        per_atom_energy_mean=float(per_atom.mean()),
        per_atom_energy_std=float(per_atom.std(ddof=1)) if len(per_atom) > 1 else 0.0,
        forces_rms=_rms(all_forces),
        per_type_forces_rms={z: _rms(all_forces[all_numbers == z]) for z in species},
        num_structures=len(atoms_list), per_type_energy_shifts=fitted)


def mean_num_neighbors(atoms_list: Sequence[Atoms], *, cutoff_A: float) -> float:
    """Mean number of neighbours within `cutoff_A` with mace's own neighbour list (periodic images
    included), over atoms that have at least one neighbour, like mace's compute_avg_num_neighbors."""
    from mace.data.neighborhood import get_neighborhood

    counts = []
    for atoms in atoms_list:
        edge_index, *_ = get_neighborhood(positions=atoms.positions, cutoff=cutoff_A, pbc=tuple(atoms.pbc),
                                          cell=np.array(atoms.cell))
        receivers = np.bincount(edge_index[1], minlength=len(atoms))
        counts.extend(receivers[receivers > 0])
    return float(np.mean(counts)) if counts else 0.0


_DEGENERATE_WARNED: list[bool] = []


def least_squares_atomic_energies(species: Sequence[int], counts: np.ndarray,
                                  energies_eV: np.ndarray, *, warn: bool = True) -> dict[int, float]:
    """E0 per element by least squares of the total energies on the element counts (mace's `average`).

    With a single composition the problem is degenerate and the minimum-norm solution is returned."""
    solution, _, rank, _ = np.linalg.lstsq(counts, energies_eV, rcond=None)
    if warn and rank < len(species) and not _DEGENERATE_WARNED:
        _DEGENERATE_WARNED.append(True)  # once per process: the same data keeps the same degeneracy
        log.warning("E0s by least squares are degenerate (%d compositions for %d elements): energies carry an "
                    "arbitrary per-element split; prefer isolated-atom energies (FHI_AL-atomic-energies)",
                    rank, len(species))
    return {int(z): float(e) for z, e in zip(species, solution)}


def _atomic_energies(species, counts, energies, given, fitted):
    if given is None:
        return dict(fitted), SOURCE_LEAST_SQUARES
    given = {int(z): float(e) for z, e in given.items()}
    missing = [z for z in species if z not in given]
    if missing:
        raise InputError(f"no atomic energy for element(s) {missing} that occur in the training set",
                         where="ARCHITECTURE.atomic_energies")
    return {z: given[z] for z in species}, SOURCE_SETTINGS


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0
