"""Checks of the exploration keys (biases, metadynamics, PLUMED, absolute threshold, replica exchange) that
involve more than one key or the geometry; each raises SettingsError naming the key to change.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from ..errors import SettingsError
from .md_schema import CV_KINDS, MdSettings, MetadynamicsSettings
from .schema import AlSettings

REFERENCE_DRIVEN = ("aimd",)  # initial samplings whose MD runs on the reference itself


def plumed_available() -> bool:
    """The `plumed` Python module can be imported (its kernel is checked when a trajectory starts)."""
    return importlib.util.find_spec("plumed") is not None


def check_cvs(metadynamics: MetadynamicsSettings, where: str) -> None:
    """Each CV is one of the known kinds with its number of atom indices; sigma has one positive width per CV."""
    if not metadynamics.cvs:
        raise SettingsError("needs at least one collective variable", where=f"{where}.cvs")
    for position, cv in enumerate(metadynamics.cvs):
        key = f"{where}.cvs[{position}]"
        if not isinstance(cv, dict) or len(cv) != 1:
            raise SettingsError(f"got {cv!r}; each CV is one mapping like `torsion: [4, 6, 8, 14]` (kinds: "
                                f"{', '.join(CV_KINDS)})", where=key)
        kind, atoms = next(iter(cv.items()))
        if kind not in CV_KINDS:
            raise SettingsError(f"unknown CV kind {kind!r}; allowed: {', '.join(CV_KINDS)}", where=key)
        if len(atoms) != CV_KINDS[kind]:
            raise SettingsError(f"a {kind} needs {CV_KINDS[kind]} atom indices, got {len(atoms)}", where=key)
        if len(set(atoms)) != len(atoms):
            raise SettingsError(f"the atom indices {atoms} repeat an atom", where=key)
        if any(index < 0 for index in atoms):
            raise SettingsError(f"atom indices count from 0, got {atoms}", where=key)
    if metadynamics.sigma is not None:
        if len(metadynamics.sigma) != len(metadynamics.cvs):
            raise SettingsError(f"{len(metadynamics.sigma)} widths for {len(metadynamics.cvs)} CVs; give one per CV",
                                where=f"{where}.sigma")
        for position, width in enumerate(metadynamics.sigma):
            if not width > 0.0:
                raise SettingsError(f"got {width}; a hill width must be > 0 (Å for a distance, rad otherwise)",
                                    where=f"{where}.sigma[{position}]")


def check_md_block(md: MdSettings, key: str, run_dir: Path | None = None) -> None:
    if md.metadynamics is not None:
        check_cvs(md.metadynamics, f"{key}.metadynamics")
    if md.plumed is not None:
        if md.metadynamics is not None:
            raise SettingsError("give either the built-in metadynamics or a PLUMED input, not both",
                                where=f"{key}.plumed")
        if not plumed_available():
            raise SettingsError("the `plumed` Python module is not installed (PyPI's `plumed` package is only the "
                                "wrapper; the kernel comes from a PLUMED build, e.g. conda-forge): use "
                                f"{key}.metadynamics for the built-in metadynamics or install PLUMED",
                                where=f"{key}.plumed")
        path = Path(md.plumed)
        if run_dir is not None and not path.is_absolute():
            path = run_dir / path
        if not path.is_file():
            raise SettingsError(f"got {md.plumed!r}: no such file; expected a PLUMED input", where=f"{key}.plumed")


def check_exploration(al: AlSettings, run_dir: Path | None = None) -> None:
    section = al.active_learning
    for key, md in al.md_entries():
        check_md_block(md, key, run_dir)
    initial_md = al.md_settings_for(0)
    if section.initial_sampling in REFERENCE_DRIVEN and initial_md.biased:
        key = "MD.0" if al.md_by_trajectory else "MD"
        name = "bias" if initial_md.bias != "none" else ("metadynamics" if initial_md.metadynamics else "plumed")
        raise SettingsError(f"the initial dataset's ab initio MD (initial_sampling: {section.initial_sampling}) runs "
                            f"with trajectory 0's MD settings, and a bias must not drive the reference's own MD; "
                            f"give MD per trajectory with no bias on trajectory 0, or choose an initial_sampling "
                            f"that samples without the reference (xtb-md, normal-modes, mace-mp0)",
                            where=f"{key}.{name}")
    if section.threshold_mode == "absolute":
        if section.threshold_eV_per_A is None:
            raise SettingsError("threshold_mode absolute needs threshold_eV_per_A (the calibrated force "
                                "uncertainty above which a frame is labelled)", where="ACTIVE_LEARNING.threshold_eV_per_A")
        if section.initial_train_dataset is not None and section.initial_valid_dataset is None:
            raise SettingsError("threshold_mode absolute is calibrated on validation labels, and a start from "
                                "initial_train_dataset without initial_valid_dataset has none when active learning "
                                "begins (the threshold would compare raw ensemble spreads until the first "
                                "validation label); give initial_valid_dataset or use threshold_mode "
                                "moving_average", where="ACTIVE_LEARNING.threshold_mode")
        upper = section.upper_threshold_eV_per_A
        if upper is not None and upper <= section.threshold_eV_per_A:
            raise SettingsError(f"got {upper}; the discard level must lie above threshold_eV_per_A = "
                                f"{section.threshold_eV_per_A}", where="ACTIVE_LEARNING.upper_threshold_eV_per_A")


def check_cv_atoms(al: AlSettings, n_atoms_of_trajectory: Callable[[int], int]) -> None:
    """Every CV's atom indices exist in the geometry of the trajectories it drives."""
    count = al.active_learning.num_trajectories
    for index in range(count):
        md = al.md_settings_for(index)
        if md.metadynamics is None:
            continue
        key = f"MD.{index}" if al.md_by_trajectory else "MD"
        n_atoms = n_atoms_of_trajectory(index)
        for position, cv in enumerate(md.metadynamics.cvs):
            atoms = next(iter(cv.values()))
            beyond = [atom for atom in atoms if atom >= n_atoms]
            if beyond:
                raise SettingsError(f"atom index {beyond[0]} is out of range: the geometry of trajectory {index} has "
                                    f"{n_atoms} atoms (0..{n_atoms - 1})", where=f"{key}.metadynamics.cvs[{position}]")
