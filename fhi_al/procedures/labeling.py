"""Where reference labels come from, seen by the procedures as a queue: `submit` a structure, `collect`
finished labels. In serial mode the label is computed at once on this process (all ranks of the
reference communicator take part); the parallel mode's queue lives in fhi_al.parallel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from ..errors import ReferenceError
from ..references.base import compute_label

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


class SerialLabeler:
    """Computes each label when it is submitted."""

    def __init__(self, calc: Any, *, timeout_s: float | None = None, ledger: Any = None):
        self.calc = calc
        self.timeout_s = timeout_s
        self.ledger = ledger
        self._done: list[LabelResult] = []
        self.busy_s = 0.0

    def submit(self, label_id: str, atoms: Atoms) -> None:
        started = time.perf_counter()
        try:
            energy, forces = compute_label(self.calc, atoms, timeout_s=self.timeout_s, ledger=self.ledger,
                                           label_id=label_id)
            result = LabelResult(label_id, energy, forces)
        except ReferenceError as error:
            result = LabelResult(label_id, None, None, error=str(error))
        result.seconds = time.perf_counter() - started
        self.busy_s += result.seconds
        self._done.append(result)

    def collect(self) -> list[LabelResult]:
        done, self._done = self._done, []
        return done

    @property
    def in_flight(self) -> int:
        return 0

    def close(self) -> None:
        return None
