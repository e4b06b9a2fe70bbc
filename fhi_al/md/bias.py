"""Biases added to the potential an MLFF trajectory moves on, and the one calculator that adds them.

- `UncertaintyBias`: uncertainty-driven dynamics. The ensemble's energy variance σ²_E lowers the energy where the
  members disagree, with the bounded form of Kulichenko et al. (Nat. Comput. Sci. 2023):

      E_bias = A · (exp(−σ²_E / (N · B²)) − 1),      −A ≤ E_bias ≤ 0,

  A = `strength_eV` (the deepest the bias can lower the energy), B = `width_eV` (the energy spread per √atom at
  which the bias reaches 63 % of its depth), N the number of atoms. Its forces come from the members' energies
  and forces alone (no second derivative): ∇σ²_E = −(2/M) Σ_m (E_m − Ē)(F_m − F̄). They vanish where the
  members agree and where the variance is already far above B² (the exponential saturates), so the bias pushes
  a trajectory toward what the ensemble does not know without pulling it arbitrarily far: the frame guard and
  the upper uncertainty threshold still end excursions into unphysical regions.
- Metadynamics (fhi_al.md.metadynamics) is a bias of the same shape: `energy_forces(atoms, results)`.

`BiasedCalculator` wraps the ensemble calculator: its `energy`/`forces` are the model's plus every bias, and it
keeps the model's own values as `model_energy`/`model_forces` (what analysis and replica exchange read) and the
bias as `bias_energy`/`bias_forces`. Labels are always reference calculations of the bare frame: no bias
reaches a label.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

log = logging.getLogger(__name__)

NONE = "none"
UNCERTAINTY = "uncertainty"
BIAS_KINDS = (NONE, UNCERTAINTY)


class Bias(Protocol):
    """A bias term: energy (eV) and forces (eV/Å, [N, 3]) of `atoms`, given the base calculator's results."""

    def energy_forces(self, atoms: Atoms, results: dict[str, Any]) -> tuple[float, np.ndarray]: ...


def energy_variance_and_gradient(energy_comm: np.ndarray, forces_comm: np.ndarray) -> tuple[float, np.ndarray]:
    """σ²_E = mean_m (E_m − Ē)² (eV²) and its gradient with respect to the positions (eV²/Å, [N, 3]) from the
    members' energies [M] and forces [M, N, 3] (F = −∇E)."""
    energies = np.asarray(energy_comm, dtype=float)
    forces = np.asarray(forces_comm, dtype=float)
    deviation = energies - energies.mean()
    variance = float(np.mean(deviation**2))
    gradient = -2.0 * np.einsum("m,mij->ij", deviation, forces - forces.mean(axis=0)) / len(energies)
    return variance, gradient


def udd_energy_forces(variance_eV2: float, gradient: np.ndarray, *, n_atoms: int, strength_eV: float,
                      width_eV: float) -> tuple[float, np.ndarray]:
    """The bounded uncertainty bias A (exp(−σ²/(N B²)) − 1) and its forces −∇E_bias, from σ²_E and ∇σ²_E."""
    scale = 1.0 / (n_atoms * width_eV**2)
    damping = float(np.exp(-variance_eV2 * scale))
    energy = strength_eV * (damping - 1.0)
    forces = strength_eV * damping * scale * np.asarray(gradient, dtype=float)  # −dE/dR = A e^(−x) dx/dR
    return energy, forces


class UncertaintyBias:
    """Uncertainty-driven dynamics (module docstring). `width_eV` may be refreshed as the ensemble learns
    (e.g. from the energy spread on the validation frames)."""

    def __init__(self, *, strength_eV: float, width_eV: float):
        if strength_eV <= 0.0 or width_eV <= 0.0:
            raise ValueError(f"the uncertainty bias needs a positive strength and width, got A = {strength_eV} eV, "
                             f"B = {width_eV} eV")
        self.strength_eV = float(strength_eV)
        self.width_eV = float(width_eV)

    def energy_forces(self, atoms: Atoms, results: dict[str, Any]) -> tuple[float, np.ndarray]:
        if "energy_comm" not in results or "forces_comm" not in results:
            raise KeyError("the uncertainty bias needs an ensemble calculator (energy_comm, forces_comm)")
        variance, gradient = energy_variance_and_gradient(results["energy_comm"], results["forces_comm"])
        return udd_energy_forces(variance, gradient, n_atoms=len(atoms), strength_eV=self.strength_eV,
                                 width_eV=self.width_eV)


def width_from_spread(energy_std_per_sqrt_atom_eV: Sequence[float], *, factor: float = 2.0,
                      floor_eV: float = 1e-4) -> float:
    """A bias width B from the ensemble's energy spread per √atom on frames it has data for: `factor` × their
    RMS, so that the bias is still shallow where the ensemble knows the region and deepens beyond it."""
    values = np.asarray(list(energy_std_per_sqrt_atom_eV), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return floor_eV
    return max(factor * float(np.sqrt(np.mean(values**2))), floor_eV)


class BiasedCalculator(Calculator):
    """`base` (e.g. the ensemble calculator, shared by several trajectories) plus `biases`. Every result of the
    base is passed through; `energy`, `free_energy` and `forces` include the bias, `model_energy` and
    `model_forces` do not, `bias_energy` and `bias_forces` are the bias alone."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, base: Calculator, biases: Sequence[Bias], **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.biases = list(biases)
        self._base_results: dict[str, Any] = {}

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms.copy()
        frame.calc = None
        self.base.calculate(frame, list(properties or ["energy", "forces"]), all_changes)
        self._base_results = dict(self.base.results)
        self.results = self._with_bias(frame, self._base_results)

    def _with_bias(self, frame: Atoms, base_results: dict[str, Any]) -> dict[str, Any]:
        results = dict(base_results)
        model_energy = float(results["energy"])
        model_forces = np.asarray(results["forces"], dtype=float)
        bias_energy, bias_forces = 0.0, np.zeros_like(model_forces)
        for bias in self.biases:
            energy, forces = bias.energy_forces(frame, results)
            bias_energy += energy
            bias_forces = bias_forces + forces
        results.update(model_energy=model_energy, model_forces=model_forces, bias_energy=bias_energy,
                       bias_forces=bias_forces, energy=model_energy + bias_energy,
                       free_energy=model_energy + bias_energy, forces=model_forces + bias_forces)
        return results

    def refresh_bias(self) -> None:
        """The bias changed (a metadynamics hill was added): recompute it on the cached frame without a new model
        evaluation, so the next MD step starts from forces that include it."""
        if self.atoms is None or not self._base_results:
            return
        frame = self.atoms.copy()
        frame.calc = None
        self.results = self._with_bias(frame, self._base_results)


def model_results(results: dict[str, Any]) -> tuple[float, np.ndarray]:
    """The model's own energy and forces from a calculator's results, biased or not."""
    return (float(results.get("model_energy", results["energy"])),
            np.asarray(results.get("model_forces", results["forces"])))
