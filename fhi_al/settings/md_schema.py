"""The MD section's keys (ensemble, thermostat, barostat) with their defaults, units and docs: the names and units
of aims-PAX, whose defaults they keep (pressure 1 atm, tdamp 100 and pdamp 1000 time steps of 0.5 fs).
"""

from __future__ import annotations

from dataclasses import dataclass

from .typed import option

BAROSTATS = ("berendsen", "mtk", "isomtk")


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


# The original tool's keys of ASE's older NPT class (Melchionna), which fhi_al does not offer.
MD_UNUSED = ("externalstress", "ttime", "pfactor")
# The MD section may instead map trajectory indices to MdSettings blocks (aims-PAX's per-trajectory form):
#   MD: {0: {temperature: 300}, 1: {stat_ensemble: NPT, pressure: 1.0e9}}
# Keys missing inside an entry take the defaults above; every trajectory 0..num_trajectories-1 needs an entry.
