"""A reference label and the structure it belongs to, built where the calculation happens.

`LabelResult.atoms` is a calculator-free copy of the labelled structure with the reference energy in
`info["REF_energy"]`, the raw forces in `arrays["REF_forces"]`, for periodic cells the stress in
`info["REF_stress"]` (MACE's keys; Voigt 6, eV/Å³) and the reference's name and the
label id in `info`; it travels with the result (across ranks too), so no procedure rebuilds the frame.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from ase import Atoms

from ..errors import ReferenceError
from ..references.base import (STRESS, SYSTEM_KEY, ReferenceLabel, checked_label, compute_reference_label,
                               is_periodic_cell, reference_name, structure_description)
from ..references.ledger import as_ledger

log = logging.getLogger(__name__)

REF_ENERGY_KEY = "REF_energy"  # Atoms.info, eV
REF_FORCES_KEY = "REF_forces"  # Atoms.arrays, eV/Å
REF_STRESS_KEY = "REF_stress"  # Atoms.info, Voigt 6 (xx yy zz yz xz xy), eV/Å³, ASE's sign; periodic cells only
REFERENCE_KEY = "reference"  # Atoms.info: the reference's name
LABEL_ID_KEY = "label_id"  # Atoms.info


def labelled_atoms(atoms: Atoms, *, energy_eV: float, forces_eV_per_A: np.ndarray, reference: str,
                   label_id: str, stress_eV_per_A3: np.ndarray | None = None) -> Atoms:
    """A calculator-free copy of `atoms` (numbers, positions, cell, pbc and its system) carrying the reference
    labels.

    Pass the calculator's raw results (never constraint-adjusted forces). Non-finite results raise
    `ReferenceError` and forces or stress of the wrong shape `ValueError`, so no NaN can reach a dataset.
    """
    forces = np.array(forces_eV_per_A, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"forces have shape {forces.shape}, expected {(len(atoms), 3)}")
    stress = None if stress_eV_per_A3 is None else np.array(stress_eV_per_A3, dtype=float).reshape(-1)
    if stress is not None and stress.shape != (6,):
        raise ValueError(f"stress has {stress.size} components, expected Voigt 6")
    if not (math.isfinite(float(energy_eV)) and np.isfinite(forces).all()
            and (stress is None or np.isfinite(stress).all())):
        raise ReferenceError("non-finite energy, forces or stress", calculator=reference, structure=label_id)
    labelled = Atoms(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(), cell=atoms.get_cell(),
                     pbc=atoms.get_pbc())
    labelled.info.update({REF_ENERGY_KEY: float(energy_eV), REFERENCE_KEY: str(reference),
                          LABEL_ID_KEY: str(label_id)})
    if atoms.info.get(SYSTEM_KEY) is not None:
        labelled.info[SYSTEM_KEY] = str(atoms.info[SYSTEM_KEY])
    labelled.arrays[REF_FORCES_KEY] = forces
    if stress is not None:
        labelled.info[REF_STRESS_KEY] = stress
    return labelled


def labelled_from(atoms: Atoms, label: ReferenceLabel, *, reference: str, label_id: str) -> Atoms:
    """`labelled_atoms` with the values of a references.base.ReferenceLabel."""
    return labelled_atoms(atoms, energy_eV=label.energy_eV, forces_eV_per_A=label.forces_eV_per_A,
                          stress_eV_per_A3=label.stress_eV_per_A3, reference=reference, label_id=label_id)


@dataclass
class LabelResult:
    """One finished label: `atoms` is the labelled structure (None when the reference failed, then `error`)."""

    label_id: str
    atoms: Atoms | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def energy_eV(self) -> float | None:
        return None if self.atoms is None else float(self.atoms.info[REF_ENERGY_KEY])

    @property
    def forces_eV_per_A(self) -> np.ndarray | None:
        return None if self.atoms is None else self.atoms.arrays[REF_FORCES_KEY]

    @property
    def stress_eV_per_A3(self) -> np.ndarray | None:
        """Voigt 6 stress of a periodic structure (None for molecules and references without stress)."""
        return None if self.atoms is None else self.atoms.info.get(REF_STRESS_KEY)


def label_structure(calc: Any, label_id: str, atoms: Atoms, *, timeout_s: float | None = None,
                    ledger: Any = None) -> LabelResult:
    """One reference calculation as a LabelResult; a failure is a result with `error` set, not an exception."""
    started = time.perf_counter()
    try:
        label = compute_reference_label(calc, atoms, timeout_s=timeout_s, ledger=ledger, label_id=label_id)
        result = LabelResult(label_id, labelled_from(atoms, label, reference=reference_name(calc),
                                                     label_id=label_id))
    except ReferenceError as error:
        result = LabelResult(label_id, None, error=str(error))
    result.seconds = time.perf_counter() - started
    return result


def label_from_results(label_id: str, atoms: Atoms, results: Mapping[str, Any], *, reference: str,
                       ledger: Any = None) -> LabelResult:
    """The label of a structure whose reference results exist already (a step of ab initio MD: the driving
    calculator's results at that frame), checked as `compute_label` checks them; no calculator is called.
    A periodic frame keeps the stress when the results have it."""
    try:
        label = checked_label(results, n_atoms=len(atoms), calculator=reference,
                              structure=structure_description(atoms, label_id),
                              stress=is_periodic_cell(atoms) and results.get(STRESS) is not None)
        labelled = labelled_from(atoms, label, reference=reference, label_id=label_id)
    except ReferenceError as error:
        return LabelResult(label_id, None, error=str(error))
    if ledger is not None:
        # calls=0: the calculation was paid for (and recorded) as the MD step that produced these results
        as_ledger(ledger).record(label_id=label_id, energy_eV=label.energy_eV, reference=reference, n_atoms=len(atoms),
                                 calls=0)
    return LabelResult(label_id, labelled)
