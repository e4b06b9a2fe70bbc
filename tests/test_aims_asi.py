"""The aims reference through asi4py, driven by the C stand-in library (Lennard-Jones in Hartree/Bohr).

Serial tests run on one rank; the mpi-marked ones need `mpiexec -n 2 python -m pytest --with-mpi`.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

from asi_build import (STANDIN_MIN_SCF_ITERATIONS, lj_energy_forces, required_stub_symbols, shared_tmp,  # noqa: F401
                       standin_lib, write_species_dir, SOURCE_DIR)
from fhi_al.errors import InputError, ReferenceError
from fhi_al.references import compute_label, make_reference

FD_STEP_A = 1e-4
CONVERGED = {"xc": "pbe", "sc_iter_limit": 100}


def argon_cluster(n_atoms: int = 4, seed: int = 0) -> Atoms:
    """A compact Ar cluster near the LJ minimum of the stand-in (sigma = 5 Bohr = 2.65 Å)."""
    base = np.array([[0, 0, 0], [3.0, 0, 0], [1.5, 2.6, 0], [1.5, 0.87, 2.45], [-1.5, 2.6, 0.3]])[:n_atoms]
    jitter = np.random.default_rng(seed).normal(scale=0.1, size=base.shape)
    return Atoms(f"Ar{n_atoms}", positions=base + jitter)


def aims_reference(lib, folder, *, comm=None, control=CONVERGED, symbols=("Ar",)):
    """The aims reference on `comm` (default: the job's communicator, given as the CLI gives it)."""
    from fhi_al.parallel import world

    species = write_species_dir(folder / "species", symbols)
    return make_reference(name="aims", control=dict(control), species_dir=species, aims_lib_path=lib,
                          run_dir=folder / "run", comm=world() if comm is None else comm)


def fd_forces(calc, atoms, step_A=FD_STEP_A):
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += step_A
            minus.positions[i, k] -= step_A
            forces[i, k] = -(compute_label(calc, plus)[0] - compute_label(calc, minus)[0]) / (2 * step_A)
    return forces


def test_stubs_cover_every_symbol_scalapack4py_binds():
    stubs = (SOURCE_DIR / "stubs.c").read_text()
    missing = [name for name in required_stub_symbols() if f" {name}(" not in stubs]
    assert not missing, f"regenerate stubs.c with `python tests/asi_build.py --write-stubs`: {missing}"


def test_aims_energy_and_forces_match_lennard_jones(standin_lib, shared_tmp):
    calc = aims_reference(standin_lib, shared_tmp)
    atoms = argon_cluster()
    try:
        energy, forces = compute_label(calc, atoms)
        expected_energy, expected_forces = lj_energy_forces(atoms.positions)
        assert energy == pytest.approx(expected_energy, rel=1e-12)
        assert abs(energy) > 0.1  # a bound cluster, not a trivially zero energy
        np.testing.assert_allclose(forces, expected_forces, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(forces, fd_forces(calc, atoms), atol=1e-6)
        assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-10)
    finally:
        calc.close()


def test_aims_writes_inputs_with_ase_writers(standin_lib, shared_tmp):
    calc = aims_reference(standin_lib, shared_tmp)
    atoms = argon_cluster(3)
    try:
        compute_label(calc, atoms)
        work = shared_tmp / "run" / "aims"
        control = (work / "control.in").read_text()
        assert "sc_iter_limit" in control and "species Ar" in control and "xc" in control
        np.testing.assert_allclose(read(work / "geometry.in", format="aims").positions, atoms.positions, atol=1e-6)
    finally:
        calc.close()


def test_aims_restarts_library_when_the_atoms_change(standin_lib, shared_tmp):
    calc = aims_reference(standin_lib, shared_tmp)
    try:
        for n_atoms in (3, 5, 4):
            atoms = argon_cluster(n_atoms, seed=n_atoms)
            assert compute_label(calc, atoms)[0] == pytest.approx(lj_energy_forces(atoms.positions)[0], rel=1e-12)
    finally:
        calc.close()


def test_aims_scf_not_converged_is_reference_error(standin_lib, shared_tmp):
    control = {"xc": "pbe", "sc_iter_limit": STANDIN_MIN_SCF_ITERATIONS - 1}
    calc = aims_reference(standin_lib, shared_tmp, control=control)
    try:
        with pytest.raises(ReferenceError, match="SCF did not converge"):
            compute_label(calc, argon_cluster())
    finally:
        calc.close()


def test_aims_library_returning_nan_is_reference_error(standin_lib, shared_tmp):
    calc = aims_reference(standin_lib, shared_tmp, control={**CONVERGED, "standin_fail_run": True})
    try:
        with pytest.raises(ReferenceError, match="non-finite"):
            compute_label(calc, argon_cluster())
    finally:
        calc.close()


def test_aims_bad_paths_are_input_errors(standin_lib, shared_tmp):
    with pytest.raises(InputError) as info:
        aims_reference(shared_tmp / "no_such_lib.so", shared_tmp)
    assert info.value.where == "ACTIVE_LEARNING.aims_lib_path"
    calc = aims_reference(standin_lib, shared_tmp)  # species for Ar only
    with pytest.raises(InputError, match="no species file for Ne"):
        compute_label(calc, Atoms("Ne2", positions=[(0, 0, 0), (0, 0, 3.0)]))


def test_aims_on_a_sub_communicator(standin_lib, shared_tmp):
    from fhi_al.parallel import mpi_world_for_library

    world = mpi_world_for_library()
    sub = world.Split(0, world.Get_rank())
    calc = aims_reference(standin_lib, shared_tmp, comm=sub)
    try:
        atoms = argon_cluster()
        assert compute_label(calc, atoms)[0] == pytest.approx(lj_energy_forces(atoms.positions)[0], rel=1e-12)
    finally:
        calc.close()
        sub.Free()


@pytest.mark.mpi(min_size=2)
def test_aims_two_ranks_identical_results(standin_lib, shared_tmp):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    calc = aims_reference(standin_lib, shared_tmp, comm=comm)
    atoms = argon_cluster(5, seed=11)
    try:
        energy, forces = compute_label(calc, atoms)
        energies = comm.allgather(energy)
        all_forces = comm.allgather(forces)
        assert all(value == energies[0] for value in energies)  # bitwise identical on every rank
        assert all(np.array_equal(f, all_forces[0]) for f in all_forces)
        assert energy == pytest.approx(lj_energy_forces(atoms.positions)[0], rel=1e-12)
        np.testing.assert_allclose(forces, fd_forces(calc, atoms), atol=1e-6)
        log = (shared_tmp / "run" / "aims" / "aims.out").read_text()
        assert f"on {comm.Get_size()} rank(s)" in log
    finally:
        calc.close()


@pytest.mark.mpi(min_size=2)
def test_aims_groups_on_split_communicators(standin_lib, shared_tmp):
    """Each rank its own group (as in parallel mode): different structures, each group's own answer."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    group = world.Split(world.Get_rank(), 0)
    folder = shared_tmp / f"group{world.Get_rank()}"
    calc = aims_reference(standin_lib, folder, comm=group)
    atoms = argon_cluster(3 + world.Get_rank(), seed=world.Get_rank())
    try:
        energy, _ = compute_label(calc, atoms)
        assert energy == pytest.approx(lj_energy_forces(atoms.positions)[0], rel=1e-12)
        assert len(set(world.allgather(round(energy, 10)))) == world.Get_size()
    finally:
        calc.close()
        group.Free()


@pytest.mark.mpi(min_size=2)
def test_aims_two_ranks_failure_raises_everywhere(standin_lib, shared_tmp):
    from mpi4py import MPI

    control = {"xc": "pbe", "sc_iter_limit": STANDIN_MIN_SCF_ITERATIONS - 1}
    calc = aims_reference(standin_lib, shared_tmp, comm=MPI.COMM_WORLD, control=control)
    try:
        with pytest.raises(ReferenceError):
            compute_label(calc, argon_cluster())
    finally:
        calc.close()
    MPI.COMM_WORLD.Barrier()  # no rank left behind in a collective
