"""Normal-mode sampling of initial structures: relax with the reference, one finite-difference Hessian, then
independent classical harmonic samples at a temperature, without any ab initio MD.

Units (ASE's): lengths in Å, energies in eV, masses in amu (1 amu is ASE's mass unit), so mass-weighted
Hessian eigenvalues are omega^2 in eV/(Å^2 amu) and mass-weighted coordinates are in Å sqrt(amu).
Wavenumbers are in cm^-1; a negative one stands for an imaginary frequency.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS

from ..durable import atomic_write_bytes
from ..errors import InputError
from ..logs import DETAIL
from ..md import closest_contact_fraction
from ..references import compute_label
from ..references.ledger import HESSIAN, RELAXATION
from ..restart import restore_rng, rng_state
from .sampling import Frame
from .state import SamplerState

log = logging.getLogger(__name__)

LabelCall = Callable[[Atoms, str], "tuple[float, np.ndarray]"]  # (atoms, purpose) -> (energy_eV, forces)

HBAR_EV_ASE_TIME = units._hbar * units.J * units.s  # hbar in eV x ASE time unit (Å sqrt(amu/eV))
FREQUENCY_FLOOR_CM = 50.0  # softer modes (and |imaginary| ones) are sampled as if they had this wavenumber
DEFAULT_DISPLACEMENT_A = 0.01  # finite-difference step of the Hessian
MIN_CONTACT_FRACTION = 0.6  # a sample with d_ij < this x (r_cov,i + r_cov,j) is redrawn
MAX_REDRAWS = 1000  # consecutive rejected samples before sampling gives up
LINEAR_INERTIA_RATIO = 1e-6  # principal moment / largest moment below which a molecule counts as linear
RELAX_PURPOSE = RELAXATION
HESSIAN_PURPOSE = HESSIAN


def eigenvalue_from_wavenumber(wavenumber_cm: float) -> float:
    """omega^2 in eV/(Å^2 amu) of a mode with this wavenumber (cm^-1)."""
    return (wavenumber_cm * units.invcm / HBAR_EV_ASE_TIME) ** 2


def wavenumber_from_eigenvalue(eigenvalue_eV_per_A2_amu: np.ndarray) -> np.ndarray:
    """Wavenumbers (cm^-1) of mass-weighted Hessian eigenvalues; negative eigenvalues give negative numbers."""
    eigenvalue = np.asarray(eigenvalue_eV_per_A2_amu, dtype=float)
    return np.sign(eigenvalue) * HBAR_EV_ASE_TIME * np.sqrt(np.abs(eigenvalue)) / units.invcm


# ---------------------------------------------------------------- reference calls


class LabelCallCalculator(Calculator):
    """An ASE calculator whose every evaluation is `label_call(atoms, purpose)`, so the caller sees (counts,
    records in its ledger) each reference call an optimizer makes."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, label_call: LabelCall, *, purpose: str):
        super().__init__()
        self.label_call = label_call
        self.purpose = purpose

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = None
        energy, forces = self.label_call(work, self.purpose)
        forces = np.array(forces, dtype=float).reshape(len(work), 3)
        self.results = {"energy": float(energy), "free_energy": float(energy), "forces": forces}


def direct_label_call(calc: Calculator) -> LabelCall:
    """A label_call that evaluates `calc` directly (raw forces, failures as ReferenceError), counting nothing."""
    def label_call(atoms: Atoms, purpose: str) -> tuple[float, np.ndarray]:
        return compute_label(calc, atoms)

    return label_call


def relax(calc: Calculator | None, atoms: Atoms, *, fmax_eV_per_A: float = 0.05, max_steps: int = 200,
          label_call: LabelCall | None = None) -> Atoms:
    """`atoms` relaxed by BFGS on the reference until max |F| < fmax_eV_per_A or after max_steps steps.

    Every force call goes through `label_call(atoms, "relax")`; without one, `calc` is evaluated directly.
    Returns a copy without calculator.
    """
    if label_call is None and calc is None:
        raise ValueError("relax needs a reference calculator or a label_call")
    label_call = label_call or direct_label_call(calc)
    work = atoms.copy()
    work.calc = LabelCallCalculator(label_call, purpose=RELAX_PURPOSE)
    optimizer = BFGS(work, logfile=None)
    converged = optimizer.run(fmax=fmax_eV_per_A, steps=max_steps)
    fmax = float(np.linalg.norm(work.get_forces(), axis=1).max())
    if converged:
        log.info("relaxation converged after %d steps (max force %.3g eV/Å < %g)", optimizer.nsteps, fmax,
                 fmax_eV_per_A)
    else:
        log.warning("relaxation stopped at max_steps=%d with max force %.3g eV/Å (> %g); the Hessian is taken "
                    "there", max_steps, fmax, fmax_eV_per_A)
    relaxed = work.copy()
    relaxed.calc = None
    return relaxed


def finite_difference_hessian(atoms: Atoms, *, label_call: LabelCall, displacement_A: float = DEFAULT_DISPLACEMENT_A,
                              symmetrize: bool = True) -> np.ndarray:
    """The [3N, 3N] Hessian in eV/Å^2 by central differences of the forces (6N calls of
    `label_call(atoms, "hessian")`); symmetrized unless `symmetrize` is False (column j = -dF/dx_j)."""
    positions = atoms.get_positions()
    n_dof = 3 * len(atoms)
    hessian = np.empty((n_dof, n_dof))
    for column in range(n_dof):
        forces = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.calc = None
            moved = positions.copy()
            moved.flat[column] += sign * displacement_A
            displaced.set_positions(moved)
            forces.append(np.asarray(label_call(displaced, HESSIAN_PURPOSE)[1], dtype=float).ravel())
        hessian[:, column] = -(forces[0] - forces[1]) / (2.0 * displacement_A)
    asymmetry = float(np.abs(hessian - hessian.T).max())
    log.debug("finite-difference Hessian: largest asymmetry %.3g eV/Å^2 (symmetrized)", asymmetry)
    return 0.5 * (hessian + hessian.T) if symmetrize else hessian


# ---------------------------------------------------------------- normal modes


@dataclass
class NormalModes:
    """The vibrational modes of a structure (rigid modes removed).

    `vectors[:, k]` is mode k in mass-weighted Cartesian coordinates (orthonormal columns, [3N, n_modes]);
    `eigenvalues_eV_per_A2_amu` are the omega^2 used for sampling (|eigenvalue| raised to the floor);
    `wavenumbers_cm` are the frequencies as computed (negative: imaginary).
    """

    wavenumbers_cm: np.ndarray
    eigenvalues_eV_per_A2_amu: np.ndarray
    vectors: np.ndarray
    masses_amu: np.ndarray
    n_rigid: int

    @property
    def n_modes(self) -> int:
        return len(self.eigenvalues_eV_per_A2_amu)

    @property
    def n_imaginary(self) -> int:
        return int(np.sum(self.wavenumbers_cm < 0.0))


def rigid_basis(atoms: Atoms, *, periodic: bool) -> np.ndarray:
    """Orthonormal mass-weighted translations (and, for a molecule, rotations about the principal axes
    with a non-zero moment: 3 for a non-linear molecule, 2 for a linear one), [3N, n_rigid]."""
    sqrt_m = np.sqrt(atoms.get_masses())
    vectors = []
    for axis in np.eye(3):
        vectors.append((sqrt_m[:, None] * axis).ravel())
    if not periodic and len(atoms) > 1:
        moments, axes = atoms.get_moments_of_inertia(vectors=True)
        relative = atoms.get_positions() - atoms.get_center_of_mass()
        for moment, axis in zip(moments, axes):
            if moment > LINEAR_INERTIA_RATIO * moments.max():
                vectors.append((sqrt_m[:, None] * np.cross(axis, relative)).ravel())
    basis = np.array(vectors).T
    return basis / np.linalg.norm(basis, axis=0)


def normal_modes(atoms: Atoms, hessian: np.ndarray, *, periodic: bool) -> NormalModes:
    """Vibrational modes of the [3N, 3N] Hessian (eV/Å^2) of `atoms`.

    The mass-weighted Hessian is diagonalized on the orthogonal complement of the rigid modes (translations
    and rotations projected out exactly: 6 dropped for a non-linear molecule, 5 for a linear one, 3 for a
    periodic cell). Imaginary modes are kept with |eigenvalue| (warning); eigenvalues below the one of
    FREQUENCY_FLOOR_CM are raised to it, so that no mode gets an unbounded amplitude.
    """
    masses = atoms.get_masses()
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    weighted = inv_sqrt_m[:, None] * np.asarray(hessian, dtype=float) * inv_sqrt_m[None, :]
    rigid = rigid_basis(atoms, periodic=periodic)
    n_rigid = rigid.shape[1]
    complement = np.linalg.svd(rigid, full_matrices=True)[0][:, n_rigid:]
    eigenvalues, inner = np.linalg.eigh(complement.T @ weighted @ complement)
    wavenumbers = wavenumber_from_eigenvalue(eigenvalues)
    imaginary = wavenumbers < 0.0
    if imaginary.any():
        listed = ", ".join(f"{abs(w):.0f}i" for w in wavenumbers[imaginary])
        log.warning("%d imaginary mode(s) (%s cm^-1): the structure is not a minimum; they are sampled with "
                    "|frequency|", int(imaginary.sum()), listed)
    floor = eigenvalue_from_wavenumber(FREQUENCY_FLOOR_CM)
    soft = np.abs(eigenvalues) < floor
    if soft.any():
        log.info("%d mode(s) below %g cm^-1 are sampled at %g cm^-1", int(soft.sum()), FREQUENCY_FLOOR_CM,
                 FREQUENCY_FLOOR_CM)
    log.info("normal modes: %d rigid modes dropped, wavenumbers %s cm^-1", n_rigid,
             " ".join(f"{w:.0f}" for w in wavenumbers), extra=DETAIL)
    return NormalModes(wavenumbers_cm=wavenumbers, eigenvalues_eV_per_A2_amu=np.maximum(np.abs(eigenvalues), floor),
                       vectors=complement @ inner, masses_amu=masses, n_rigid=n_rigid)


# ---------------------------------------------------------------- sampling


class NormalModeSampler:
    """Independent samples of the classical harmonic distribution at temperature_K around `atoms0`.

    Mode amplitude q_k ~ N(0, kB T / omega_k^2) (Å sqrt(amu)); displacement = M^-1/2 U q (Å). Mean harmonic
    energy 0.5 sum_k omega_k^2 q_k^2 = n_modes kB T / 2. A sample with two atoms closer than
    MIN_CONTACT_FRACTION of their covalent radii sum is redrawn; `failures` counts the redraws.
    The interface is the one of LangevinSampler: frames carry md_step = sample index (1, 2, ...), no results.
    """

    def __init__(self, atoms0: Atoms, modes: NormalModes, *, temperature_K: float, rng: np.random.Generator,
                 name: str = "normal-mode sampling"):
        if modes.vectors.shape[0] != 3 * len(atoms0):
            raise ValueError(f"{name}: modes of {modes.vectors.shape[0] // 3} atoms for a structure of "
                             f"{len(atoms0)}")
        if not temperature_K >= 0.0:
            raise InputError(f"{name}: the temperature must be >= 0 K, got {temperature_K}", where="temperature_K")
        if closest_contact_fraction(atoms0) < MIN_CONTACT_FRACTION:
            raise InputError(f"{name}: the reference structure itself has atoms closer than {MIN_CONTACT_FRACTION} "
                             f"of their covalent radii sum")
        self.atoms0 = atoms0.copy()
        self.atoms0.calc = None
        self.modes = modes
        self.temperature_K = float(temperature_K)
        self.rng = rng
        self.name = name
        self.failures = 0
        self._samples = 0
        self._sigma = np.sqrt(units.kB * self.temperature_K / modes.eigenvalues_eV_per_A2_amu)
        self._inv_sqrt_m = np.repeat(1.0 / np.sqrt(modes.masses_amu), 3)

    @property
    def step(self) -> int:
        return self._samples

    def displacement_A(self, amplitudes: np.ndarray) -> np.ndarray:
        """Cartesian displacements [N, 3] in Å of mode amplitudes q (Å sqrt(amu))."""
        return (self._inv_sqrt_m * (self.modes.vectors @ amplitudes)).reshape(-1, 3)

    def next_frame(self) -> Frame:
        for _ in range(MAX_REDRAWS):
            amplitudes = self._sigma * self.rng.standard_normal(self.modes.n_modes)
            atoms = self.atoms0.copy()
            atoms.set_positions(self.atoms0.get_positions() + self.displacement_A(amplitudes))
            contact = closest_contact_fraction(atoms)
            if contact >= MIN_CONTACT_FRACTION:
                self._samples += 1
                return Frame(atoms, self._samples, None)
            self.failures += 1
            log.debug("%s: sample %d redrawn, closest contact %.2f of the covalent radii sum", self.name,
                      self._samples + 1, contact)
        raise InputError(f"{self.name}: {MAX_REDRAWS} samples in a row had atoms closer than "
                         f"{MIN_CONTACT_FRACTION} of their covalent radii sum; lower the temperature "
                         f"({self.temperature_K:g} K)", where="temperature_K")

    def state(self) -> SamplerState:
        return SamplerState(md=None, rng=rng_state(self.rng), failures=self.failures, samples=self._samples)

    def restore(self, state: SamplerState) -> None:
        self._samples = int(state.samples)
        self.rng.bit_generator.state = restore_rng(state.rng).bit_generator.state
        self.failures = int(state.failures)


# ---------------------------------------------------------------- restart record


@dataclass
class HessianRecord:
    """The structure a Hessian was taken at and the Hessian (eV/Å^2), saved so a restart does not redo it."""

    numbers: np.ndarray
    positions_A: np.ndarray
    cell_A: np.ndarray
    pbc: np.ndarray
    hessian_eV_per_A2: np.ndarray
    displacement_A: float

    @classmethod
    def from_atoms(cls, atoms: Atoms, hessian_eV_per_A2: np.ndarray, *, displacement_A: float) -> "HessianRecord":
        return cls(numbers=atoms.numbers.copy(), positions_A=atoms.get_positions(), cell_A=np.array(atoms.cell),
                   pbc=atoms.pbc.copy(), hessian_eV_per_A2=np.asarray(hessian_eV_per_A2, dtype=float),
                   displacement_A=float(displacement_A))

    def atoms(self) -> Atoms:
        return Atoms(numbers=self.numbers, positions=self.positions_A, cell=self.cell_A, pbc=self.pbc)

    def save_npz(self, path: str | Path) -> None:
        """Write atomically (temp file, fsync, rename)."""
        buffer = io.BytesIO()
        np.savez(buffer, numbers=self.numbers, positions_A=self.positions_A, cell_A=self.cell_A, pbc=self.pbc,
                 hessian_eV_per_A2=self.hessian_eV_per_A2, displacement_A=np.float64(self.displacement_A))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load_npz(cls, path: str | Path) -> "HessianRecord":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(numbers=data["numbers"], positions_A=data["positions_A"], cell_A=data["cell_A"],
                           pbc=data["pbc"], hessian_eV_per_A2=data["hessian_eV_per_A2"],
                           displacement_A=float(data["displacement_A"]))
        except (OSError, KeyError, ValueError) as error:
            raise InputError(f"not a readable Hessian record ({type(error).__name__}: {error}); delete it to "
                             f"recompute the Hessian", where=str(path)) from None


def make_normal_mode_sampler(geometry: Atoms, *, label_call: LabelCall, record_path: str | Path,
                             temperature_K: float, rng: np.random.Generator) -> NormalModeSampler:
    """The initial dataset's sampler for `initial_sampling: normal-modes`: relax `geometry` with the reference,
    take the finite-difference Hessian there (both through `label_call`, so every call is counted), and sample
    the harmonic distribution at temperature_K. The relaxed structure and its Hessian are saved at
    `record_path`; a restart reads them instead of paying for them again."""
    record_path = Path(record_path)
    if record_path.exists():
        record = HessianRecord.load_npz(record_path)
        if not np.array_equal(record.numbers, geometry.numbers):
            raise InputError("the saved Hessian belongs to another structure (other elements); delete it to "
                             "recompute", where=str(record_path))
        start = geometry.copy()
        start.set_positions(record.positions_A)
        hessian = record.hessian_eV_per_A2
        log.info("Normal-mode sampling: relaxed structure and Hessian read from %s.", record_path)
    else:
        start = relax(None, geometry, label_call=label_call)
        hessian = finite_difference_hessian(start, label_call=label_call)
        HessianRecord.from_atoms(start, hessian, displacement_A=DEFAULT_DISPLACEMENT_A).save_npz(record_path)
    modes = normal_modes(start, hessian, periodic=bool(np.any(start.pbc)))
    wavenumbers = modes.wavenumbers_cm
    log.info("Normal modes: %d vibrational (%.0f to %.0f cm^-1, %d imaginary), sampled at %.0f K.", modes.n_modes,
             np.min(np.abs(wavenumbers)), np.max(np.abs(wavenumbers)), modes.n_imaginary, temperature_K)
    return NormalModeSampler(start, modes, temperature_K=temperature_K, rng=rng)
