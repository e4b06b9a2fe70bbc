"""Settings values that name a statistic of the training set, `${training_data_stats:NAME}` (NequIP's syntax),
parsed when the settings are read (torch-free) and resolved before every training session.
"""

from __future__ import annotations

import logging
import re
from dataclasses import fields, is_dataclass, replace
from typing import Any, Mapping

from ..errors import SettingsError
from ..settings.typed import suggest

log = logging.getLogger(__name__)

# Statistic name -> attribute of DatasetStatistics (fhi_al/architectures/base.py).
STATISTICS = {
    "num_neighbors_mean": "num_neighbors_mean",  # mean neighbour count within the architecture's cutoff
    "per_atom_energy_mean": "per_atom_energy_mean",  # eV/atom, of (E - sum E0)/N
    "per_atom_energy_std": "per_atom_energy_std",  # eV/atom
    "forces_rms": "forces_rms",  # eV/Å
    "per_type_forces_rms": "per_type_forces_rms",  # {Z: eV/Å}
    "per_type_energy_shifts": "per_type_energy_shifts",  # {Z: eV}, least squares
    "atomic_energies": "atomic_energies_eV",  # {Z: eV}, ARCHITECTURE.atomic_energies or least squares
}
_PATTERN = re.compile(r"^\$\{\s*training_data_stats\s*:\s*([A-Za-z0-9_]+)\s*\}$")


def is_reference(value: Any) -> bool:
    """True for a string of the form ${training_data_stats:...} (whatever the name)."""
    return isinstance(value, str) and _PATTERN.match(value.strip()) is not None


def parse_reference(value: str, *, where: str) -> str:
    """The statistic named by `value`; SettingsError naming it when unknown or malformed."""
    match = _PATTERN.match(str(value).strip())
    if match is None:
        raise SettingsError(f"got {value!r}; a statistic is written ${{training_data_stats:NAME}} with NAME one "
                            f"of {', '.join(STATISTICS)}", where=where)
    name = match.group(1)
    if name not in STATISTICS:
        raise SettingsError(f"unknown training-set statistic {name!r}.{suggest(name, list(STATISTICS))} Known: "
                            f"{', '.join(STATISTICS)}", where=where)
    return name


def extract_references(raw: dict, *, section: str) -> dict[str, str]:
    """Remove every `${training_data_stats:NAME}` value from the mapping `raw` (in place): {key: NAME}."""
    found = {}
    for key in [k for k, v in raw.items() if is_reference(v)]:
        found[str(key)] = parse_reference(raw.pop(key), where=f"{section}.{key}")
    return found


def statistic_value(stats: Any, name: str) -> Any:
    """The value of statistic `name` in a DatasetStatistics (a float or a {Z: float} mapping)."""
    value = getattr(stats, STATISTICS[name])
    return {int(z): float(v) for z, v in value.items()} if isinstance(value, Mapping) else float(value)


def resolve(value: Any, stats: Any, *, where: str) -> Any:
    """`value` with a statistic reference replaced by its value in `stats`; other values unchanged."""
    if is_reference(value):
        return statistic_value(stats, parse_reference(value, where=where))
    return value


def resolve_hypers(hypers: Any, references: Mapping[str, str], stats: Any) -> Any:
    """A copy of the frozen hyperparameter dataclass with each referenced field set from `stats`."""
    if not references:
        return hypers
    if not is_dataclass(hypers):
        raise SettingsError("statistic references need typed hyperparameters", where="ARCHITECTURE")
    known = {f.name for f in fields(hypers)}
    values = {}
    for key, name in references.items():
        if key not in known:
            raise SettingsError(f"unknown key {key!r}.{suggest(key, sorted(known))}", where=f"ARCHITECTURE.{key}")
        values[key] = statistic_value(stats, name)
    resolved = replace(hypers, **values)
    log.debug("hyperparameters from training-set statistics: %s", values)
    return resolved
