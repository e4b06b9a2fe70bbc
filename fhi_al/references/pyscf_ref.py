"""PySCF reference for molecules: restricted or unrestricted Kohn-Sham (or Hartree-Fock) with analytic gradients.

Energy in eV and forces in eV/Å from Hartree and Hartree/Bohr; an SCF that does not converge is a ReferenceError.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from ..errors import InputError, ReferenceError

log = logging.getLogger(__name__)

HARTREE_FOCK = "HF"
DEFAULT_XC = "PBE"
DEFAULT_BASIS = "def2-SVP"
DEFAULT_MAX_CYCLE = 100
DEFAULT_CONV_TOL = 1e-9
QUIET = 0


def _configure_threads() -> None:
    from pyscf import lib

    lib.num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


class PySCFCalculator(Calculator):
    """ASE calculator around PySCF for finite (non-periodic) systems.

    `spin` is 2S (number of unpaired electrons): 0 gives RKS/RHF, otherwise UKS/UHF. `xc="HF"` runs
    Hartree-Fock. The converged density matrix seeds the next SCF of the same molecule.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "pyscf"
    default_parameters = {"xc": DEFAULT_XC, "basis": DEFAULT_BASIS, "charge": 0, "spin": 0,
                          "max_cycle": DEFAULT_MAX_CYCLE, "conv_tol": DEFAULT_CONV_TOL}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._guess = None  # (atomic numbers, density matrix) of the last converged SCF
        _configure_threads()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():  # a molecular SCF of a periodic cell would silently drop the images
            raise InputError("the PySCF reference is for molecules (no periodic boundary conditions, no stress); "
                             "use xtb, emt or aims for periodic structures", where="REFERENCE.calculator")
        mf = self._mean_field(self.atoms)
        numbers = tuple(self.atoms.numbers)
        dm0 = self._guess[1] if self._guess and self._guess[0] == numbers else None
        energy_Ha = mf.kernel(dm0=dm0)
        if not mf.converged:
            self._guess = None
            raise ReferenceError(f"PySCF SCF did not converge in {mf.max_cycle} cycles", calculator=self.name,
                                 structure=self.atoms.get_chemical_formula())
        self._guess = (numbers, mf.make_rdm1())
        gradient_Ha_per_bohr = mf.nuc_grad_method().kernel()
        self.results["energy"] = self.results["free_energy"] = float(energy_Ha) * Hartree
        self.results["forces"] = -np.asarray(gradient_Ha_per_bohr) * Hartree / Bohr

    def _mean_field(self, atoms):
        from pyscf import dft, gto, scf

        p = self.parameters
        mol = gto.M(atom=[(symbol, tuple(position)) for symbol, position in
                          zip(atoms.get_chemical_symbols(), atoms.positions)],
                    unit="Angstrom", basis=p.basis, charge=int(p.charge), spin=int(p.spin), verbose=QUIET)
        restricted = int(p.spin) == 0
        if str(p.xc).upper() == HARTREE_FOCK:
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if restricted else dft.UKS(mol)
            mf.xc = p.xc
        mf.max_cycle = int(p.max_cycle)
        mf.conv_tol = float(p.conv_tol)
        return mf
