"""The run's structure and FHI-aims inputs: geometry.in (ASE's aims reader), control.in keywords, species files.

Every problem becomes an `InputError` naming the file (and line or element), so the command line can say
exactly what to fix before anything runs.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from .errors import InputError
from .settings.typed import suggest

log = logging.getLogger(__name__)

GEOMETRY_KEYWORDS = ("atom", "atom_frac", "lattice_vector", "initial_moment", "initial_charge",
                     "constrain_relaxation", "velocity", "hessian_block", "hessian_block_lv", "hessian_file",
                     "homogeneous_field", "multipole", "trust_radius", "symmetry_n_params", "symmetry_params",
                     "symmetry_lv", "symmetry_frac", "calculate_friction", "RT_TDDFT_initial_velocity",
                     "empty", "pseudocore", "verbatim_writeout")
LATTICE_VECTORS_NEEDED = 3

# FHI-aims control.in keywords fhi_al passes through to the library (compared case-insensitively).
CONTROL_KEYWORDS = (
    # physical model
    "xc", "spin", "charge", "relativistic", "default_initial_moment", "fixed_spin_moment", "hybrid_xc_coeff",
    "hse_unit", "hf_version", "RI_method", "RI_type", "use_hartree_non_periodic_ewald", "vdw_correction_hirshfeld",
    "vdw_ts", "many_body_dispersion", "many_body_dispersion_nl", "mbd_eigensolver", "xdm", "dft_components",
    "plus_u", "plus_u_petukhov_mixing", "plus_u_use_hydros", "hubbard_coefficient", "libxc_param",
    "override_relativity", "include_spin_orbit", "total_energy_method", "exx_band_structure_version",
    "frozen_core_scf", "frozen_core_scf_cutoff", "compensate_multipole_errors", "use_dipole_correction",
    "set_vacuum_level", "solvent", "mpe_solvent_permittivity", "mpe_nonelectrostatic_model",
    # k-points and periodicity
    "k_grid", "k_offset", "k_grid_density", "symmetry_reduced_k_grid", "use_symmetric_forces",
    "use_full_symmetry", "fhi_ase_symmetry",
    # SCF
    "sc_accuracy_rho", "sc_accuracy_eev", "sc_accuracy_etot", "sc_accuracy_forces", "sc_accuracy_stress",
    "sc_accuracy_potjump", "sc_iter_limit", "sc_init_iter", "sc_init_factor", "mixer", "charge_mix_param",
    "spin_mix_param", "n_max_pulay", "ini_linear_mixing", "ini_linear_mix_param", "ini_spin_mix_param",
    "preconditioner", "occupation_type", "occupation_acc", "mu_determination_method", "fermi_acc",
    "max_zeroin", "adjust_scf", "adjust_scf_always", "empty_states", "calculate_all_eigenstates",
    "restart", "restart_read_only", "restart_write_only", "force_potential", "density_update_method",
    "KS_method", "elsi_method", "elsi_restart", "basis_threshold", "override_illconditioning",
    "condition_penalty", "prune_basis_once", "use_density_matrix", "use_local_index", "load_balancing",
    "collect_eigenvectors", "packed_matrix_format", "packed_matrix_threshold", "communication_type",
    "use_logsbt", "use_2d_corr", "use_alltoall", "distributed_spline_storage", "scalapack_blocksize",
    "empty_states_min", "walltime", "check_cpu_consistency", "cpu_consistency_threshold",
    "hartree_convergence_parameter", "hartree_radius_threshold", "hartree_partition_type",
    "hartree_fp_function_splines", "multipole_threshold", "l_hartree", "partition_type",
    "integration_accuracy", "force_lebedev", "Ewald_radius", "grid_partitioning_method",
    "points_in_batch", "batch_size_limit", "min_batch_size", "max_batch_size", "use_angular_division",
    "override_warning_libxc", "override_warning_nobasis", "override_warning_negative_nucleus",
    "legacy_monopole_extrapolation", "evaluate_work_function", "final_forces_cleaned",
    # forces, relaxation, MD (the library only evaluates; ASE drives)
    "compute_forces", "compute_analytical_stress", "compute_numerical_stress", "compute_heat_flux",
    "relax_geometry", "relax_unit_cell", "max_relaxation_steps", "energy_tolerance", "harmonic_length_scale",
    "init_hess", "distributed_hessian", "relax_trust_radius", "MD_run", "MD_time_step", "MD_MB_init",
    "MD_clean_rotations", "MD_restart", "MD_schedule", "MD_segment", "MD_thermostat_units", "MD_RNG_seed",
    "output_level", "output", "write_restart_geometry", "hessian_to_restart_geometry", "aims_uuid",
    "check_stacksize", "stacksize_limit", "sc_check_ts", "elsi_output", "print_self_energies",
    "use_gpu", "gpu_density", "gpu_hamiltonian", "gpu_forces", "gpu_stress",
)
# Keywords that may appear on several lines; collected into a list (ASE writes one line per entry).
REPEATABLE_KEYWORDS = ("output",)
# Keywords with no value (their presence switches something on).
FLAG_KEYWORDS = ("vdw_correction_hirshfeld", "many_body_dispersion", "many_body_dispersion_nl", "vdw_ts",
                 "use_dipole_correction", "final_forces_cleaned", "use_full_symmetry")
SPIN_VALUES = ("none", "collinear")
_FORTRAN_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[dD][+-]?\d+$")


@dataclass
class ControlInput:
    """control.in up to its species blocks: keyword -> value as ASE's aims writer expects it."""

    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # keyword -> line number (first occurrence)
    had_species_blocks: bool = False
    species: list[str] = field(default_factory=list)  # elements of its species blocks, in order


# ------------------------------------------------------------------------------------------------ geometry.in
def _readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"file not found; {what}", where=str(path))
    if not path.is_file():
        raise InputError(f"is not a regular file; {what}", where=str(path))


def _check_geometry_lines(text: str, path: Path) -> int:
    """Keyword and element checks ASE's reader would report cryptically; returns the number of atoms."""
    from ase.data import chemical_symbols

    symbols = [s for s in chemical_symbols if s != "X"]
    num_atoms = num_lattice = 0
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        keyword = tokens[0]  # FHI-aims (and ASE's reader) read geometry.in keywords case-sensitively
        if keyword not in GEOMETRY_KEYWORDS:
            raise InputError(f"line {number}: unknown geometry.in keyword {tokens[0]!r}."
                             f"{suggest(tokens[0], GEOMETRY_KEYWORDS)} Expected lines like "
                             f"'atom x y z Element' (Å)", where=str(path))
        if keyword in ("atom", "atom_frac", "lattice_vector"):
            expected = 5 if keyword != "lattice_vector" else 4
            if len(tokens) < expected or not all(_is_number(t) for t in tokens[1:4]):
                form = "lattice_vector x y z" if keyword == "lattice_vector" else f"{keyword} x y z Element"
                raise InputError(f"line {number}: expected '{form}', got {line.strip()!r}", where=str(path))
        if keyword in ("atom", "atom_frac"):
            num_atoms += 1
            if tokens[4] not in symbols:
                raise InputError(f"line {number}: unknown element {tokens[4]!r}.{suggest(tokens[4], symbols)}",
                                 where=str(path))
        num_lattice += keyword == "lattice_vector"
    if num_atoms == 0:
        raise InputError("contains no atoms; expected lines like 'atom x y z Element' (Å)", where=str(path))
    if num_lattice not in (0, LATTICE_VECTORS_NEEDED):
        raise InputError(f"has {num_lattice} lattice_vector line(s); a periodic structure needs exactly 3, "
                         f"a molecule none", where=str(path))
    return num_atoms


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_geometry(path: Path) -> Atoms:
    """The structure in an FHI-aims geometry.in, read with ASE's aims reader."""
    path = Path(path)
    _readable_file(path, "the run needs the starting structure in FHI-aims geometry.in format")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file: {error}", where=str(path)) from None
    num_atoms = _check_geometry_lines(text, path)
    from ase.io import read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # ASE's aims I/O moving to a plugin
            atoms = read(path, format="aims", parallel=False)
    except Exception as error:  # noqa: BLE001 - any reader failure is a garbled file for the user
        raise InputError(f"ASE's FHI-aims reader cannot read it: {type(error).__name__}: {error}",
                         where=str(path)) from None
    if len(atoms) != num_atoms:
        raise InputError(f"read {len(atoms)} atoms but the file has {num_atoms} atom lines", where=str(path))
    return atoms


# ------------------------------------------------------------------------------------------------- control.in
def _value(tokens: list[str]) -> Any:
    """Tokens after a keyword -> bool/int/float/str, or a list of those for several tokens."""
    values = [_token_value(t) for t in tokens]
    if not values:
        return ""
    return values[0] if len(values) == 1 else values


def _token_value(token: str) -> Any:
    lowered = token.lower()
    if lowered in (".true.", "true"):
        return True
    if lowered in (".false.", "false"):
        return False
    try:
        return int(token)
    except ValueError:
        pass
    if _FORTRAN_EXPONENT.match(token):
        token = token.replace("d", "e").replace("D", "e")
    try:
        return float(token)
    except ValueError:
        return token


def read_control(path: Path) -> ControlInput:
    """Parse control.in into keywords (species blocks are taken from species_dir instead)."""
    path = Path(path)
    _readable_file(path, "the aims reference needs FHI-aims' control.in (xc, spin, relativistic, ...)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file: {error}", where=str(path)) from None
    control = ControlInput(path=path)
    known = {k.lower(): k for k in CONTROL_KEYWORDS}
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        keyword = known.get(tokens[0].lower())
        if tokens[0].lower() == "species":
            control.had_species_blocks = True
            control.species = _species_names(lines[number - 1:])
            log.info("%s: species blocks from line %d on are replaced by the files in species_dir.", path, number)
            break
        if keyword is None:
            raise InputError(f"line {number}: unknown FHI-aims keyword {tokens[0]!r}."
                             f"{suggest(tokens[0], CONTROL_KEYWORDS)} (fhi_al passes only known keywords to "
                             f"FHI-aims; species data belong in species_dir)", where=str(path))
        _store(control, keyword, tokens[1:], number)
    _check_control_values(control)
    return control


def _species_names(lines: list[str]) -> list[str]:
    """The element of every 'species X' line of control.in's species blocks."""
    names = []
    for line in lines:
        tokens = line.split("#", 1)[0].split()
        if len(tokens) >= 2 and tokens[0].lower() == "species":
            names.append(tokens[1])
    return names


def _store(control: ControlInput, keyword: str, tokens: list[str], number: int) -> None:
    if keyword in REPEATABLE_KEYWORDS:
        control.parameters.setdefault(keyword, []).append(" ".join(tokens))
        control.lines.setdefault(keyword, number)
        return
    if keyword in control.parameters:
        raise InputError(f"line {number}: keyword {keyword!r} appears again (first on line "
                         f"{control.lines[keyword]}); give it once", where=str(control.path))
    if not tokens and keyword not in FLAG_KEYWORDS:
        raise InputError(f"line {number}: keyword {keyword!r} needs a value", where=str(control.path))
    control.parameters[keyword] = True if keyword == "vdw_correction_hirshfeld" else _value(tokens)
    control.lines[keyword] = number


def _check_control_values(control: ControlInput) -> None:
    params, where = control.parameters, str(control.path)
    spin = params.get("spin")
    if spin is not None and str(spin).lower() not in SPIN_VALUES:
        raise InputError(f"line {control.lines['spin']}: spin {spin!r}; allowed: {', '.join(SPIN_VALUES)}",
                         where=where)
    k_grid = params.get("k_grid")
    if k_grid is not None:
        values = k_grid if isinstance(k_grid, list) else [k_grid]
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise InputError(f"line {control.lines['k_grid']}: k_grid needs three positive integers, got "
                             f"{k_grid!r}", where=where)
    for keyword in ("charge", "default_initial_moment"):
        value = params.get(keyword)
        if keyword in params and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"line {control.lines[keyword]}: {keyword} needs a number, got {value!r}", where=where)
    if "xc" not in params:
        raise InputError("no 'xc' line; FHI-aims needs the exchange-correlation functional (e.g. 'xc pbe')",
                         where=where)


# ---------------------------------------------------------------------------------------------- species_dir
def species_file(species_dir: Path, symbol: str) -> Path:
    """The species defaults file FHI-aims uses for `symbol`, e.g. species_dir/01_H_default."""
    from ase.data import atomic_numbers

    folder = Path(species_dir)
    if not folder.is_dir():
        raise InputError("no such folder; expected an FHI-aims species_defaults folder "
                         "(e.g. species_defaults/defaults_2020/light)", where=str(folder))
    path = folder / f"{atomic_numbers[symbol]:02d}_{symbol}_default"
    if not path.is_file():
        raise InputError(f"no species file for element {symbol} (expected {path.name}) in species_dir {folder}",
                         where=str(path))
    return path


def check_species(species_dir: Path, symbols: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Species file per element of the structure; InputError for the first element without one."""
    return {symbol: species_file(species_dir, symbol) for symbol in dict.fromkeys(symbols)}


def aims_parameters(control: ControlInput, *, species_dir: Path | str) -> dict[str, Any]:
    """Keyword arguments for ASE's `Aims` calculator / `ase.io.aims.write_control` (species from species_dir).

    Forces are always requested: every label needs them.
    """
    parameters = {key: (list(value) if isinstance(value, list) else value)
                  for key, value in control.parameters.items()}
    parameters["compute_forces"] = True
    parameters["species_dir"] = str(species_dir)
    return parameters


def load_aims_inputs(control_path: Path, species_dir: Path | str, atoms: Atoms) -> dict[str, Any]:
    """control.in parsed and checked against species_dir for the elements of `atoms`; the Aims parameters."""
    control = read_control(control_path)
    check_species(Path(species_dir), atoms.get_chemical_symbols())
    return aims_parameters(control, species_dir=species_dir)
