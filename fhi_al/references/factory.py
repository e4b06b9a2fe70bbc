"""Reference calculators by name (`make_reference`), built from plain option values or from RunSettings."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from ase.calculators.calculator import Calculator

from ..errors import InputError
from .aims import AimsASICalculator
from .faults import wrap_with_faults
from .pyscf_ref import PySCFCalculator
from .simulated import wrap_with_simulated_cost

log = logging.getLogger(__name__)

REFERENCE_NAMES = ("aims", "xtb", "pyscf", "emt")
SETTINGS_SECTION = "REFERENCE"


def options_dict(options: Any) -> dict[str, Any]:
    """Calculator options as a plain dict, whether given as a dict, a settings dataclass or None."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    if dataclasses.is_dataclass(options):
        return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}
    return {key: value for key, value in vars(options).items() if not key.startswith("_")}


def make_reference(*, name: str, options: Any = None, comm: Any = None, run_dir: str | Path | None = None,
                   control: Any = None, species_dir: str | Path | None = None,
                   aims_lib_path: str | Path | None = None, faults: Any = None,
                   simulated_cost_s: float | None = None,
                   system_controls: Mapping[str, Any] | None = None) -> Calculator:
    """The reference calculator `name` (aims | xtb | pyscf | emt) built from plain option values.

    `options`: the calculator's own options (REFERENCE.xtb / REFERENCE.pyscf section or dict). aims takes
    `control` (parsed control.in or a dict of control.in keywords), `species_dir`, `aims_lib_path` and `comm`
    (the ranks that compute together: an mpi4py or fhi_al.parallel communicator, given by the caller) and
    `system_controls` ({system name: control.in keywords}: a run of several systems, chosen per structure by
    `atoms.info["system"]`; `control` serves structures without one).
    `faults` (a FaultSpec, a spec string, or None to read FHI_AL_FAULTS) wraps the result in fault injection,
    for tests only. `simulated_cost_s` (benchmarks only) makes every calculation sleep that long first.
    """
    options = options_dict(options)
    if name == "xtb":
        from .xtb import make_xtb  # tblite's shared library is loaded only by runs that use it

        calc = make_xtb(**options)
    elif name == "pyscf":
        calc = PySCFCalculator(**options)
    elif name == "emt":
        from .emt import make_emt  # ASE's EMT loads scipy (its neighbour list): not for runs that don't use it

        calc = make_emt()
    elif name == "aims":
        calc = AimsASICalculator(lib_path=aims_lib_path, control=control, species_dir=species_dir, comm=comm,
                                 work_dir=Path(run_dir or ".") / "aims", system_controls=system_controls, **options)
    else:
        raise InputError(f"unknown reference calculator {name!r}; allowed: {', '.join(REFERENCE_NAMES)}",
                         where=f"{SETTINGS_SECTION}.calculator")
    return wrap_with_faults(wrap_with_simulated_cost(calc, simulated_cost_s), faults)


def reference_from_settings(settings: Any, run_dir: str | Path, comm: Any = None, control: Any = None, *,
                            system_controls: Mapping[str, Any] | None = None, **overrides: Any) -> Calculator:
    """`make_reference` with the values of RunSettings (al.reference, al.active_learning); `overrides`
    replace entries of the calculator's option dict (e.g. multiplicity for isolated atoms)."""
    kwargs = reference_kwargs(settings)
    kwargs["options"] = {**kwargs["options"], **overrides}
    return make_reference(**kwargs, comm=comm, run_dir=run_dir, control=control, system_controls=system_controls)


def reference_kwargs(settings: Any) -> dict[str, Any]:
    """name, options, species_dir, aims_lib_path, simulated_cost_s read from RunSettings (attributes read defensively)."""
    al = getattr(settings, "al", settings)
    reference = getattr(al, "reference", None)
    active = getattr(al, "active_learning", None)
    aims_lib_path = getattr(active, "aims_lib_path", None)
    name = getattr(reference, "calculator", None) or ("aims" if aims_lib_path else "xtb")
    options = options_dict(getattr(reference, name, None)) if name in ("xtb", "pyscf") else {}
    return {"name": name, "options": options, "species_dir": getattr(active, "species_dir", None),
            "aims_lib_path": aims_lib_path, "simulated_cost_s": getattr(reference, "simulated_cost_s", None)}


def reference_timeout_from_settings(settings: Any) -> float | None:
    al = getattr(settings, "al", settings)
    return getattr(getattr(al, "active_learning", None), "reference_timeout_s", None)
