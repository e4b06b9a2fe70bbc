"""Isolated-atom energies: ground-state spins, values against tblite and PySCF called directly, output files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Hartree

from asi_build import shared_tmp, standin_lib, write_species_dir  # noqa: F401
from fhi_al.errors import InputError
from fhi_al.procedures import atomic_energies as ae


def settings_for(calculator: str, *, xtb=None, pyscf=None, aims_lib_path=None, species_dir=None):
    return SimpleNamespace(al=SimpleNamespace(
        reference=SimpleNamespace(calculator=calculator, xtb=xtb, pyscf=pyscf),
        active_learning=SimpleNamespace(aims_lib_path=aims_lib_path and str(aims_lib_path),
                                        species_dir=species_dir and str(species_dir), reference_timeout_s=60.0)))


def tblite_energy(symbol: str, multiplicity: int | None) -> float:
    from tblite.ase import TBLite

    atom = Atoms(symbol)
    atom.calc = TBLite(method="GFN2-xTB", multiplicity=multiplicity, verbosity=0)
    return atom.get_potential_energy()


def test_ground_state_spins_follow_hund_and_parity():
    assert len(ae.GROUND_STATE_UNPAIRED) == 86
    known = {"H": 1, "He": 0, "C": 2, "N": 3, "O": 2, "F": 1, "Cr": 6, "Mn": 5, "Fe": 4, "Cu": 1, "Nb": 5,
             "Pd": 0, "Gd": 8, "Pt": 2}
    assert {symbol: ae.unpaired_electrons(symbol) for symbol in known} == known
    for number in range(1, 87):  # an even electron count never has an odd number of unpaired electrons
        assert ae.unpaired_electrons(chemical_symbols[number]) % 2 == number % 2
    with pytest.raises(InputError):
        ae.unpaired_electrons("U")


def test_xtb_atoms_match_tblite_called_directly():
    factory = ae.reference_factory(name="xtb", options={"method": "GFN2-xTB"})
    energies = ae.isolated_atom_energies(["O", "H", "C", "H"], calculator_factory=factory)
    assert list(energies) == ["H", "C", "O"]  # one entry per element, ordered by Z
    assert energies["H"] == pytest.approx(tblite_energy("H", 2), abs=1e-8)  # uhf = 1
    assert energies["O"] == pytest.approx(tblite_energy("O", 3), abs=1e-8)  # triplet ground state
    assert energies["C"] == pytest.approx(tblite_energy("C", 3), abs=1e-8)
    # the multiplicity reaches tblite: the triplet differs from the closed-shell default (GFN2-xTB has no
    # spin-polarisation term unless asked for, so the triplet is not lower there; same Hamiltonian as the labels)
    assert abs(energies["O"] - tblite_energy("O", None)) > 1e-2


def test_pyscf_hydrogen_atom_is_the_hartree_fock_value():
    from pyscf import gto, scf

    factory = ae.reference_factory(name="pyscf", options={"xc": "HF", "basis": "sto-3g", "spin": 0, "charge": 1})
    energies = ae.isolated_atom_energies(["H"], calculator_factory=factory)  # spin/charge are overridden
    mf = scf.UHF(gto.M(atom="H 0 0 0", basis="sto-3g", spin=1, verbose=0))
    assert energies["H"] == pytest.approx(mf.kernel() * Hartree, abs=1e-6)
    assert energies["H"] / Hartree == pytest.approx(-0.46658185, abs=1e-6)  # textbook HF/STO-3G


def test_run_writes_yaml_snippet_and_log(shared_tmp):
    run_dir = shared_tmp  # the same folder on every rank: only the root writes
    xtb = SimpleNamespace(method="GFN2-xTB", electronic_temperature_K=300.0, accuracy=1.0, max_iterations=250)
    context = SimpleNamespace(run_dir=run_dir, settings=settings_for("xtb", xtb=xtb), geometry=molecule("CH3COOH"),
                              control=None, comm=None)
    energies = ae.run(context)
    snippet = yaml.safe_load((run_dir / "atomic_energies.yaml").read_text())
    assert snippet == {"atomic_energies": energies}
    assert list(snippet["atomic_energies"]) == ["H", "C", "O"]
    assert snippet["atomic_energies"]["H"] == pytest.approx(tblite_energy("H", 2), abs=1e-8)
    log = (run_dir / "logs" / "atomic_energies.log").read_text()
    assert "xtb (GFN2-xTB)" in log and all(symbol in log for symbol in energies)
    # the YAML pastes under ARCHITECTURE: keys are element symbols MACE's settings accept
    assert all(symbol in atomic_numbers for symbol in snippet["atomic_energies"])


def test_aims_atoms_are_spin_polarised(standin_lib, shared_tmp):
    from fhi_al.parallel import world

    species = write_species_dir(shared_tmp / "species", ["H", "O"])
    factory = ae.reference_factory(name="aims", control={"xc": "pbe", "sc_iter_limit": 100}, species_dir=species,
                                   aims_lib_path=standin_lib, run_dir=shared_tmp, comm=world())
    energies = ae.isolated_atom_energies(["O", "H"], calculator_factory=factory)
    assert energies == {"H": 0.0, "O": 0.0}  # one Lennard-Jones atom has no partner
    control = (shared_tmp / "atomic_energies" / "O" / "aims" / "control.in").read_text().split()
    assert control[control.index("spin") + 1] == "collinear"
    assert control[control.index("default_initial_moment") + 1] == "2"


@pytest.mark.mpi(min_size=2)
def test_atomic_energies_under_mpi_with_the_asi_standin(standin_lib, shared_tmp):
    from mpi4py import MPI

    from fhi_al.parallel import world

    comm = world()
    species = write_species_dir(shared_tmp / "species", ["H", "C", "O"]) if comm.rank == 0 else None
    species = comm.bcast(species)
    MPI.COMM_WORLD.Barrier()
    context = SimpleNamespace(run_dir=shared_tmp, geometry=molecule("CH3COOH"), comm=comm,
                              settings=settings_for("aims", aims_lib_path=standin_lib, species_dir=species),
                              control={"xc": "pbe", "sc_iter_limit": 100})
    energies = ae.run(context)
    assert comm.allgather(energies) == [{"H": 0.0, "C": 0.0, "O": 0.0}] * comm.size
    snippet = yaml.safe_load((shared_tmp / "atomic_energies.yaml").read_text())
    assert snippet == {"atomic_energies": energies}
    log = (shared_tmp / "logs" / "atomic_energies.log").read_text()
    assert log.count("Isolated-atom energies from aims") == 1  # written by the root rank only
    assert f"{comm.size} rank(s)" in (shared_tmp / "atomic_energies" / "C" / "aims" / "aims.out").read_text()
    assert np.isfinite(list(energies.values())).all()
