"""Where reference labels come from, seen by the procedures as a queue: `submit` a structure, `collect`
finished labels, `wait` for one. `SerialLabeler` computes each label at once in this process; the
parallel mode's queue (`fhi_al.parallel.GroupLabeler`) sends them to reference groups.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from .errors import ReferenceError
from .references.base import compute_label

log = logging.getLogger(__name__)


@dataclass
class LabelResult:
    label_id: str
    energy_eV: float | None
    forces_eV_per_A: np.ndarray | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def label_structure(calc: Any, label_id: str, atoms: Atoms, *, timeout_s: float | None = None,
                    ledger: Any = None) -> LabelResult:
    """One reference calculation as a LabelResult; a failure is a result with `error` set, not an exception."""
    started = time.perf_counter()
    try:
        energy, forces = compute_label(calc, atoms, timeout_s=timeout_s, ledger=ledger, label_id=label_id)
        result = LabelResult(label_id, energy, forces)
    except ReferenceError as error:
        result = LabelResult(label_id, None, None, error=str(error))
    result.seconds = time.perf_counter() - started
    return result


class SerialLabeler:
    """Computes each label when it is submitted."""

    asynchronous = False

    def __init__(self, calc: Any, *, timeout_s: float | None = None, ledger: Any = None):
        self.calc = calc
        self.timeout_s = timeout_s
        self.ledger = ledger
        self._done: list[LabelResult] = []
        self.busy_s = 0.0

    def submit(self, label_id: str, atoms: Atoms) -> None:
        result = label_structure(self.calc, label_id, atoms, timeout_s=self.timeout_s, ledger=self.ledger)
        self.busy_s += result.seconds
        self._done.append(result)

    def collect(self) -> list[LabelResult]:
        done, self._done = self._done, []
        return done

    def cancel_queued(self) -> list[str]:
        """Nothing is ever queued here."""
        return []

    def wait(self) -> list[LabelResult]:
        """Finished labels; here every submitted label is finished already."""
        return self.collect()

    @property
    def in_flight(self) -> int:
        return 0

    def close(self) -> None:
        return None
