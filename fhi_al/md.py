"""Molecular dynamics for sampling: the dynamics factory (NVT Langevin, NPT), velocities, restartable MD state and
one guarded dynamics (blow-up detection, return to the last good frame with fresh velocities) that every MD runs in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.parallel import DummyMPI
from .neighbours import neighbour_list

from .npt import IntegratorState, integrator_state, make_npt, sync_integrator

log = logging.getLogger(__name__)

COM_DOF = 3  # centre-of-mass translation, removed from the kinetic temperature
DEFAULT_MAX_DISTANCE_A = 5.0
# Instantaneous temperatures of small molecules fluctuate strongly (chi-squared with 3N-3 dof):
# for 8 atoms, 5x the target has a probability below 1e-12 per step in a healthy run.
DEFAULT_MAX_TEMPERATURE_FACTOR = 5.0
# Cell collapse / explosion under NPT: the volume relative to the starting structure's. Condensed matter changes
# volume by far less at the pressures and temperatures an MD samples (Cu at 100 GPa: V/V0 ~ 0.72; melting: +5%),
# so a volume halved is a model without repulsion and a volume doubled is a cell flying apart.
MIN_VOLUME_RATIO = 0.5
MAX_VOLUME_RATIO = 2.0
# A cell whose volume is below this fraction of the product of its edge lengths has sheared flat: for two
# orthogonal vectors the fraction is the sine of the third vector's angle to their plane, so 0.05 is ~3 degrees
# (an fcc primitive cell has 0.71, a hexagonal one 0.87).
MIN_CELL_FLATNESS = 0.05
# Closest contact d_ij / (r_cov,i + r_cov,j) below which a frame has left the physical region. Equilibrium
# GFN2-xTB MD of water and ethanol stays above 0.9 at 500 K and 0.87 at 1000 K (measured, 200 frames each;
# tests/test_frame_guard.py checks it); a poor foundation model pushed atoms to 0.71 Å (O-H: 0.73 of the sum).
DEFAULT_MIN_DISTANCE_FRACTION = 0.75
# Largest reference force on an atom (eV/Å) that a stored label may carry: DP-GEN's upper trust level idea
# applied to the label itself. Healthy MD frames of water/ethanol at 1000 K stay below 9 eV/Å (measured, tests);
# the poor foundation's frames reached a median of 36 eV/Å.
DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A = 20.0
# Rejection reasons start with one of these kinds (the summary counts rejections per kind).
TOO_CLOSE, TOO_HOT = "atoms too close", "kinetic temperature too high"
FORCE_ABOVE = "reference force above bound"


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


CONTACT_SEARCH_FRACTION = 1.5  # contacts farther than this fraction of their covalent-radii sum are not looked at


def closest_contact_fraction(atoms: Atoms) -> float:
    """min over atom pairs of d_ij / (r_cov,i + r_cov,j) (periodic images included), from a linear-scaling
    neighbour list; inf for one atom or when no pair is within CONTACT_SEARCH_FRACTION of its radii sum."""
    if len(atoms) < 2:
        return float("inf")
    radii = covalent_radii[atoms.numbers]
    first, second, distances = neighbour_list("ijd", atoms, CONTACT_SEARCH_FRACTION * 2.0 * float(radii.max()))
    if len(distances) == 0:
        return float("inf")
    ratio = distances / (radii[first] + radii[second])
    return float(ratio.min()) if ratio.min() <= CONTACT_SEARCH_FRACTION else float("inf")


def reference_force_rejection(forces_eV_per_A: np.ndarray, max_force_eV_per_A: float | None) -> str | None:
    """A reason when the largest per-atom reference force exceeds the bound (None: keep the label)."""
    if max_force_eV_per_A is None or len(forces_eV_per_A) == 0:
        return None
    largest = float(np.linalg.norm(np.asarray(forces_eV_per_A, dtype=float), axis=1).max())
    if largest > max_force_eV_per_A:
        return (f"{FORCE_ABOVE}: largest reference force {largest:.1f} eV/Å > max_reference_force "
                f"{max_force_eV_per_A} eV/Å")
    return None


def rejection_kind(reason: str) -> str:
    """The kind a rejection reason starts with (TOO_CLOSE, TOO_HOT, FORCE_ABOVE), else 'other'."""
    return next((kind for kind in (TOO_CLOSE, TOO_HOT, FORCE_ABOVE) if reason.startswith(kind)), "other")


@dataclass(frozen=True)
class FrameBounds:
    """The physical region of model-driven MD (settings ACTIVE_LEARNING.min_distance_fraction,
    max_reference_force, max_temperature_factor): a frame outside it is neither labelled nor stored."""

    min_distance_fraction: float | None = DEFAULT_MIN_DISTANCE_FRACTION
    max_reference_force_eV_per_A: float | None = DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A
    max_temperature_factor: float = DEFAULT_MAX_TEMPERATURE_FACTOR

    @classmethod
    def from_settings(cls, al_settings: Any) -> "FrameBounds":
        return cls(min_distance_fraction=al_settings.min_distance_fraction,
                   max_reference_force_eV_per_A=al_settings.max_reference_force,
                   max_temperature_factor=al_settings.max_temperature_factor)

    def detector(self, temperature_K: float) -> "BlowUpDetector":
        return BlowUpDetector(target_temperature_K=temperature_K, max_temperature_factor=self.max_temperature_factor,
                              min_distance_fraction=self.min_distance_fraction)


class BlowUpDetector:
    """Tells whether a frame is unphysical: non-finite numbers, atoms closer than `min_distance_fraction` of
    their covalent radii sum, an atom far from all others, overheating, and for periodic frames a non-finite,
    flat, collapsed or exploded cell."""

    def __init__(self, *, target_temperature_K: float, max_distance_A: float = DEFAULT_MAX_DISTANCE_A,
                 max_temperature_factor: float = DEFAULT_MAX_TEMPERATURE_FACTOR,
                 min_distance_fraction: float | None = DEFAULT_MIN_DISTANCE_FRACTION):
        self.target_temperature_K = target_temperature_K
        self.max_distance_A = max_distance_A
        self.max_temperature_factor = max_temperature_factor
        self.min_distance_fraction = min_distance_fraction

    def check(self, atoms: Atoms, forces_eV_per_A: np.ndarray | None = None, *,
              reference_volume_A3: float | None = None) -> str | None:
        """A reason string if the frame blew up, else None.

        `forces_eV_per_A` defaults to the forces already computed by the attached calculator (no new
        calculation is triggered). With `reference_volume_A3` (the starting cell's volume) a periodic cell
        is also checked for collapse and explosion.
        """
        if forces_eV_per_A is None and atoms.calc is not None:
            forces_eV_per_A = atoms.calc.results.get("forces")
        cell_reason = cell_problem(atoms, reference_volume_A3)
        if cell_reason is not None:
            return cell_reason
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
            return (f"{TOO_HOT}: {temperature_K:.0f} K above {self.max_temperature_factor} x "
                    f"target {self.target_temperature_K:.0f} K")
        contact = closest_contact_fraction(atoms) if self.min_distance_fraction is not None else float("inf")
        if self.min_distance_fraction is not None and contact < self.min_distance_fraction:
            return (f"{TOO_CLOSE}: closest contact {contact:.2f} of the covalent radii sum < min_distance_fraction "
                    f"{self.min_distance_fraction}")
        return None

    def isolated_atoms(self, atoms: Atoms) -> list[int]:
        if len(atoms) < 2:
            return []
        has_neighbour = np.unique(neighbour_list("i", atoms, self.max_distance_A))
        return sorted(set(range(len(atoms))) - set(has_neighbour.tolist()))


def cell_problem(atoms: Atoms, reference_volume_A3: float | None) -> str | None:
    """Why the cell of a periodic frame is unphysical (non-finite, sheared flat, volume collapsed or exploded
    relative to `reference_volume_A3`), else None. Non-periodic frames have no cell to check."""
    if not atoms.pbc.any():
        return None
    cell = atoms.get_cell().array
    if not np.isfinite(cell).all():
        return "non-finite cell"
    if not atoms.pbc.all():
        return None
    volume_A3 = abs(float(np.linalg.det(cell)))
    edges = float(np.prod(np.linalg.norm(cell, axis=1)))
    if edges == 0.0 or volume_A3 < MIN_CELL_FLATNESS * edges:
        return f"degenerate cell (volume {volume_A3:.3g} Å³ for edge lengths {np.linalg.norm(cell, axis=1)})"
    if reference_volume_A3 is None:
        return None
    ratio = volume_A3 / reference_volume_A3
    if ratio < MIN_VOLUME_RATIO:
        return f"cell collapsed: volume {ratio:.2f} x the starting volume (below {MIN_VOLUME_RATIO})"
    if ratio > MAX_VOLUME_RATIO:
        return f"cell exploded: volume {ratio:.2f} x the starting volume (above {MAX_VOLUME_RATIO})"
    return None


class LastGoodFrame:
    """Remembers the last frame that passed the checks and puts a trajectory back on it."""

    def __init__(self, atoms: Atoms, *, step: int = 0):
        self.resets = 0
        self.state = md_state(atoms, step=step)
        self.previous: MDState | None = None  # the good frame before `state`

    def record(self, atoms: Atoms, *, step: int) -> None:
        self.previous, self.state = self.state, md_state(atoms, step=step)

    def step_back(self) -> None:
        """The last good frame itself turned out bad (e.g. its label): the one before becomes the last good."""
        if self.previous is not None:
            self.state = self.previous

    def reset(self, atoms: Atoms, *, temperature_K: float, rng: np.random.Generator) -> int:
        """Back to the last good positions and cell with fresh Maxwell-Boltzmann velocities; returns its step."""
        restore_md_state(atoms, self.state)
        initialize_velocities(atoms, temperature_K, rng)
        self.resets += 1
        return self.state.step


class BlowUp(Exception):
    """Raised by the guard observer to end a run on a frame that failed the checks."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GuardedDynamics:
    """One guarded MD: any ASE dynamics (Langevin, NPT integrators) run in segments of `run(steps)`, with
    observers attached through `dyn.attach`.

    The guard observer checks the frame each segment ends on (non-finite numbers, a flying atom,
    overheating, a collapsed, exploded or degenerate cell); a good frame becomes the last good frame and is
    handed to the `on_good_frame` observers.
    A bad frame, or a failed calculation, puts the trajectory back on the last good frame with fresh
    Maxwell-Boltzmann velocities (from `rng`); the step counter keeps running, so ids made from the step
    stay unique. Only a segment's last frame is checked (one neighbour list per hand-out, not per step): the
    samplers' behaviour and random streams stay those of the restart records written so far.
    """

    def __init__(self, dyn: Any, *, rng: np.random.Generator, temperature_K: float, name: str = "MD",
                 failure: str = "calculation failed", detector: BlowUpDetector | None = None):
        self.dyn = dyn
        self.rng = rng
        self.temperature_K = temperature_K
        self.name = name
        self.failure = failure
        self.detector = detector or BlowUpDetector(target_temperature_K=temperature_K)
        self.last_good = LastGoodFrame(dyn.atoms, step=int(dyn.nsteps))
        # the cell checks compare with the structure the dynamics was built on (the same after a restart)
        self.reference_volume_A3 = float(dyn.atoms.get_volume()) if dyn.atoms.pbc.all() else None
        self.resets = 0
        self.resets_in_a_row = 0  # since the last frame that passed the checks
        self.events: list[tuple[int, str]] = []  # (step, reason) of every reset
        self.good_frame_observers: list[Callable[[], None]] = []
        self._checked = False
        dyn.attach(self._guard, interval=1)

    @property
    def atoms(self) -> Atoms:
        return self.dyn.atoms

    @property
    def step(self) -> int:
        return int(self.dyn.nsteps)

    def on_good_frame(self, observer: Callable[[], None]) -> None:
        """Call `observer()` on every segment-end frame that passed the checks (e.g. a frame hand-out)."""
        self.good_frame_observers.append(observer)

    def run(self, steps: int) -> str | None:
        """Run `steps` steps; returns None on a good frame, else the reason of the reset that followed."""
        self._checked = False
        try:
            self.dyn.run(steps)
            if not self._checked:  # a run of 0 steps past step 0 calls no observer
                self._guard(final=True)
        except BlowUp as blow_up:
            reason = blow_up.reason
        except Exception as error:  # noqa: BLE001 - any failure of the driving calculator is a bad frame
            reason = f"{self.failure}: {type(error).__name__}: {error}"
        else:
            return None
        self.reset(reason)
        return reason

    def _guard(self, final: bool = False) -> None:
        if not final and self.dyn.nsteps != getattr(self.dyn, "max_steps", None):
            return  # only the frame a segment ends on is checked
        self._checked = True
        reason = self.detector.check(self.atoms, reference_volume_A3=self.reference_volume_A3)
        if reason is not None:
            raise BlowUp(reason)
        self.last_good.record(self.atoms, step=self.step)
        self.resets_in_a_row = 0
        for observer in self.good_frame_observers:
            observer()

    def reset(self, reason: str) -> None:
        """Back to the last good frame (positions and cell) with fresh velocities, and an NPT integrator's
        chains and cell momenta at rest (also for a reason found outside, e.g. an uncertainty above its upper
        bound)."""
        good_step = self.last_good.reset(self.atoms, temperature_K=self.temperature_K, rng=self.rng)
        sync_integrator(self.dyn, None)
        if self.atoms.calc is not None:
            self.atoms.calc.reset()
        self.resets += 1
        self.resets_in_a_row += 1
        self.events.append((self.step, reason))
        log.warning("%s step %d: %s; back to the frame of step %d with fresh velocities", self.name, self.step,
                    reason, good_step)

    def step_back(self, reason: str) -> None:
        """The last good frame was rejected after all (its reference label left the physical region): back to
        the good frame before it with fresh velocities."""
        self.last_good.step_back()
        self.reset(reason)

    def rejections(self) -> dict[str, int]:
        """Resets of this session per kind of reason (md.rejection_kind)."""
        counts: dict[str, int] = {}
        for _, reason in self.events:
            kind = rejection_kind(reason)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def snapshot(self) -> Atoms:
        """A calculator-free copy of the current frame."""
        frame = self.atoms.copy()
        frame.calc = None
        return frame

    def last_good_frame(self) -> Atoms:
        """The frame a reset goes back to (calculator-free copy)."""
        frame = self.snapshot()
        frame.set_cell(self.last_good.state.cell)
        frame.set_positions(self.last_good.state.positions)
        return frame

    def state(self) -> MDState:
        """The MD state of the current frame with the integrator's (the RNG state is saved by the owner of
        `rng`)."""
        return md_state(self.atoms, step=self.step, dyn=self.dyn)

    def restore(self, state: MDState, *, last_good: MDState | None = None) -> None:
        """Continue from a saved MD state; the last good frame is `last_good` or the restored frame."""
        restore_md_state(self.atoms, state, self.dyn)
        if last_good is None:
            self.last_good.record(self.atoms, step=self.step)
        else:
            self.last_good.state = last_good
        if self.atoms.calc is not None:
            self.atoms.calc.reset()
