"""The systems of a run: one or several starting structures, each with its own index, name and (for the aims
reference) its own control.in, read from `MISC.path_to_geometry` and `MISC.path_to_control`.

`MISC.path_to_geometry` is a geometry file, a folder of geometry files (every regular file whose name ends in
`.in`, hidden files left out, in sorted order: index 0, 1, ...) or a mapping {index: file}.
`MISC.path_to_control` is one control.in for every system or a mapping {index: file} with an entry per system.
Every label carries its system's name in `atoms.info["system"]` (SYSTEM_KEY); a label without it belongs to
the only system of a single-system run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ase import Atoms

from .errors import InputError
from .inputs import ControlInput, aims_parameters, check_species, read_control, read_geometry
from .labeling.label import SYSTEM_KEY

log = logging.getLogger(__name__)

GEOMETRY_KEY = "MISC.path_to_geometry"
CONTROL_KEY = "MISC.path_to_control"
GEOMETRY_SUFFIX = ".in"  # files of a geometry folder that count as geometries


@dataclass(frozen=True)
class System:
    """One starting structure of the run. `atoms` carries info["system"] = name, so every frame copied from
    it (MD, pending labels, labels) says which system it belongs to."""

    index: int  # the key of path_to_geometry's mapping, or the position in the folder's sorted listing
    name: str  # the file stem, made unique (e.g. 'water', 'si8')
    atoms: Atoms
    control: dict[str, Any] | None = None  # Aims parameters (inputs.aims_parameters) when the reference is aims
    path: Path | None = None


def geometry_sources(source: str | Mapping[int, str], run_dir: Path) -> dict[int, Path]:
    """{index: geometry file} from path_to_geometry (a file, a folder or a mapping), paths against run_dir."""
    if isinstance(source, Mapping):
        if not source:
            raise InputError("the mapping is empty; give {index: geometry file} with at least one entry",
                             where=GEOMETRY_KEY)
        return {int(index): _resolve(run_dir, path) for index, path in sorted(source.items())}
    path = _resolve(run_dir, source)
    if not path.is_dir():
        return {0: path}
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.name.endswith(GEOMETRY_SUFFIX) and not p.name.startswith("."))
    if not files:
        raise InputError(f"folder holds no geometry files (files named *{GEOMETRY_SUFFIX} in FHI-aims "
                         f"geometry.in format), set by {GEOMETRY_KEY}", where=str(path))
    return dict(enumerate(files))


def _resolve(run_dir: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(run_dir) / path


def system_names(paths: Mapping[int, Path]) -> dict[int, str]:
    """The file stems ('geometry.in' -> 'geometry'); a stem shared by several files gets its index appended."""
    stems = {index: path.name.split(".")[0] or f"system{index}" for index, path in paths.items()}
    counts = {stem: list(stems.values()).count(stem) for stem in stems.values()}
    return {index: stem if counts[stem] == 1 else f"{stem}_{index}" for index, stem in stems.items()}


def load_systems(source: str | Mapping[int, str], run_dir: Path) -> list[System]:
    """Every system of path_to_geometry, read and checked (InputError naming the file), in index order."""
    paths = geometry_sources(source, run_dir)
    names = system_names(paths)
    systems = []
    for index, path in paths.items():
        atoms = read_geometry(path)
        atoms.info[SYSTEM_KEY] = names[index]
        systems.append(System(index=index, name=names[index], atoms=atoms, path=path))
    return systems


def control_sources(source: str | Mapping[int, str], systems: Sequence[System], run_dir: Path) -> dict[int, Path]:
    """{system index: control file}: one file for all, or a mapping with exactly the systems' indices."""
    indices = [system.index for system in systems]
    if not isinstance(source, Mapping):
        path = _resolve(run_dir, source)
        return {index: path for index in indices}
    extra = sorted(set(int(i) for i in source) - set(indices))
    if extra:
        raise InputError(f"index {extra[0]} has no geometry; {GEOMETRY_KEY} gives systems "
                         f"{', '.join(map(str, indices))}", where=CONTROL_KEY)
    missing = sorted(set(indices) - set(int(i) for i in source))
    if missing:
        raise InputError(f"no control file for system {missing[0]}; give one file for every system or an entry "
                         f"for each of {', '.join(map(str, indices))}", where=CONTROL_KEY)
    return {int(index): _resolve(run_dir, path) for index, path in source.items()}


def check_control_species(control: ControlInput, atoms: Atoms) -> None:
    """A control.in with species blocks must have one for every element of its geometry."""
    if not control.species:
        return
    missing = [s for s in dict.fromkeys(atoms.get_chemical_symbols()) if s not in control.species]
    if missing:
        raise InputError(f"its species blocks ({', '.join(control.species)}) do not match the geometry: no species "
                         f"block for {', '.join(missing)}; add the blocks or leave them out (species_dir supplies "
                         f"them)", where=str(control.path))


def with_controls(systems: Sequence[System], source: str | Mapping[int, str], run_dir: Path, *,
                  species_dir: str | Path) -> list[System]:
    """The systems with their Aims parameters: control.in read, species checked against each geometry."""
    paths = control_sources(source, systems, run_dir)
    parsed: dict[Path, ControlInput] = {}
    result = []
    for system in systems:
        path = paths[system.index]
        if path not in parsed:
            parsed[path] = read_control(path)
        check_control_species(parsed[path], system.atoms)
        check_species(Path(species_dir), system.atoms.get_chemical_symbols())
        result.append(System(index=system.index, name=system.name, atoms=system.atoms, path=system.path,
                             control=aims_parameters(parsed[path], species_dir=species_dir)))
    return result


def check_run_settings(systems: Sequence[System], active_learning: Any) -> None:
    """Settings that several systems need: every initial round (n_samples frames per member) samples each."""
    if len(systems) > 1 and active_learning.n_samples < len(systems):
        raise InputError(f"{active_learning.n_samples} frames per round cannot cover the {len(systems)} systems of "
                         f"{GEOMETRY_KEY}; set it to at least {len(systems)}", where="ACTIVE_LEARNING.n_samples")
    if len(systems) > 1 and active_learning.num_trajectories < len(systems):
        log.warning("num_trajectories = %d < %d systems: systems %s get no active-learning trajectory "
                    "(trajectory i runs system i mod %d).", active_learning.num_trajectories, len(systems),
                    ", ".join(s.name for s in systems[active_learning.num_trajectories:]), len(systems))


def system_of(atoms: Atoms, systems: Sequence[System]) -> str:
    """The name of the system `atoms` (a frame or label) belongs to: info["system"], or the only system."""
    name = atoms.info.get(SYSTEM_KEY)
    if name is not None:
        return str(name)
    if len(systems) == 1:
        return systems[0].name
    raise ValueError("a frame without info['system'] in a run of several systems")


def elements(systems: Sequence[System]) -> list[str]:
    """Every element of every system, each once."""
    return list(dict.fromkeys(s for system in systems for s in system.atoms.get_chemical_symbols()))


def atomic_numbers(systems: Sequence[System]) -> set[int]:
    """The atomic numbers of every system."""
    return {int(number) for system in systems for number in system.atoms.numbers}


def describe(systems: Sequence[System]) -> str:
    return ", ".join(f"{s.index}: {s.name} ({s.atoms.get_chemical_formula()}, {len(s.atoms)} atoms"
                     f"{', periodic' if s.atoms.pbc.any() else ''})" for s in systems)
