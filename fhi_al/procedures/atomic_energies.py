"""Isolated-atom energies (E0s) of every element of the run's systems with the configured reference,
spin-polarised.

Writes logs/atomic_energies.log and atomic_energies.yaml (paste under ARCHITECTURE in mace_settings.yaml).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import atomic_numbers

from ..durable import append_durable, atomic_write_text
from ..errors import InputError
from ..parallel import is_root, root_only
from ..references import (compute_label, make_reference, options_dict, reference_kwargs,
                          reference_timeout_from_settings)
from ..references.ledger import ATOMIC_ENERGY, Ledger, ledger_path
from ..references.pyscf_ref import DEFAULT_BASIS, DEFAULT_XC
from ..references.xtb import DEFAULT_METHOD
from ..systems import elements as system_elements

log = logging.getLogger(__name__)

LOG_FILE = Path("logs") / "atomic_energies.log"
YAML_FILE = Path("atomic_energies.yaml")
WORK_DIR = Path("atomic_energies")

# Unpaired electrons (2S) of the ground-state term of each neutral atom, Z = 1..86 (NIST term symbols;
# includes the exceptions to the aufbau rule such as Cr 3d5 4s1 and Nb 4d4 5s1).
GROUND_STATE_UNPAIRED = (
    1, 0,
    1, 0, 1, 2, 3, 2, 1, 0,
    1, 0, 1, 2, 3, 2, 1, 0,
    1, 0, 1, 2, 3, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0,
    1, 0, 1, 2, 5, 6, 5, 4, 3, 0, 1, 0, 1, 2, 3, 2, 1, 0,
    1, 0, 1, 0, 3, 4, 5, 6, 7, 8, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0,
)

CalculatorFactory = Callable[[str, int], Calculator]


def unpaired_electrons(symbol: str) -> int:
    """Hund's-rule ground-state unpaired electrons of the neutral atom `symbol`."""
    number = atomic_numbers.get(symbol, 0)
    if not 1 <= number <= len(GROUND_STATE_UNPAIRED):
        raise InputError(f"no ground-state spin known for element {symbol!r} (Z = 1..{len(GROUND_STATE_UNPAIRED)})",
                         where="geometry.in")
    return GROUND_STATE_UNPAIRED[number - 1]


def spin_options(name: str, unpaired: int) -> dict[str, Any]:
    """Options that make reference `name` compute the neutral atom with `unpaired` electrons spin-polarised.

    xtb gets the multiplicity (uhf = unpaired) on the same Hamiltonian as the molecular labels; tblite's optional
    spin-polarisation term is not switched on, so (as with `xtb --uhf`) high spin need not be the lowest there.
    """
    if name == "xtb":
        return {"charge": 0, "multiplicity": unpaired + 1}
    if name == "pyscf":
        return {"charge": 0, "spin": unpaired}
    if name == "aims":
        return {"spin": "collinear", "default_initial_moment": unpaired, "charge": 0}
    return {}


def reference_factory(*, name: str, options: Any = None, comm: Any = None, run_dir: str | Path = ".",
                      control: Any = None, species_dir: str | Path | None = None,
                      aims_lib_path: str | Path | None = None,
                      simulated_cost_s: float | None = None) -> CalculatorFactory:
    """A factory (symbol, unpaired) -> calculator for isolated atoms, built with make_reference."""
    base_options = options_dict(options)

    def factory(symbol: str, unpaired: int) -> Calculator:
        return make_reference(name=name, options={**base_options, **spin_options(name, unpaired)}, comm=comm,
                              run_dir=Path(run_dir) / WORK_DIR / symbol, control=control,
                              species_dir=species_dir, aims_lib_path=aims_lib_path,
                              simulated_cost_s=simulated_cost_s)

    return factory


def isolated_atom_energies(elements: Iterable[str], *, calculator_factory: CalculatorFactory,
                           timeout_s: float | None = None, ledger: Any = None) -> dict[str, float]:
    """Energy (eV) of each neutral isolated atom in its ground-state spin multiplicity, ordered by Z.

    Every rank of the reference communicator must call this (the reference calls are collective).
    """
    energies = {}
    for symbol in sorted(set(elements), key=lambda s: atomic_numbers[s]):
        unpaired = unpaired_electrons(symbol)
        calc = calculator_factory(symbol, unpaired)
        try:
            energy, _ = compute_label(calc, Atoms(symbol, positions=[(0.0, 0.0, 0.0)]), timeout_s=timeout_s,
                                      label_id=f"atom-{symbol}", ledger=ledger, purpose=ATOMIC_ENERGY)
        finally:
            if hasattr(calc, "close"):
                calc.close()
        log.info("isolated %s (%d unpaired electron(s)): %.8f eV", symbol, unpaired, energy)
        energies[symbol] = energy
    return energies


def energies_table(energies: dict[str, float], *, reference: str) -> str:
    lines = [f"Isolated-atom energies from {reference}", f"{'element':>8} {'Z':>4} {'unpaired':>8} {'E0 / eV':>20}"]
    lines += [f"{symbol:>8} {atomic_numbers[symbol]:>4d} {unpaired_electrons(symbol):>8d} {energy:>20.8f}"
              for symbol, energy in energies.items()]
    return "\n".join(lines)


def energies_yaml(energies: dict[str, float], *, reference: str) -> str:
    header = (f"# Isolated-atom energies (eV) computed with {reference}, spin-polarised ground states.\n"
              "# Paste under ARCHITECTURE in mace_settings.yaml.\n")
    body = yaml.safe_dump({"atomic_energies": {s: float(e) for s, e in energies.items()}}, sort_keys=False)
    return header + body


@root_only
def write_outputs(run_dir: Path, energies: dict[str, float], *, reference: str) -> Path:
    """The YAML snippet (atomic write) and the table in logs/atomic_energies.log; root rank only."""
    table = energies_table(energies, reference=reference)
    log.info("\n%s", table)
    log_path = Path(run_dir) / LOG_FILE
    if not _logging_to(log_path):
        append_durable(log_path, table + "\n")
    yaml_path = Path(run_dir) / YAML_FILE
    atomic_write_text(yaml_path, energies_yaml(energies, reference=reference))
    log.info("wrote %s", yaml_path)
    return yaml_path


def _logging_to(path: Path) -> bool:
    """True when fhi_al's logger already writes to `path` (then the table is in it via log.info)."""
    target = path.resolve()
    return any(Path(getattr(handler, "baseFilename", "")).resolve() == target
               for handler in logging.getLogger("fhi_al").handlers if hasattr(handler, "baseFilename"))


def run(context: Any) -> dict[str, float]:
    """FHI_AL-atomic-energies: E0 of every element of every system of the run with the configured reference.

    `context` provides run_dir, settings (RunSettings), systems (or geometry), control (Aims parameters or None)
    and comm (the reference communicator; all its ranks take part in every reference call).
    """
    run_dir = Path(context.run_dir)
    kwargs = reference_kwargs(context.settings)
    reference = _describe(kwargs)
    elements = run_elements(context)
    log.info("computing isolated-atom energies of %s with %s", ", ".join(sorted(set(elements))), reference)
    factory = reference_factory(**kwargs, comm=getattr(context, "comm", None), run_dir=run_dir,
                                control=getattr(context, "control", None))
    ledger = Ledger(ledger_path(run_dir), writes=is_root(getattr(context, "comm", None)))
    energies = isolated_atom_energies(elements, calculator_factory=factory, ledger=ledger,
                                      timeout_s=reference_timeout_from_settings(context.settings))
    write_outputs(run_dir, energies, reference=reference)
    return energies


def run_elements(context: Any) -> list[str]:
    """Every element of every system of the run (a context without systems: those of its geometry)."""
    systems = getattr(context, "systems", None)
    if systems is None:
        return list(dict.fromkeys(context.geometry.get_chemical_symbols()))
    return system_elements(systems)


def _describe(kwargs: dict[str, Any]) -> str:
    options = kwargs["options"]
    detail = {"xtb": options.get("method", DEFAULT_METHOD),
              "pyscf": f"{options.get('xc', DEFAULT_XC)}/{options.get('basis', DEFAULT_BASIS)}"}.get(kwargs["name"])
    return f"{kwargs['name']} ({detail})" if detail else kwargs["name"]


__all__ = ["GROUND_STATE_UNPAIRED", "unpaired_electrons", "spin_options", "reference_factory",
           "isolated_atom_energies", "energies_table", "energies_yaml", "write_outputs", "run"]
