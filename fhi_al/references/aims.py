"""FHI-aims (or any ASI library) as a reference through asi4py, on a given MPI communicator.

The library is started on the first structure: an init callback writes control.in and geometry.in with ASE's
aims writers into the work folder, then ASI_init runs on every rank of the communicator.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

from ..errors import InputError, ReferenceError
from .base import LABEL_PROPERTIES, STRESS, SYSTEM_KEY, evaluate, is_periodic_cell

log = logging.getLogger(__name__)

LIB_PATH_KEY = "ACTIVE_LEARNING.aims_lib_path"
SPECIES_DIR_KEY = "ACTIVE_LEARNING.species_dir"
LOG_FILE = "aims.out"
CONTROL_ATTRIBUTES = ("ase_parameters", "parameters", "keywords")
DEFAULT_XC = "pbe"
STRESS_SYMBOL = "ASI_stress"  # optional in the ASI API: libraries without it give no stress
STRESS_KEYWORD = "compute_analytical_stress"  # FHI-aims computes the stress only when asked in control.in


def exports_symbol(lib_path: str | Path, symbol: str) -> bool:
    """True when the shared library exports `symbol` (loaded the way asi4py loads it, RTLD_GLOBAL); False when it
    cannot be loaded at all (starting it then fails with asi4py's own error)."""
    import ctypes

    try:
        return hasattr(ctypes.CDLL(str(lib_path), mode=ctypes.RTLD_GLOBAL), symbol)
    except OSError as error:
        log.debug("cannot load %s to look for %s: %s", lib_path, symbol, error)
        return False


def control_parameters(control: Any) -> dict[str, Any]:
    """control.in keywords as the dict ASE's write_control takes (a dict, or an object holding one)."""
    if control is None:
        return {}
    if isinstance(control, Mapping):
        return dict(control)
    for attribute in CONTROL_ATTRIBUTES:
        value = getattr(control, attribute, None)
        value = value() if callable(value) else value
        if isinstance(value, Mapping):
            return dict(value)
    raise TypeError(f"cannot read control.in parameters from {type(control).__name__}")


def atoms_system(atoms: Atoms) -> str | None:
    value = atoms.info.get(SYSTEM_KEY)
    return None if value is None else str(value)


def species_file(species_dir: Path, symbol: str) -> Path:
    return Path(species_dir) / f"{atomic_numbers[symbol]:02d}_{symbol}_default"


def library_comm(comm: Any) -> Any:
    """The mpi4py communicator the caller gives: an mpi4py one as it is, an fhi_al.parallel one through its
    `library_comm()`. The caller decides which ranks compute together; this module never looks at the world."""
    if comm is None:
        raise TypeError("the aims reference needs the communicator of the ranks that compute together "
                        "(an mpi4py communicator or an fhi_al.parallel one); none was given")
    if hasattr(comm, "py2f"):
        return comm
    return comm.library_comm()


class AimsASICalculator(Calculator):
    """ASE calculator that drives an ASI library (FHI-aims) via asi4py's ASI_ASE_calculator.

    `control`: control.in keywords (species blocks are added from `species_dir`); extra keyword arguments
    override control.in keywords (e.g. spin="collinear" for isolated atoms). `system_controls` maps system
    names to their own control.in keywords (several systems in one run, e.g. a k_grid each): a structure with
    `atoms.info["system"]` among them is computed with those. A change of the atoms (not only their positions)
    or of the system restarts the library. Stress (periodic cells only) when the library exports ASI_stress;
    control.in then asks for the analytical stress.
    """

    name = "aims"
    collective = True  # every rank of the communicator takes part in each calculation

    def __init__(self, *, lib_path: str | Path | None, control: Any = None, species_dir: str | Path | None = None,
                 comm: Any = None, work_dir: str | Path = "aims", system_controls: Mapping[str, Any] | None = None,
                 **control_overrides: Any):
        super().__init__()
        if not lib_path or not Path(lib_path).is_file():
            raise InputError(f"FHI-aims ASI library {lib_path!r} does not exist", where=LIB_PATH_KEY)
        self.lib_path = Path(lib_path).resolve()
        self.control = {"xc": DEFAULT_XC, **control_parameters(control), **control_overrides}
        species_dir = species_dir or self.control.get("species_dir") or getattr(control, "species_dir", None)
        if not species_dir:
            raise InputError("the aims reference needs a species_dir", where=SPECIES_DIR_KEY)
        self.species_dir = Path(species_dir)
        self.control["species_dir"] = str(self.species_dir)
        self.system_controls = {str(name): {**self.control, **control_parameters(parameters), **control_overrides,
                                            "species_dir": str(self.species_dir)}
                                for name, parameters in (system_controls or {}).items()}
        self.comm = library_comm(comm)
        self.work_dir = Path(work_dir).resolve()
        self._asi_calc = None
        self._numbers: tuple[int, ...] | None = None
        self.implemented_properties = ["energy", "free_energy", "forces"]
        if exports_symbol(self.lib_path, STRESS_SYMBOL):
            self.implemented_properties.append(STRESS)
        self._system: str | None = None

    def control_for(self, atoms: Atoms) -> dict[str, Any]:
        """The control.in keywords of the system `atoms` belongs to (info["system"]), else the run's."""
        return self.system_controls.get(atoms_system(atoms), self.control)

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus the system: the same atoms of another system use another control.in."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and atoms_system(atoms) != atoms_system(self.atoms) and "system" not in changes:
            changes.append("system")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        system = atoms_system(self.atoms)
        if self._asi_calc is None or self._numbers != tuple(self.atoms.numbers) or self._system != system:
            self._start(self.atoms)
        wants_stress = self._stress_wanted(self.atoms)
        results = evaluate(self._asi_calc, self.atoms, (*LABEL_PROPERTIES, STRESS) if wants_stress else
                           LABEL_PROPERTIES)
        self._check_converged()
        self.results = {"energy": results["energy"], "free_energy": results["energy"],
                        "forces": None if results.get("forces") is None else results["forces"].copy()}
        if wants_stress and results.get(STRESS) is not None:
            self.results[STRESS] = results[STRESS].copy()

    def _stress_wanted(self, atoms: Atoms) -> bool:
        return STRESS in self.implemented_properties and is_periodic_cell(atoms)

    def _check_converged(self) -> None:
        asi = self._asi_calc.asi
        if hasattr(asi.lib, "ASI_is_scf_converged") and not asi.is_scf_converged:
            raise ReferenceError("FHI-aims SCF did not converge", calculator=self.name,
                                 structure=self.atoms.get_chemical_formula())

    def _start(self, atoms: Atoms) -> None:
        from asi4py.asecalc import ASI_ASE_calculator
        from asi4py.pyasi import ASIlib

        self.close()
        self._check_species(atoms)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        control = self.control_for(atoms)
        if self._stress_wanted(atoms):
            control = {**control, STRESS_KEYWORD: True}
        writer = _InputWriter(control)
        asi = ASIlib(str(self.lib_path), writer, self.comm, atoms, str(self.work_dir), LOG_FILE)
        started = asi.init()  # asi4py prints and swallows its own errors; None means it failed
        failure = self.comm.bcast(writer.error, root=0)
        if started is None or failure:
            raise ReferenceError(f"could not start the ASI library {self.lib_path}: "
                                 f"{failure or 'ASI initialisation failed (see stdout)'}", calculator=self.name)
        self._asi_calc = ASI_ASE_calculator(asi)
        self._numbers = tuple(atoms.numbers)
        self._system = atoms_system(atoms)
        log.debug("ASI library %s started in %s on %d rank(s)", self.lib_path, self.work_dir, self.comm.Get_size())

    def _check_species(self, atoms: Atoms) -> None:
        for symbol in dict.fromkeys(atoms.get_chemical_symbols()):
            if not species_file(self.species_dir, symbol).is_file():
                raise InputError(f"no species file for {symbol} ({species_file(self.species_dir, symbol).name})",
                                 where=str(self.species_dir))

    def close(self) -> None:
        if self._asi_calc is not None:
            self._asi_calc.close()
        self._asi_calc = None
        self._numbers = None
        self._system = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _InputWriter:
    """The init callback asi4py runs on rank 0 in the work folder: writes geometry.in and control.in.

    Errors are kept (not raised) so that rank 0 still reaches asi4py's barrier; the caller broadcasts them.
    """

    def __init__(self, control: dict[str, Any]):
        self.control = control
        self.error: str | None = None

    def __call__(self, asi) -> None:
        from ase.io.aims import write_aims, write_control

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # ASE's aims I/O moving to a plugin
                write_aims("geometry.in", asi.atoms)
                write_control("control.in", asi.atoms, self.control)
        except Exception as err:  # noqa: BLE001 - reported on every rank by the caller
            self.error = f"writing FHI-aims inputs failed: {type(err).__name__}: {err}"
