"""Constant-pressure dynamics: ASE's NPT integrators (Berendsen, MTK, isotropic MTK) built from the settings'
units, and the integrator state a restart carries that ASE keeps inside the dynamics object rather than in Atoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT
from ase.md.nptberendsen import NPTBerendsen

BAROSTATS = ("berendsen", "mtk", "isomtk")


def pressure_au(pressure_Pa: float) -> float:
    """Pa -> ASE's pressure unit (eV/Å³)."""
    return pressure_Pa * units.Pascal


def check_periodic(atoms: Atoms) -> None:
    """NPT changes the cell: it needs a structure periodic in all three directions."""
    if not atoms.pbc.all():
        raise ValueError(f"NPT needs a structure periodic in all three directions (pbc is {atoms.pbc.tolist()})")


def make_npt(atoms: Atoms, *, barostat: str, temperature_K: float, timestep_fs: float, pressure_Pa: float,
             tdamp_fs: float, pdamp_fs: float, tchain: int, pchain: int, tloop: int, ploop: int, taut_fs: float,
             taup_fs: float, compressibility_A3_per_eV: float) -> Any:
    """The NPT integrator `barostat` on `atoms`; MTK brings its own Nosé-Hoover chain thermostat, Berendsen
    rescales velocities with time constant `taut_fs`."""
    check_periodic(atoms)
    timestep = timestep_fs * units.fs
    if barostat == "berendsen":
        return NPTBerendsen(atoms, timestep, temperature_K=temperature_K, pressure_au=pressure_au(pressure_Pa),
                            taut=taut_fs * units.fs, taup=taup_fs * units.fs,
                            compressibility_au=compressibility_A3_per_eV)
    chains = {"tdamp": tdamp_fs * units.fs, "pdamp": pdamp_fs * units.fs, "tchain": tchain, "pchain": pchain,
              "tloop": tloop, "ploop": ploop}
    if barostat == "mtk":
        return MTKNPT(atoms, timestep, temperature_K=temperature_K, pressure_au=pressure_au(pressure_Pa), **chains)
    if barostat == "isomtk":
        return IsotropicMTKNPT(atoms, timestep, temperature_K=temperature_K, pressure_au=pressure_au(pressure_Pa),
                               **chains)
    raise ValueError(f"unknown barostat {barostat!r}; allowed: {', '.join(BAROSTATS)}")


# ------------------------------------------------------------------------------------- integrator state
@dataclass
class ChainState:
    """Positions and momenta of a Nosé-Hoover chain (thermostat: eta, p_eta; barostat: xi, p_xi)."""

    positions: np.ndarray
    momenta: np.ndarray


@dataclass
class IntegratorState:
    """What an MTK integrator holds beyond positions, momenta and cell: its two chains and the cell momenta
    (MTKNPT: the 3x3 p_g; IsotropicMTKNPT: [p_eps], with the cell kept as reference_cell x exp(eps))."""

    thermostat: ChainState
    barostat: ChainState
    cell_momenta: np.ndarray
    log_strain: float = 0.0  # isotropic MTK: eps
    reference_cell: np.ndarray | None = None  # isotropic MTK: the cell at eps = 0 (Å)

    def to_record(self) -> dict[str, Any]:
        return {"thermostat": [self.thermostat.positions, self.thermostat.momenta],
                "barostat": [self.barostat.positions, self.barostat.momenta],
                "cell_momenta": self.cell_momenta, "log_strain": float(self.log_strain),
                "reference_cell": self.reference_cell}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "IntegratorState":
        def chain(pair: list) -> ChainState:
            return ChainState(positions=np.asarray(pair[0], dtype=float), momenta=np.asarray(pair[1], dtype=float))

        reference = record.get("reference_cell")
        return cls(thermostat=chain(record["thermostat"]), barostat=chain(record["barostat"]),
                   cell_momenta=np.asarray(record["cell_momenta"], dtype=float),
                   log_strain=float(record.get("log_strain", 0.0)),
                   reference_cell=None if reference is None else np.asarray(reference, dtype=float))


def integrator_state(dyn: Any) -> IntegratorState | None:
    """The internal state of an MTK integrator (copies); None for integrators whose state is all in Atoms
    (Langevin: its RNG is saved by its owner; NPTBerendsen: positions, momenta and cell)."""
    if not isinstance(dyn, (MTKNPT, IsotropicMTKNPT)):
        return None
    thermostat = ChainState(dyn._thermostat._eta.copy(), dyn._thermostat._p_eta.copy())
    barostat = ChainState(dyn._barostat._xi.copy(), dyn._barostat._p_xi.copy())
    if isinstance(dyn, IsotropicMTKNPT):
        return IntegratorState(thermostat, barostat, np.array([dyn._p_eps], dtype=float), float(dyn._eps),
                               dyn._cell0.copy())
    return IntegratorState(thermostat, barostat, dyn._p_g.copy())


def sync_integrator(dyn: Any, state: IntegratorState | None) -> None:
    """Make an MTK integrator continue from its Atoms (positions, momenta, cell) and `state`; without a state,
    the chains and the cell momenta start at rest from the current cell (a fresh start, e.g. after a reset).

    ASE's MTK integrators copy positions, momenta and cell at construction and integrate their copies, so
    anything that puts new values into Atoms must pass them on here. Other integrators read Atoms each step.
    """
    if not isinstance(dyn, (MTKNPT, IsotropicMTKNPT)):
        return
    atoms = dyn.atoms
    dyn._q, dyn._p = atoms.get_positions(), atoms.get_momenta()
    thermostat, barostat = dyn._thermostat, dyn._barostat
    if state is None:
        thermostat._eta, thermostat._p_eta = np.zeros_like(thermostat._eta), np.zeros_like(thermostat._p_eta)
        barostat._xi, barostat._p_xi = np.zeros_like(barostat._xi), np.zeros_like(barostat._p_xi)
    else:
        thermostat._eta, thermostat._p_eta = state.thermostat.positions.copy(), state.thermostat.momenta.copy()
        barostat._xi, barostat._p_xi = state.barostat.positions.copy(), state.barostat.momenta.copy()
    if isinstance(dyn, IsotropicMTKNPT):
        if state is None or state.reference_cell is None:
            dyn._cell0, dyn._eps, dyn._p_eps = np.array(atoms.get_cell()), 0.0, 0.0
        else:
            dyn._cell0, dyn._eps = state.reference_cell.copy(), state.log_strain
            dyn._p_eps = float(state.cell_momenta[0])
        dyn._volume0 = abs(float(np.linalg.det(dyn._cell0)))
        return
    dyn._h = np.array(atoms.get_cell())
    dyn._init_cell_momenta()
    if state is not None:
        dyn._p_g = state.cell_momenta.copy()
