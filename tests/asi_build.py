"""Builds the ASI stand-in library (tests/asi_standin) with the venv's mpicc and mirrors its potential in Python.

`build_standin(cache_dir)` compiles once per source hash; `lj_energy_forces` is the same Lennard-Jones cluster
in eV and eV/Å for checking what comes back through asi4py. `python tests/asi_build.py --write-stubs` regenerates
stubs.c from the installed scalapack4py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.data import atomic_numbers

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "asi_standin"
SOURCES = ("standin.c", "stubs.c")
LIB_NAME = "libasi_standin.so"
MPICC = Path(sys.executable).parent / "mpicc"

# Keep in step with standin.c.
LJ_EPSILON_HA = 0.01
LJ_SIGMA_BOHR = 5.0
STANDIN_MIN_SCF_ITERATIONS = 2

BLACS_SYMBOLS = ("blacs_get_", "blacs_gridexit_", "blacs_gridinfo_", "blacs_gridinit_", "blacs_gridmap_",
                 "descinit_", "numroc_")


def required_stub_symbols() -> list[str]:
    """Every Fortran symbol scalapack4py.ScaLAPACK4py binds from the library it is given."""
    from scalapack4py.func_argtypes import SCALAPACKargs

    class _AnyAttribute:
        def __getattr__(self, name):
            return type(name, (), {})()

    routines = SCALAPACKargs(_AnyAttribute()).implemented_funcs
    return sorted(set(BLACS_SYMBOLS) | {f"{name}_" for name in routines})


def write_stubs(path: Path = SOURCE_DIR / "stubs.c") -> None:
    lines = [
        "/* No-op BLACS/ScaLAPACK symbols so that scalapack4py.ScaLAPACK4py(lib) can bind them from the stand-in.",
        " * Generated from the installed scalapack4py (tests/asi_build.py --write-stubs); the stand-in never calls"
        " them. */",
        "",
        "/* numroc_ is the only symbol bound with a return value (int). */",
        "int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs) {",
        "    (void)n; (void)nb; (void)iproc; (void)isrcproc; (void)nprocs;",
        "    return 0;",
        "}",
        "",
    ]
    lines += [f"void {name}(void) {{}}" for name in required_stub_symbols() if name != "numroc_"]
    path.write_text("\n".join(lines) + "\n")


def _source_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def build_standin(cache_dir: Path) -> Path:
    """Compile the stand-in into cache_dir/<hash>/ unless it is there already; returns the .so path."""
    target_dir = Path(cache_dir) / _source_hash()
    library = target_dir / LIB_NAME
    if library.exists():
        return library
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / f".{LIB_NAME}.{os.getpid()}.tmp"
    command = [str(MPICC), "-shared", "-fPIC", "-O2", "-o", str(partial),
               *(str(SOURCE_DIR / name) for name in SOURCES), "-lm"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    os.replace(partial, library)  # several ranks may build at once: the rename makes that harmless
    return library


def standin_cache_dir() -> Path:
    """A folder every rank of an mpiexec job agrees on (same user, same machine)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"fhi_al_asi_standin_{os.getuid()}"


def write_species_dir(folder: Path, symbols) -> Path:
    """Minimal species_default files (the stand-in does not read them; ASE's writer copies them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for symbol in symbols:
        number = atomic_numbers[symbol]
        (folder / f"{number:02d}_{symbol}_default").write_text(f"species {symbol}\n  nucleus {number}\n")
    return folder


@pytest.fixture(scope="session")
def standin_lib() -> Path:
    return build_standin(standin_cache_dir())


@pytest.fixture
def shared_tmp(tmp_path) -> Path:
    """tmp_path of rank 0, so that every rank of COMM_WORLD sees the same folder (asi4py writes on rank 0)."""
    from fhi_al.parallel import mpi_world_for_library

    return Path(mpi_world_for_library().bcast(str(tmp_path), root=0))


def lj_energy_forces(positions_A: np.ndarray) -> tuple[float, np.ndarray]:
    """The stand-in's potential evaluated in Python, in eV and eV/Å."""
    positions_bohr = np.asarray(positions_A) / units.Bohr
    energy_Ha = 0.0
    forces = np.zeros_like(positions_bohr)
    for i in range(len(positions_bohr)):
        for j in range(i + 1, len(positions_bohr)):
            d = positions_bohr[i] - positions_bohr[j]
            s6 = (LJ_SIGMA_BOHR**2 / (d @ d)) ** 3
            energy_Ha += 4 * LJ_EPSILON_HA * (s6 * s6 - s6)
            f = 24 * LJ_EPSILON_HA * (2 * s6 * s6 - s6) / (d @ d) * d
            forces[i] += f
            forces[j] -= f
    return energy_Ha * units.Hartree, forces * units.Hartree / units.Bohr


if __name__ == "__main__":
    if "--write-stubs" in sys.argv:
        write_stubs()
    else:
        print(build_standin(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / ".asi_cache"))
