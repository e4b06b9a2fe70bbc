"""Neighbour lists for every graph and distance check of the package: matscipy's cell-list code (linear in the
number of atoms, as mace's own), with a bounding box for directions without a cell vector (molecules, slabs).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list

# Extra room around the atoms in a direction without periodicity, so that no image lies within the cutoff.
BOX_PADDING_A = 1.0


def neighbour_list(quantities: str, atoms: Atoms, cutoff_A: float) -> tuple[np.ndarray, ...]:
    """ASE's `neighbor_list(quantities, atoms, cutoff)` contract ("i", "j", "d", "D", "S"), computed by matscipy.

    A non-periodic direction whose cell vector is missing (zero) gets an orthogonal one spanning the atoms plus
    the cutoff; matscipy never wraps along it, so its length only sizes the bins.
    """
    cell = np.array(atoms.get_cell().array, dtype=float)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    positions = atoms.get_positions()
    if np.linalg.matrix_rank(cell) < 3:
        cell = _bounding_cell(cell, pbc, positions, cutoff_A)
    origin = positions.min(axis=0) if not pbc.any() else np.zeros(3)
    return _matscipy_neighbour_list(quantities, positions=positions - origin, cell=cell, pbc=pbc,
                                    numbers=atoms.get_atomic_numbers().astype(np.int32), cutoff=float(cutoff_A))


def _bounding_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff_A: float) -> np.ndarray:
    extent = float(np.ptp(positions, axis=0).max()) if len(positions) else 0.0
    length = extent + 2.0 * cutoff_A + BOX_PADDING_A
    filled = cell.copy()
    for axis in np.flatnonzero(np.linalg.norm(cell, axis=1) == 0.0):
        if pbc[axis]:
            raise ValueError(f"cannot build a neighbour list: periodic direction {axis} has no cell vector")
        filled[axis, axis] = length
    if np.linalg.matrix_rank(filled) < 3:
        raise ValueError(f"cannot build a neighbour list: cell {cell.tolist()} with pbc {pbc.tolist()} is degenerate")
    return filled
