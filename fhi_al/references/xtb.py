"""GFN-xTB reference through tblite's ASE calculator, with options named as in REFERENCE.xtb.

A failed SCF raises from tblite (ASE's CalculationFailed); compute_label turns it into ReferenceError.
"""

from __future__ import annotations

import logging

from ase.calculators.calculator import all_changes
from tblite.ase import TBLite

from ..errors import SettingsError

log = logging.getLogger(__name__)

METHODS = ("GFN2-xTB", "GFN1-xTB")
DEFAULT_METHOD = "GFN2-xTB"
DEFAULT_ELECTRONIC_TEMPERATURE_K = 300.0
DEFAULT_ACCURACY = 1.0
DEFAULT_MAX_ITERATIONS = 250
QUIET = 0


class XTBCalculator(TBLite):
    """tblite's calculator that starts the next SCF from scratch after a failed one."""

    name = "xtb"

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        try:
            super().calculate(atoms, properties, system_changes)
        except BaseException:
            self._xtb = None  # a half-converged wavefunction must not seed the next call
            self._res = None
            raise


def make_xtb(*, method: str = DEFAULT_METHOD, electronic_temperature_K: float = DEFAULT_ELECTRONIC_TEMPERATURE_K,
             accuracy: float = DEFAULT_ACCURACY, max_iterations: int = DEFAULT_MAX_ITERATIONS,
             charge: float | None = None, multiplicity: int | None = None, **unused) -> XTBCalculator:
    """The tblite calculator; `multiplicity` = unpaired electrons + 1 (None: tblite's default, lowest spin)."""
    if unused:
        log.debug("xtb ignores options %s", sorted(unused))
    if method not in METHODS:
        raise SettingsError(f"unknown xtb method {method!r}; allowed: {', '.join(METHODS)}",
                            where="REFERENCE.xtb.method")
    return XTBCalculator(method=method, electronic_temperature=float(electronic_temperature_K),
                         accuracy=float(accuracy), max_iterations=int(max_iterations), charge=charge,
                         multiplicity=multiplicity, verbosity=QUIET)
