"""Molecular dynamics for sampling: an ASE Langevin factory, velocities, restartable MD state and
detection of exploding trajectories with a reset to the last good frame.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.neighborlist import neighbor_list
from ase.parallel import DummyMPI

log = logging.getLogger(__name__)

COM_DOF = 3  # centre-of-mass translation, removed from the kinetic temperature
DEFAULT_MAX_DISTANCE_A = 5.0
# Instantaneous temperatures of small molecules fluctuate strongly (chi-squared with 3N-3 dof):
# for 8 atoms, 5x the target has a probability below 1e-12 per step in a healthy run.
DEFAULT_MAX_TEMPERATURE_FACTOR = 5.0


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


def md_state(atoms: Atoms, *, step: int = 0) -> dict[str, Any]:
    """Everything needed to continue a trajectory (with the RNG state from fhi_al.restart.rng_state)."""
    return {"numbers": atoms.get_atomic_numbers().copy(), "positions": atoms.get_positions(),
            "momenta": atoms.get_momenta(), "cell": atoms.get_cell().array.copy(), "pbc": atoms.get_pbc().copy(),
            "step": int(step)}


def restore_md_state(atoms: Atoms, state: dict[str, Any], dyn: Langevin | None = None) -> int:
    """Put `state` back into `atoms` (and the step counter into `dyn`); returns the step."""
    numbers = np.asarray(state["numbers"])
    if not np.array_equal(numbers, atoms.get_atomic_numbers()):
        raise ValueError("MD state belongs to a different structure (atomic numbers differ)")
    atoms.set_cell(state["cell"])
    atoms.set_pbc(state["pbc"])
    atoms.set_positions(state["positions"])
    atoms.set_momenta(state["momenta"])
    step = int(state["step"])
    if dyn is not None:
        dyn.nsteps = step
    return step


class BlowUpDetector:
    """Tells whether a frame is unphysical: non-finite numbers, an atom far from all others, overheating."""

    def __init__(self, *, target_temperature_K: float, max_distance_A: float = DEFAULT_MAX_DISTANCE_A,
                 max_temperature_factor: float = DEFAULT_MAX_TEMPERATURE_FACTOR):
        self.target_temperature_K = target_temperature_K
        self.max_distance_A = max_distance_A
        self.max_temperature_factor = max_temperature_factor

    def check(self, atoms: Atoms, forces_eV_per_A: np.ndarray | None = None) -> str | None:
        """A reason string if the frame blew up, else None.

        `forces_eV_per_A` defaults to the forces already computed by the attached calculator (no new
        calculation is triggered).
        """
        if forces_eV_per_A is None and atoms.calc is not None:
            forces_eV_per_A = atoms.calc.results.get("forces")
        if not np.isfinite(atoms.get_positions()).all():
            return "non-finite positions"
        if not np.isfinite(atoms.get_momenta()).all():
            return "non-finite velocities"
        if forces_eV_per_A is not None and not np.isfinite(forces_eV_per_A).all():
            return "non-finite forces"
        isolated = self.isolated_atoms(atoms)
        if isolated:
            return (f"atom(s) {isolated} farther than {self.max_distance_A} Å from all others")
        temperature_K = kinetic_temperature_K(atoms)
        if temperature_K > self.max_temperature_factor * self.target_temperature_K:
            return (f"kinetic temperature {temperature_K:.0f} K above {self.max_temperature_factor} x "
                    f"target {self.target_temperature_K:.0f} K")
        return None

    def isolated_atoms(self, atoms: Atoms) -> list[int]:
        if len(atoms) < 2:
            return []
        has_neighbour = np.unique(neighbor_list("i", atoms, self.max_distance_A))
        return sorted(set(range(len(atoms))) - set(has_neighbour.tolist()))


class LastGoodFrame:
    """Remembers the last frame that passed the checks and puts a trajectory back on it."""

    def __init__(self, atoms: Atoms, *, step: int = 0):
        self.resets = 0
        self.record(atoms, step=step)

    def record(self, atoms: Atoms, *, step: int) -> None:
        self.state = md_state(atoms, step=step)

    def reset(self, atoms: Atoms, *, temperature_K: float, rng: np.random.Generator) -> int:
        """Back to the last good positions with fresh Maxwell-Boltzmann velocities; returns its step."""
        restore_md_state(atoms, self.state)
        initialize_velocities(atoms, temperature_K, rng)
        self.resets += 1
        return int(self.state["step"])


class BlowUpGuard:
    """Observer for `dyn.attach(guard, interval=...)`: checks each visited frame, records good ones and
    resets the trajectory to the last good frame (fresh velocities, step counter kept) on a blow-up."""

    def __init__(self, dyn: Langevin, detector: BlowUpDetector, rng: np.random.Generator, *, name: str = "MD"):
        self.dyn = dyn
        self.detector = detector
        self.rng = rng
        self.name = name
        self.last_good = LastGoodFrame(dyn.atoms, step=dyn.nsteps)
        self.events: list[tuple[int, str]] = []

    def __call__(self) -> None:
        atoms = self.dyn.atoms
        reason = self.detector.check(atoms)
        if reason is None:
            self.last_good.record(atoms, step=self.dyn.nsteps)
            return
        self.events.append((self.dyn.nsteps, reason))
        good_step = int(self.last_good.state["step"])
        log.warning("%s step %d: %s; resetting to the frame of step %d with fresh velocities",
                    self.name, self.dyn.nsteps, reason, good_step)
        self.last_good.reset(atoms, temperature_K=self.detector.target_temperature_K, rng=self.rng)
