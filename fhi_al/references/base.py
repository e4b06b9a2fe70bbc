"""One guarded way to run a reference on a structure (`compute_label`), below every calculator module.

Every reference is an ASE Calculator whose identity is ASE's `Calculator.name` and which sets the class
attribute `collective` when all ranks of its communicator compute together. `compute_label` turns every way a
reference can fail (SCF not converged, library error, timeout, non-finite numbers) into
`fhi_al.errors.ReferenceError` and returns raw results only.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..errors import InputError, ReferenceError
from .ledger import LABEL, as_ledger

log = logging.getLogger(__name__)

LABEL_PROPERTIES = ("energy", "forces")
STRESS = "stress"  # ASE's property: Voigt order xx yy zz yz xz xy, eV/Å³, (1/V) dE/dstrain
PERIODIC_LABEL_PROPERTIES = (*LABEL_PROPERTIES, STRESS)
SYSTEM_KEY = "system"  # Atoms.info: the name of the run's system a structure belongs to (fhi_al.systems)


@dataclass(frozen=True)
class ReferenceLabel:
    """What a reference calculation gives a label: energy, raw forces and, for a periodic cell with a reference
    that implements it, the stress (Voigt 6, eV/Å³, ASE's sign: positive = the cell wants to shrink)."""

    energy_eV: float
    forces_eV_per_A: np.ndarray
    stress_eV_per_A3: np.ndarray | None = None


def is_periodic_cell(atoms: Atoms) -> bool:
    """True for a structure periodic in all three directions with a cell of positive volume."""
    return bool(np.all(atoms.get_pbc())) and abs(float(atoms.cell.volume)) > 0.0


def gives_stress(calc: Any) -> bool:
    """True when the reference implements ASE's stress property (EMT, tblite, an ASI library with ASI_stress)."""
    return STRESS in getattr(calc, "implemented_properties", ())


def label_properties(calc: Any, atoms: Atoms) -> tuple[str, ...]:
    """The properties a label of `atoms` asks of `calc`: stress too for a periodic cell, if `calc` gives it."""
    return PERIODIC_LABEL_PROPERTIES if is_periodic_cell(atoms) and gives_stress(calc) else LABEL_PROPERTIES


def reference_name(calc: Calculator) -> str:
    """The reference's identity (ASE's `Calculator.name`: "xtb", "pyscf", "emt", "aims", ...)."""
    return calc.name


def is_collective(calc: Any) -> bool:
    """True for a reference whose calculations run on all ranks of its communicator together (FHI-aims)."""
    return bool(getattr(calc, "collective", False))


class _ReferenceTimeout(BaseException):
    """Raised from the alarm handler; a BaseException so that libraries' `except Exception` cannot eat it."""


@contextmanager
def _deadline(timeout_s: float | None):
    """Interrupt the block after timeout_s seconds (SIGALRM; main thread of a POSIX process only).

    Limitation: Python runs the handler only between bytecodes, so a call stuck inside compiled code (an SCF
    loop in Fortran, an MPI collective) is interrupted only when it returns to Python. Elsewhere (threads,
    no SIGALRM) the block runs without a deadline and a debug message says so. Each rank keeps its own clock:
    with a library that is collective over several ranks, a deadline that fires on some ranks only can leave
    the others waiting, so parallel jobs should treat a timeout there as fatal for that reference group.
    """
    usable = (timeout_s is not None and timeout_s > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        if timeout_s:
            log.debug("reference timeout of %s s not enforced outside the main thread", timeout_s)
        yield
        return

    def _on_alarm(signum, frame):
        raise _ReferenceTimeout()

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def evaluate(calc: Calculator, atoms: Atoms, properties=LABEL_PROPERTIES) -> dict[str, Any]:
    """Run `calc` on `atoms` the way ASE's get_property does, for all `properties` at once; raw results."""
    return evaluate_counted(calc, atoms, properties)[0]


def evaluate_counted(calc: Calculator, atoms: Atoms, properties=LABEL_PROPERTIES) -> tuple[dict[str, Any], int]:
    """`evaluate`, and whether a calculation ran (1) or the results were the calculator's cached ones (0)."""
    changes = calc.check_state(atoms)
    if changes:
        calc.reset()
    if changes or any(name not in calc.results for name in properties):
        calc.calculate(atoms, list(properties), changes)
        return calc.results, 1
    return calc.results, 0


def structure_description(atoms: Atoms, label_id: str | None = None) -> str:
    return f"{label_id} ({atoms.get_chemical_formula()})" if label_id else atoms.get_chemical_formula()


def compute_label(calc: Calculator, atoms: Atoms, *, timeout_s: float | None = None, ledger: Any = None,
                  label_id: str | None = None, purpose: str = LABEL) -> tuple[float, np.ndarray]:
    """(energy_eV, forces_eV_per_A) of `atoms` from `calc`, or ReferenceError (`compute_reference_label`
    without the stress)."""
    label = compute_reference_label(calc, atoms, timeout_s=timeout_s, ledger=ledger, label_id=label_id,
                                    purpose=purpose)
    return label.energy_eV, label.forces_eV_per_A


def compute_reference_label(calc: Calculator, atoms: Atoms, *, timeout_s: float | None = None, ledger: Any = None,
                            label_id: str | None = None, purpose: str = LABEL) -> ReferenceLabel:
    """The ReferenceLabel of `atoms` from `calc` (with stress for a periodic cell when `calc` gives it), or
    ReferenceError.

    Forces are the calculator's raw results, never constraint-adjusted. With `ledger` (a path or a
    references.ledger.Ledger) one durable line is appended per calculation, failed ones included, with its
    `purpose` (references.ledger.PURPOSES); results the calculator had cached count 0 calls. Pass the ledger
    on one rank only or as a Ledger told whether this rank writes.
    """
    name = reference_name(calc)
    where = structure_description(atoms, label_id)
    work = atoms.copy()
    work.calc = None
    started = time.perf_counter()
    record = _ledger_recorder(ledger, label_id=label_id or where, purpose=purpose, reference=name,
                              n_atoms=len(atoms), started=started)
    try:
        with _deadline(timeout_s):
            results, calls = evaluate_counted(calc, work, label_properties(calc, atoms))
        label = checked_label(results, n_atoms=len(atoms), calculator=name, structure=where,
                              stress=STRESS in label_properties(calc, atoms))
    except (ReferenceError, InputError):  # already precise: a failed label or the user's input to fix
        record(None, calls=1, ok=False)
        raise
    except _ReferenceTimeout:
        _reset_quietly(calc)
        record(None, calls=1, ok=False)
        raise ReferenceError(f"reference calculation exceeded the timeout of {timeout_s} s",
                             calculator=name, structure=where) from None
    except Exception as err:  # any library failure is one catchable error
        _reset_quietly(calc)
        record(None, calls=1, ok=False)
        raise ReferenceError(f"reference calculation failed: {type(err).__name__}: {err}",
                             calculator=name, structure=where) from err
    record(label.energy_eV, calls=calls, ok=True)
    return label


def _ledger_recorder(ledger: Any, *, started: float, **fields: Any):
    """A function that appends one ledger line for this calculation (a no-op without a ledger)."""
    if ledger is None:
        return lambda energy_eV, **outcome: None

    def record(energy_eV: float | None, **outcome: Any) -> None:
        as_ledger(ledger).record(energy_eV=energy_eV, duration_s=time.perf_counter() - started, **fields,
                                 **outcome)

    return record


def _reset_quietly(calc: Calculator) -> None:
    """Forget the failed state so the next call recomputes (the wrapped library may hold stale results)."""
    try:
        calc.reset()
    except Exception:  # noqa: BLE001 - a reset that fails must not hide the original error
        log.debug("reset of %s after a failure failed too", reference_name(calc), exc_info=True)


def checked_results(results: Mapping[str, Any], *, n_atoms: int, calculator: str,
                    structure: str) -> tuple[float, np.ndarray]:
    label = checked_label(results, n_atoms=n_atoms, calculator=calculator, structure=structure)
    return label.energy_eV, label.forces_eV_per_A


def checked_label(results: Mapping[str, Any], *, n_atoms: int, calculator: str, structure: str,
                  stress: bool = False) -> ReferenceLabel:
    """The label in `results`, checked (shapes, finite numbers); with `stress` the stress must be there too."""
    energy, forces = _checked_energy_forces(results, n_atoms=n_atoms, calculator=calculator, structure=structure)
    if not stress:
        return ReferenceLabel(energy, forces)
    return ReferenceLabel(energy, forces, checked_stress(results.get(STRESS), calculator=calculator,
                                                         structure=structure))


def checked_stress(value: Any, *, calculator: str, structure: str) -> np.ndarray:
    """A stress result as Voigt 6 (eV/Å³; a 3x3 tensor is converted), or ReferenceError."""
    from ase.stress import full_3x3_to_voigt_6_stress

    if value is None:
        raise ReferenceError("reference returned no stress for a periodic structure", calculator=calculator,
                             structure=structure)
    stress = np.array(value, dtype=float, copy=True)
    if stress.shape == (3, 3):
        stress = full_3x3_to_voigt_6_stress(stress)
    if stress.shape != (6,):
        raise ReferenceError(f"reference returned a stress of shape {stress.shape}, expected (6,) or (3, 3)",
                             calculator=calculator, structure=structure)
    if not np.all(np.isfinite(stress)):
        raise ReferenceError("reference returned a non-finite stress (NaN/inf)", calculator=calculator,
                             structure=structure)
    return stress


def _checked_energy_forces(results: Mapping[str, Any], *, n_atoms: int, calculator: str,
                           structure: str) -> tuple[float, np.ndarray]:
    if "energy" not in results or results.get("forces") is None:
        raise ReferenceError("reference returned no energy or no forces", calculator=calculator,
                             structure=structure)
    energy = float(results["energy"])
    forces = np.array(results["forces"], dtype=float, copy=True)
    if forces.shape != (n_atoms, 3):
        raise ReferenceError(f"reference returned forces of shape {forces.shape}, expected ({n_atoms}, 3)",
                             calculator=calculator, structure=structure)
    if not math.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise ReferenceError("reference returned a non-finite energy or forces (NaN/inf)", calculator=calculator,
                             structure=structure)
    return energy, forces
