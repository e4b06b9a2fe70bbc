"""Serial mode: every label is computed when it is submitted, in this process (`SerialLabeler`); with a
collective reference (FHI-aims) the other ranks join each calculation (`SharedReference` on the root,
`serve_shared_reference` on the others).
"""

from __future__ import annotations

import logging
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..parallel import ROOT, Comm
from .label import LabelResult, label_structure
from .messages import TAG_TASK, atoms_from_message, atoms_message

log = logging.getLogger(__name__)


class SerialLabeler:
    """Computes each label when it is submitted."""

    asynchronous = False

    def __init__(self, calc: Any, *, timeout_s: float | None = None, ledger: Any = None):
        self.calc = calc
        self.timeout_s = timeout_s
        self.ledger = ledger
        self._done: list[LabelResult] = []
        self.busy_s = 0.0
        self.waited_s = 0.0  # rank 0 waiting for other ranks (training ranks); labels here never make it wait

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


class SharedReference(Calculator):
    """Serial mode, root side: the reference as an ASE Calculator that makes the other ranks join each
    calculation (FHI-aims over the whole communicator)."""

    def __init__(self, calc: Any, comm: Comm):
        super().__init__()
        self.calc, self.comm = calc, comm
        self.implemented_properties = list(calc.implemented_properties)

    def _get_name(self) -> str:
        return self.calc.name

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        for rank in range(1, self.comm.size):
            self.comm.send(atoms_message(self.atoms), dest=rank, tag=TAG_TASK)
        self.calc.calculate(self.atoms, list(properties), list(system_changes))
        self.results = dict(self.calc.results)

    def reset(self) -> None:
        super().reset()
        self.calc.reset()


def serve_shared_reference(calc: Any, comm: Comm) -> None:
    """Serial mode, other ranks: join the root's reference calculations until it says stop."""
    while True:
        message = comm.receive(source=ROOT, tag=TAG_TASK)
        if message is None:
            return
        try:
            calc.calculate(atoms_from_message(message), ["energy", "forces"], list(all_changes))
        except Exception:  # noqa: BLE001 - the root sees the same failure and reports it
            log.debug("reference failed on rank %d", comm.rank, exc_info=True)
