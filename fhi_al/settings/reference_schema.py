"""The REFERENCE section's keys (the calculator and each calculator's own options) with their defaults, units and
docs; part of the schema (fhi_al.settings.schema re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .typed import option

REFERENCE_CALCULATORS = ("aims", "xtb", "pyscf", "emt")
XTB_METHODS = ("GFN2-xTB", "GFN1-xTB")  # tblite's Hamiltonians (fhi_al.references.xtb.METHODS)


@dataclass(frozen=True)
class XtbSettings:
    method: str = option("GFN2-xTB", "Tight-binding Hamiltonian of tblite.", choices=list(XTB_METHODS))
    electronic_temperature_K: float = option(300.0, "Electronic (Fermi smearing) temperature.", minimum=0.0,
                                             exclusive_minimum=True, unit="K")
    accuracy: float = option(1.0, "tblite accuracy factor (smaller is tighter).", minimum=0.0,
                             exclusive_minimum=True)
    max_iterations: int = option(250, "Most SCC iterations before the call fails.", minimum=1)


@dataclass(frozen=True)
class PyscfSettings:
    xc: str = option("pbe", "Exchange-correlation functional (PySCF name); 'hf' for Hartree-Fock.")
    basis: str = option("def2-svp", "Gaussian basis set (PySCF name).")
    charge: int = option(0, "Total charge of the molecule.", unit="e")
    spin: int = option(0, "Number of unpaired electrons (2S, PySCF's convention).", minimum=0)
    max_cycle: int = option(50, "Most SCF iterations before the call fails.", minimum=1)
    conv_tol: float = option(1e-9, "SCF energy convergence tolerance.", minimum=0.0, exclusive_minimum=True,
                             unit="Hartree")


@dataclass(frozen=True)
class AimsSettings:
    """FHI-aims options come from control.in and ACTIVE_LEARNING.species_dir; nothing to set here."""


@dataclass(frozen=True)
class ReferenceSettings:
    calculator: str | None = option(None, "Reference method (null = aims when ACTIVE_LEARNING.aims_lib_path "
                                          "is set, else xtb); emt is for tests only.",
                                    choices=list(REFERENCE_CALCULATORS))
    simulated_cost_s: float | None = option(None, "For benchmarks only: every reference calculation first sleeps "
                                                  "this long (no CPU used), then returns the reference's result; "
                                                  "null = off.", minimum=0.0, unit="s")
    xtb: XtbSettings = field(default_factory=XtbSettings, metadata={"doc": "Options of the xtb reference."})
    pyscf: PyscfSettings = field(default_factory=PyscfSettings, metadata={"doc": "Options of the pyscf reference."})
    aims: AimsSettings = field(default_factory=AimsSettings, metadata={"doc": "Options of the aims reference."})


REFERENCE_SUBSECTIONS = {"xtb": XtbSettings, "pyscf": PyscfSettings, "aims": AimsSettings}
