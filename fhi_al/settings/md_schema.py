"""The MD section's keys (ensemble, thermostat, barostat) with their defaults, units and docs: the names and units
of aims-PAX, whose defaults they keep (pressure 1 atm, tdamp 100 and pdamp 1000 time steps of 0.5 fs).
"""

from __future__ import annotations

from dataclasses import dataclass

from .typed import option

BAROSTATS = ("berendsen", "mtk", "isomtk")
BIASES = ("none", "uncertainty")
CV_KINDS = {"distance": 2, "angle": 3, "torsion": 4}  # kind -> number of atoms
# Metadynamics defaults (PLUMED's names; units eV, Å or rad, MD steps): with only `cvs` given, a few thousand
# MD steps of 0.5 fs fill a torsional well of ~0.6 eV (one hill of 0.02 eV every 25 steps).
DEFAULT_HILL_HEIGHT_eV = 0.02
DEFAULT_SIGMA = {"distance": 0.1, "angle": 0.15, "torsion": 0.3}  # Å, rad, rad
DEFAULT_PACE_STEPS = 25


@dataclass(frozen=True)
class MetadynamicsSettings:
    cvs: list[dict[str, list[int]]] = option(
        doc="Collective variables, a list whose entries are `distance: [i, j]`, `angle: [i, j, k]` or "
            "`torsion: [i, j, k, l]`, with 0-based atom indices of the trajectory's geometry.")
    height: float = option(DEFAULT_HILL_HEIGHT_eV, "Height of each Gaussian hill (well-tempered: of the first).",
                           minimum=0.0, exclusive_minimum=True, unit="eV")
    sigma: list[float] | None = option(
        None, "Width of the hills, one per CV, in the CV's unit (Å for distance, rad for angle and torsion); "
              "null = 0.1 Å for a distance, 0.15 rad for an angle, 0.3 rad for a torsion.", unit="Å or rad")
    pace: int = option(DEFAULT_PACE_STEPS, "MD steps between two hills.", minimum=1, unit="MD steps")
    biasfactor: float | None = option(
        None, "Well-tempered bias factor γ = (T + ΔT)/T (hill heights shrink as exp(−V/(k_B ΔT))); null = plain "
              "metadynamics with hills of constant height.", minimum=1.0, exclusive_minimum=True)

    def sigmas(self) -> list[float]:
        """The hill width of every CV: the given ones or each kind's default."""
        if self.sigma is not None:
            return list(self.sigma)
        return [DEFAULT_SIGMA[next(iter(cv))] for cv in self.cvs]


@dataclass(frozen=True)
class MdSettings:
    stat_ensemble: str = option("NVT", "Statistical ensemble: NVT (Langevin) or NPT (needs a structure periodic in "
                                       "all directions; the thermostat comes with the barostat).",
                                choices=["NVT", "NPT"])
    thermostat: str = option("Langevin", "Thermostat of NVT.", choices=["Langevin"])
    temperature: float = option(300.0, "Target temperature.", minimum=0.0, exclusive_minimum=True, unit="K")
    timestep: float = option(0.5, "MD time step.", minimum=0.0, exclusive_minimum=True, unit="fs")
    friction: float = option(0.001, "Langevin friction coefficient (NVT).", minimum=0.0, exclusive_minimum=True,
                             unit="1/fs")
    seed: int = option(42, "Seed of the thermostat's random numbers and initial velocities (with MD per "
                           "trajectory, trajectory 0's seed seeds every trajectory's stream).",
                       aliases=["MD_seed"])
    barostat: str = option("mtk", "NPT integrator: berendsen (ASE NPTBerendsen: Berendsen velocity and cell "
                                  "scaling), mtk (MTKNPT: Martyna-Tobias-Klein, full cell, Nosé-Hoover chains) "
                                  "or isomtk (IsotropicMTKNPT: MTK with isotropic volume changes).",
                           choices=list(BAROSTATS))
    pressure: float = option(101325.0, "External pressure of NPT (101325 Pa = 1 atm).", unit="Pa")
    tdamp: float = option(50.0, "MTK: time constant of the particles' Nosé-Hoover chain (about 100 time steps).",
                          minimum=0.0, exclusive_minimum=True, unit="fs")
    pdamp: float = option(500.0, "MTK: time constant of the cell's barostat chain (about 1000 time steps).",
                          minimum=0.0, exclusive_minimum=True, unit="fs")
    tchain: int = option(3, "MTK: thermostats in the particles' Nosé-Hoover chain.", minimum=1)
    pchain: int = option(3, "MTK: thermostats in the barostat's chain.", minimum=1)
    tloop: int = option(1, "MTK: sub-steps of the particle thermostat integration.", minimum=1)
    ploop: int = option(1, "MTK: sub-steps of the barostat integration.", minimum=1)
    taut: float = option(500.0, "Berendsen: time constant of the velocity rescaling.", minimum=0.0,
                         exclusive_minimum=True, unit="fs")
    taup: float = option(1000.0, "Berendsen: time constant of the pressure coupling.", minimum=0.0,
                         exclusive_minimum=True, unit="fs")
    compressibility_au: float = option(1.0, "Berendsen: isothermal compressibility of the material (1 Å³/eV is "
                                            "a bulk modulus of 160 GPa, a metal; water is about 73). Too large a "
                                            "value makes the cell oscillate, too small a value relaxes it slowly.",
                                       minimum=0.0, exclusive_minimum=True, unit="Å³/eV")
    bias: str = option("none", "Bias of the active-learning MLFF trajectories: none, or uncertainty (uncertainty-"
                               "driven dynamics: the ensemble's energy variance σ² lowers the energy by "
                               "bias_strength·(1 − exp(−σ²/(N·bias_width²))), so the trajectory climbs toward what "
                               "the members do not know; labels never include the bias).", choices=list(BIASES))
    bias_strength: float = option(0.3, "bias uncertainty: the deepest the bias lowers the energy (A).", minimum=0.0,
                                  exclusive_minimum=True, unit="eV")
    bias_width: float | None = option(
        None, "bias uncertainty: energy spread per √atom at which the bias reaches 63 % of its depth (B); null = "
              "twice the ensemble's RMS energy spread per √atom on the validation frames, refreshed with the "
              "calibration after each training.", minimum=0.0, exclusive_minimum=True, unit="eV")
    metadynamics: MetadynamicsSettings | None = option(
        None, "Collective-variable metadynamics on the active-learning MLFF trajectory: a mapping with cvs "
              "(required), height, sigma, pace and biasfactor; hills are kept in restart/al/hills_<trajectory>.jsonl "
              "and survive a restart.")
    plumed: str | None = option(
        None, "A PLUMED input file handed to ASE's Plumed calculator for the MLFF trajectory instead of the "
              "built-in metadynamics; needs the `plumed` Python module with its kernel (not installable from PyPI).")

    @property
    def biased(self) -> bool:
        return self.bias != "none" or self.metadynamics is not None or self.plumed is not None


# The original tool's keys of ASE's older NPT class (Melchionna), which fhi_al does not offer.
MD_UNUSED = ("externalstress", "ttime", "pfactor")
# The MD section may instead map trajectory indices to MdSettings blocks (aims-PAX's per-trajectory form):
#   MD: {0: {temperature: 300}, 1: {stat_ensemble: NPT, pressure: 1.0e9}}
# Keys missing inside an entry take the defaults above; every trajectory 0..num_trajectories-1 needs an entry.
