"""Labelled data the user already has (ACTIVE_LEARNING.initial_train_dataset / initial_valid_dataset): one
extxyz file shared by all members or one per member tag, read and checked (REF_energy, REF_forces, elements
of the geometry) before anything is written, then stored as the run's initial datasets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ase.io
from ase import Atoms
from ase.data import chemical_symbols

from ..errors import InputError
from ..labeling.label import REF_ENERGY_KEY, REF_FORCES_KEY, REFERENCE_KEY
from .store import CONFIG_TYPE_KEY, DEFAULT_CONFIG_TYPE, label_atoms

log = logging.getLogger(__name__)

TRAIN_KEY = "ACTIVE_LEARNING.initial_train_dataset"
VALID_KEY = "ACTIVE_LEARNING.initial_valid_dataset"
GIVEN_PROCEDURE = "given"  # the provenance `procedure` of frames read from the user's files


@dataclass
class GivenDatasets:
    """Frames per set: key is a member tag or the shared tag; `sources` says which file each set came from."""

    train: dict[str, list[Atoms]] = field(default_factory=dict)
    valid: dict[str, list[Atoms]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # "train/<key>" -> file

    @property
    def num_frames(self) -> int:
        return sum(len(frames) for frames in (*self.train.values(), *self.valid.values()))


def dataset_files(value: str | Mapping[str, str] | None, *, key: str, tags: Sequence[str], shared_tag: str,
                  run_dir: Path) -> dict[str, Path]:
    """{set key: file} of a setting: one file -> {shared_tag: file}; a mapping must name every member tag."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {shared_tag: _resolve(value, run_dir)}
    unknown = sorted(set(value) - set(tags))
    missing = sorted(set(tags) - set(value))
    if unknown or missing:
        raise InputError(f"a mapping must give one file per member tag {list(tags)} (tags are GENERAL.name_exp_seed); "
                         f"{'unknown: ' + str(unknown) if unknown else ''}"
                         f"{'; ' if unknown and missing else ''}{'missing: ' + str(missing) if missing else ''}",
                         where=key)
    return {tag: _resolve(path, run_dir) for tag, path in value.items()}


def _resolve(path: str, run_dir: Path) -> Path:
    resolved = Path(os.path.expanduser(path))
    return resolved if resolved.is_absolute() else run_dir / resolved


def read_checked(path: Path, *, key: str, elements: set[int]) -> list[Atoms]:
    """The frames of an extxyz file, each with REF_energy and REF_forces and only the geometry's elements."""
    if not path.is_file():
        raise InputError(f"{path}: no such file", where=key)
    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as error:  # noqa: BLE001 - any parse failure means the file is not usable
        raise InputError(f"{path}: not a readable extxyz file ({type(error).__name__}: {error})", where=key) from None
    if not frames:
        raise InputError(f"{path}: the file holds no frames", where=key)
    allowed = ", ".join(chemical_symbols[z] for z in sorted(elements))
    for index, atoms in enumerate(frames):
        where = f"{path}, frame {index}"
        if REF_ENERGY_KEY not in atoms.info:
            raise InputError(f"{where}: no {REF_ENERGY_KEY} in the comment line (the reference energy in eV, as "
                             f"mace's --energy_key)", where=key)
        if REF_FORCES_KEY not in atoms.arrays:
            raise InputError(f"{where}: no {REF_FORCES_KEY} column (the reference forces in eV/Å, as mace's "
                             f"--forces_key); a dataset without forces cannot train the ensemble", where=key)
        other = sorted(set(atoms.numbers.tolist()) - elements)
        if other:
            raise InputError(f"{where}: element(s) {', '.join(chemical_symbols[z] for z in other)} are not in the "
                             f"geometry (allowed: {allowed})", where=key)
    return frames


def as_stored(frames: Sequence[Atoms], *, split: str, set_key: str) -> list[Atoms]:
    """The user's frames as labels of the run (provenance `given`, unique label ids)."""
    stored = []
    for index, atoms in enumerate(frames):
        info: dict[str, Any] = atoms.info
        stored.append(label_atoms(atoms, energy_eV=float(info[REF_ENERGY_KEY]),
                                  forces_eV_per_A=atoms.arrays[REF_FORCES_KEY],
                                  config_type=str(info.get(CONFIG_TYPE_KEY, DEFAULT_CONFIG_TYPE)),
                                  procedure=GIVEN_PROCEDURE, trajectory=0, md_step=index,
                                  reference=str(info.get(REFERENCE_KEY, GIVEN_PROCEDURE)),
                                  label_id=f"{GIVEN_PROCEDURE}-{split}-{set_key}-{index}"))
    return stored


def split_off_valid(frames: list[Atoms], *, valid_ratio: float, path: Path) -> tuple[list[Atoms], list[Atoms]]:
    """Without a validation file: every k-th frame (k = round(1 / valid_ratio)) validates, the rest train."""
    if len(frames) < 2:
        raise InputError(f"{path}: one frame cannot be split into training and validation; give at least 2 frames "
                         f"or an initial_valid_dataset", where=VALID_KEY)
    step = max(round(1.0 / valid_ratio), 2)
    valid = frames[step - 1::step] or frames[-1:]
    train = [atoms for atoms in frames if not any(atoms is v for v in valid)]
    return train, valid


def read_given(al_settings: Any, *, run_dir: Path, elements: set[int], tags: Sequence[str],
               shared_tag: str) -> GivenDatasets:
    """The given datasets of a run, checked (InputError naming the key and file) against the atomic numbers of
    the run's systems; None-valued settings -> empty."""
    given = GivenDatasets()
    train_files = dataset_files(al_settings.initial_train_dataset, key=TRAIN_KEY, tags=tags, shared_tag=shared_tag,
                                run_dir=run_dir)
    valid_files = dataset_files(al_settings.initial_valid_dataset, key=VALID_KEY, tags=tags, shared_tag=shared_tag,
                                run_dir=run_dir)
    if valid_files and not train_files:
        raise InputError("a validation dataset needs initial_train_dataset too", where=VALID_KEY)
    for set_key, path in train_files.items():
        frames = read_checked(path, key=TRAIN_KEY, elements=elements)
        if not valid_files:
            frames, valid = split_off_valid(frames, valid_ratio=al_settings.valid_ratio, path=path)
            given.valid[set_key] = as_stored(valid, split="valid", set_key=set_key)
            given.sources[f"valid/{set_key}"] = f"{path} ({len(valid)} frames split off by valid_ratio)"
        given.train[set_key] = as_stored(frames, split="train", set_key=set_key)
        given.sources[f"train/{set_key}"] = str(path)
    for set_key, path in valid_files.items():
        given.valid[set_key] = as_stored(read_checked(path, key=VALID_KEY, elements=elements), split="valid",
                                         set_key=set_key)
        given.sources[f"valid/{set_key}"] = str(path)
    return given
