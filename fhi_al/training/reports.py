"""What a training session leaves in results/: predicted against reference labels of the training and
validation sets (extxyz and CSV, `write_predictions`) and the session's plots (curves and parity).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.io import write

from ..architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY
from ..durable import atomic_write_text

log = logging.getLogger(__name__)

PRED_ENERGY_KEY = "MLFF_energy"
PRED_FORCES_KEY = "MLFF_forces"
CSV_COLUMNS = ("index", "label_id", "num_atoms", "energy_ref_eV", "energy_pred_eV", "energy_error_eV_per_atom",
               "forces_rmse_eV_per_A")


def predictions_table(atoms_list: Sequence[Atoms], energies_eV: np.ndarray, forces_eV_per_A: np.ndarray) -> list[dict]:
    """One row per structure (CSV_COLUMNS); forces of all structures concatenated in `forces_eV_per_A`."""
    rows, start = [], 0
    for index, atoms in enumerate(atoms_list):
        stop = start + len(atoms)
        ref_forces = atoms.arrays[REF_FORCES_KEY]
        rows.append({"index": index, "label_id": atoms.info.get("label_id", ""), "num_atoms": len(atoms),
                     "energy_ref_eV": float(atoms.info[REF_ENERGY_KEY]), "energy_pred_eV": float(energies_eV[index]),
                     "energy_error_eV_per_atom": (float(energies_eV[index]) - float(atoms.info[REF_ENERGY_KEY]))
                     / len(atoms),
                     "forces_rmse_eV_per_A": float(np.sqrt(np.mean((forces_eV_per_A[start:stop] - ref_forces) ** 2)))})
        start = stop
    return rows


def write_predictions(atoms_list: Sequence[Atoms], energies_eV: np.ndarray, forces_eV_per_A: np.ndarray, *,
                      stem: Path) -> tuple[Path, Path]:
    """`{stem}.extxyz` (reference and MLFF_energy / MLFF_forces per structure) and `{stem}.csv`."""
    frames, start = [], 0
    for index, atoms in enumerate(atoms_list):
        frame = atoms.copy()
        frame.calc = None
        frame.info[PRED_ENERGY_KEY] = float(energies_eV[index])
        frame.arrays[PRED_FORCES_KEY] = np.asarray(forces_eV_per_A[start:start + len(atoms)], dtype=float)
        start += len(atoms)
        frames.append(frame)
    text = io.StringIO()
    write(text, frames, format="extxyz")
    xyz, table = Path(f"{stem}.extxyz"), Path(f"{stem}.csv")
    atomic_write_text(xyz, text.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(predictions_table(atoms_list, energies_eV, forces_eV_per_A))
    atomic_write_text(table, buffer.getvalue())
    return xyz, table
