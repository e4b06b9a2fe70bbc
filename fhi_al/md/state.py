"""Restartable MD state: positions, momenta, cell, step and the NPT integrator's own state, as restart records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from .npt import IntegratorState, integrator_state, sync_integrator


@dataclass
class MDState:
    """Everything needed to continue a trajectory, with the RNG state kept by its owner."""

    numbers: np.ndarray
    positions: np.ndarray  # Å
    momenta: np.ndarray  # ASE units (amu Å / ASE time)
    cell: np.ndarray  # Å
    pbc: np.ndarray
    step: int
    integrator: IntegratorState | None = None  # MTK chains and cell momenta (None: all state is above)

    def to_record(self) -> dict[str, Any]:
        """Plain values for fhi_al.restart.save_record (the layout of restart records since version 1; the
        integrator key only where there is an integrator state)."""
        record = {"numbers": self.numbers, "positions": self.positions, "momenta": self.momenta,
                  "cell": self.cell, "pbc": self.pbc, "step": int(self.step)}
        if self.integrator is not None:
            record["integrator"] = self.integrator.to_record()
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "MDState":
        integrator = record.get("integrator")  # absent in records written before NPT
        return cls(numbers=np.asarray(record["numbers"]), positions=np.asarray(record["positions"], dtype=float),
                   momenta=np.asarray(record["momenta"], dtype=float), cell=np.asarray(record["cell"], dtype=float),
                   pbc=np.asarray(record["pbc"], dtype=bool), step=int(record["step"]),
                   integrator=None if integrator is None else IntegratorState.from_record(integrator))


def md_state(atoms: Atoms, *, step: int = 0, dyn: Any = None) -> MDState:
    """The MD state of `atoms` at `step` (copies), with the integrator state of `dyn` if it has one."""
    return MDState(numbers=atoms.get_atomic_numbers().copy(), positions=atoms.get_positions(),
                   momenta=atoms.get_momenta(), cell=atoms.get_cell().array.copy(), pbc=atoms.get_pbc().copy(),
                   step=int(step), integrator=None if dyn is None else integrator_state(dyn))


def restore_md_state(atoms: Atoms, state: MDState, dyn: Any = None) -> int:
    """Put `state` back into `atoms` (and the step counter and integrator state into `dyn`); returns the step."""
    if not np.array_equal(state.numbers, atoms.get_atomic_numbers()):
        raise ValueError("MD state belongs to a different structure (atomic numbers differ)")
    atoms.set_cell(state.cell)
    atoms.set_pbc(state.pbc)
    atoms.set_positions(state.positions)
    atoms.set_momenta(state.momenta)
    if dyn is not None:
        dyn.nsteps = state.step
        sync_integrator(dyn, state.integrator)
    return state.step
