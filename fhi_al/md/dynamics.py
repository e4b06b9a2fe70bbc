"""The dynamics every MD of the tool runs: the settings of an MD (MDParameters), the integrator they choose (NVT
Langevin or an NPT barostat), Maxwell-Boltzmann velocities and the kinetic temperature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.parallel import DummyMPI

from .npt import make_npt

log = logging.getLogger(__name__)

COM_DOF = 3  # centre-of-mass translation, removed from the kinetic temperature


@dataclass(frozen=True)
class MDParameters:
    """The ensemble of one MD the tool runs (settings section MD, or its entry for one trajectory).

    NVT: Langevin with `friction_per_fs`. NPT: `barostat` berendsen (velocity rescaling with `taut_fs`, cell
    scaling with `taup_fs` and `compressibility_A3_per_eV`), mtk (full cell) or isomtk (isotropic volume), both
    MTK with Nosé-Hoover chains (`tdamp_fs`, `tchain`, `tloop` for the particles; `pdamp_fs`, `pchain`, `ploop`
    for the cell).
    """

    temperature_K: float
    timestep_fs: float
    friction_per_fs: float
    stat_ensemble: str = "NVT"
    barostat: str = "mtk"
    pressure_Pa: float = 101325.0
    tdamp_fs: float = 50.0
    pdamp_fs: float = 500.0
    tchain: int = 3
    pchain: int = 3
    tloop: int = 1
    ploop: int = 1
    taut_fs: float = 500.0
    taup_fs: float = 1000.0
    compressibility_A3_per_eV: float = 1.0

    @property
    def npt(self) -> bool:
        return self.stat_ensemble == "NPT"

    @classmethod
    def from_settings(cls, md_settings: Any) -> "MDParameters":
        return cls(temperature_K=md_settings.temperature, timestep_fs=md_settings.timestep,
                   friction_per_fs=md_settings.friction, stat_ensemble=md_settings.stat_ensemble,
                   barostat=md_settings.barostat, pressure_Pa=md_settings.pressure, tdamp_fs=md_settings.tdamp,
                   pdamp_fs=md_settings.pdamp, tchain=md_settings.tchain, pchain=md_settings.pchain,
                   tloop=md_settings.tloop, ploop=md_settings.ploop, taut_fs=md_settings.taut,
                   taup_fs=md_settings.taup, compressibility_A3_per_eV=md_settings.compressibility_au)


def make_dynamics(atoms: Atoms, *, md: MDParameters, rng: np.random.Generator) -> Any:
    """The dynamics of `md` on `atoms`: NVT Langevin (driven by `rng`) or an NPT integrator (deterministic;
    ValueError for a structure that is not periodic in all directions)."""
    if md.npt:
        return make_npt(atoms, barostat=md.barostat, temperature_K=md.temperature_K, timestep_fs=md.timestep_fs,
                        pressure_Pa=md.pressure_Pa, tdamp_fs=md.tdamp_fs, pdamp_fs=md.pdamp_fs, tchain=md.tchain,
                        pchain=md.pchain, tloop=md.tloop, ploop=md.ploop, taut_fs=md.taut_fs, taup_fs=md.taup_fs,
                        compressibility_A3_per_eV=md.compressibility_A3_per_eV)
    return make_langevin(atoms, temperature_K=md.temperature_K, timestep_fs=md.timestep_fs,
                        friction_per_fs=md.friction_per_fs, rng=rng)


def make_langevin(atoms: Atoms, *, temperature_K: float, timestep_fs: float, friction_per_fs: float,
                  rng: np.random.Generator, fixcm: bool = False, comm: Any = None) -> Langevin:
    """ASE Langevin dynamics with the units of the settings files.

    `fixcm=False` by default: ASE's `fixcm=True` heats small molecules (~900 K for a nominal 500 K on
    an 8-atom molecule). `comm` defaults to a one-process communicator, so that trajectories on
    different ranks never exchange their random numbers through ASE's world communicator.
    """
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, fixcm=fixcm, rng=rng,
                    comm=DummyMPI() if comm is None else comm)


def initialize_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at `temperature_K` with zero centre-of-mass momentum."""
    # Drawn here rather than with ASE's helper, which broadcasts over ase.parallel.world under MPI.
    masses = atoms.get_masses()
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_K)[:, None])
    if len(atoms) > 1:
        Stationary(atoms)


def kinetic_temperature_K(atoms: Atoms) -> float:
    """Temperature of the motion relative to the centre of mass: 2 (E_kin - E_kin,COM) / ((3N-3) k_B).

    The centre-of-mass kinetic energy and its 3 degrees of freedom are removed, which is right both when
    the COM momentum is held at zero and when a Langevin thermostat (fixcm=False) lets it fluctuate.
    A single atom keeps all 3 degrees of freedom.
    """
    momenta = atoms.get_momenta()
    masses = atoms.get_masses()
    kinetic_eV = 0.5 * float(np.sum(momenta**2 / masses[:, None]))
    dof = 3 * len(atoms)
    if len(atoms) > 1:
        total = momenta.sum(axis=0)
        kinetic_eV -= 0.5 * float(total @ total) / float(masses.sum())
        dof -= COM_DOF
    return 2.0 * kinetic_eV / (dof * units.kB)
