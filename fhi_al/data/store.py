"""Labelled structures on disk: extxyz files with MACE's keys that grow by durable appends.

A file written here trains unchanged with `mace_run_train --energy_key REF_energy --forces_key REF_forces`
(periodic frames carry `REF_stress`, Voigt 6 in eV/Å³: add `--stress_key REF_stress`).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import ase.io
import numpy as np
from ase import Atoms

from fhi_al.durable import append_durable, atomic_write_bytes
from fhi_al.errors import InputError
from fhi_al.labeling.label import (LABEL_ID_KEY, REF_ENERGY_KEY, REF_FORCES_KEY, REF_STRESS_KEY, REFERENCE_KEY,
                                   SYSTEM_KEY, labelled_atoms)

log = logging.getLogger(__name__)

CONFIG_TYPE_KEY = "config_type"
DEFAULT_CONFIG_TYPE = "Default"
SUFFIX = ".xyz"
EXTXYZ = "extxyz"

# Provenance keys in Atoms.info and the type each is read back as (extxyz guesses types from the text).
PROVENANCE_TYPES = {"procedure": str, "trajectory": int, "md_step": int, REFERENCE_KEY: str, LABEL_ID_KEY: str,
                    CONFIG_TYPE_KEY: str, SYSTEM_KEY: str}
# Per-atom arrays that describe the MD state rather than the label; never written to a dataset.
DROPPED_ARRAYS = ("momenta",)


class CorruptDatasetError(InputError):
    """A dataset file is damaged somewhere other than a torn final frame (which is repaired silently)."""


def make_label_id(procedure: str, trajectory: int, md_step: int, suffix: str = "") -> str:
    """A unique, human-readable label id such as 'initial-t0-s120' (never all digits)."""
    return f"{procedure}-t{int(trajectory)}-s{int(md_step)}{suffix}"


def with_provenance(labelled: Atoms, *, procedure: str, trajectory: int, md_step: int,
                    config_type: str = DEFAULT_CONFIG_TYPE) -> Atoms:
    """A copy of a label's structure (`LabelResult.atoms`) with its provenance, ready for `DatasetStore.append`."""
    stored = labelled.copy()
    stored.calc = None
    stored.info = {REF_ENERGY_KEY: float(labelled.info[REF_ENERGY_KEY]), CONFIG_TYPE_KEY: str(config_type),
                   "procedure": str(procedure), "trajectory": int(trajectory), "md_step": int(md_step),
                   REFERENCE_KEY: str(labelled.info[REFERENCE_KEY]), LABEL_ID_KEY: str(labelled.info[LABEL_ID_KEY])}
    if labelled.info.get(REF_STRESS_KEY) is not None:
        stored.info[REF_STRESS_KEY] = np.array(labelled.info[REF_STRESS_KEY], dtype=float)
    if labelled.info.get(SYSTEM_KEY) is not None:  # the run's system (fhi_al.systems); absent in old datasets
        stored.info[SYSTEM_KEY] = str(labelled.info[SYSTEM_KEY])
    return stored


def label_atoms(atoms: Atoms, *, energy_eV: float, forces_eV_per_A: np.ndarray,
                config_type: str = DEFAULT_CONFIG_TYPE, procedure: str, trajectory: int, md_step: int,
                reference: str, label_id: str, stress_eV_per_A3: np.ndarray | None = None) -> Atoms:
    """A calculator-free copy of `atoms` carrying the reference labels and their provenance.

    Pass the calculator's raw results (never constraint-adjusted forces). Non-finite results raise
    `ReferenceError`, so no NaN can reach a dataset.
    """
    labelled = labelled_atoms(atoms, energy_eV=energy_eV, forces_eV_per_A=forces_eV_per_A, reference=reference,
                              label_id=label_id, stress_eV_per_A3=stress_eV_per_A3)
    return with_provenance(labelled, procedure=procedure, trajectory=trajectory, md_step=md_step,
                           config_type=config_type)


def frames_to_text(frames: Sequence[Atoms]) -> str:
    """Extended-XYZ text of `frames`, calculators and MD momenta left out."""
    buffer = io.StringIO()
    ase.io.write(buffer, [_storable(atoms) for atoms in frames], format=EXTXYZ, parallel=False)
    return buffer.getvalue()


def complete_prefix(data: bytes) -> tuple[int, int]:
    """(bytes, frames) of the complete extxyz frames at the start of `data`.

    Raises `ValueError` when a complete line that should be a frame's atom count is not one.
    """
    end, n_frames, pos = 0, 0, 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:
            break  # the count line itself is torn
        n_atoms = int(data[pos:newline])  # ValueError for garbage
        cursor = newline + 1
        for _ in range(n_atoms + 1):  # comment line + one line per atom
            newline = data.find(b"\n", cursor)
            if newline < 0:
                return end, n_frames
            cursor = newline + 1
        pos = end = cursor
        n_frames += 1
    return end, n_frames


class DatasetStore:
    """Named extxyz datasets under `root`: name 'initial/train_{tag}' is the file root/initial/train_{tag}.xyz.

    One writer per file (the root rank). Appends are on disk before `append` returns; a frame torn by a
    kill during an append is cut off (atomically, with a warning) the next time the file is touched.
    A reader on another rank (`reader=True`) leaves the files alone: a frame the writer is appending right now
    looks torn to it, so it reads the complete frames only and writes nothing.
    """

    def __init__(self, root: str | os.PathLike, *, reader: bool = False):
        self.root = Path(root)
        self.reader = reader
        self._verified_size: dict[str, int] = {}

    def path(self, name: str) -> Path:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts:
            raise ValueError(f"dataset name {name!r} must be a relative path inside the store")
        return self.root.joinpath(*parts[:-1], parts[-1] + SUFFIX)

    def append(self, name: str, atoms_or_list: Atoms | Iterable[Atoms]) -> None:
        frames = [atoms_or_list] if isinstance(atoms_or_list, Atoms) else list(atoms_or_list)
        if not frames:
            return
        text = frames_to_text(frames)
        path = self.path(name)
        self._ensure_intact(name, path)
        append_durable(path, text)
        self._verified_size[name] = path.stat().st_size

    def append_new(self, name: str, frames: Iterable[Atoms]) -> int:
        """Append only frames whose label_id is not in the file yet (idempotent on rerun); returns how many."""
        present = self.label_ids(name)
        fresh = [atoms for atoms in frames if atoms.info.get("label_id") not in present]
        self.append(name, fresh)
        return len(fresh)

    def write(self, name: str, frames: Sequence[Atoms]) -> None:
        """Replace the whole file atomically."""
        path = self.path(name)
        data = frames_to_text(frames).encode("utf-8")
        atomic_write_bytes(path, data)
        self._verified_size[name] = len(data)

    def read(self, name: str) -> list[Atoms]:
        path = self.path(name)
        if not path.exists():
            return []
        data = self._ensure_intact(name, path)
        if not data:
            return []
        try:
            frames = ase.io.read(io.StringIO(data.decode("utf-8")), index=":", format=EXTXYZ, parallel=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is damaged
            raise CorruptDatasetError(f"cannot parse extxyz ({exc})", where=str(path)) from exc
        return [_normalised(atoms) for atoms in frames]

    def count(self, name: str) -> int:
        path = self.path(name)
        if not path.exists():
            return 0
        return complete_prefix(self._ensure_intact(name, path))[1]

    def label_ids(self, name: str) -> set[str]:
        return {atoms.info["label_id"] for atoms in self.read(name) if "label_id" in atoms.info}

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(path.relative_to(self.root).with_suffix("").as_posix()
                      for path in self.root.rglob(f"*{SUFFIX}") if path.is_file())

    def _ensure_intact(self, name: str, path: Path) -> bytes:
        """The file's bytes, after cutting off a torn final frame if there is one."""
        if not path.exists():
            return b""
        if self._verified_size.get(name) == path.stat().st_size:
            return path.read_bytes()
        data = path.read_bytes()
        try:
            end, n_frames = complete_prefix(data)
        except ValueError as exc:
            raise CorruptDatasetError(f"not an extxyz file written by fhi_al ({exc})", where=str(path)) from exc
        if end < len(data) and self.reader:
            return data[:end]  # being appended (or torn, and the writer cuts it off): not verified
        if end < len(data):
            log.warning("%s: removing a torn final frame (%d bytes) left by an interrupted write; "
                        "%d complete frames kept", path, len(data) - end, n_frames)
            data = data[:end]
            atomic_write_bytes(path, data)
        self._verified_size[name] = len(data)
        return data


def _storable(atoms: Atoms) -> Atoms:
    if REF_ENERGY_KEY not in atoms.info or REF_FORCES_KEY not in atoms.arrays:
        raise ValueError("only labelled structures (see label_atoms) can be stored")
    clean = atoms.copy()  # copy() leaves the calculator behind, so no SinglePointCalculator is written
    clean.set_constraint()
    for key in DROPPED_ARRAYS:
        if key in clean.arrays:
            del clean.arrays[key]
    return clean


def _normalised(atoms: Atoms) -> Atoms:
    """Give provenance keys their declared types back (extxyz reads 'label_id=12' as an int)."""
    for key, kind in PROVENANCE_TYPES.items():
        if key in atoms.info:
            atoms.info[key] = kind(atoms.info[key])
    if REF_ENERGY_KEY in atoms.info:
        atoms.info[REF_ENERGY_KEY] = float(atoms.info[REF_ENERGY_KEY])
    if REF_STRESS_KEY in atoms.info:
        atoms.info[REF_STRESS_KEY] = np.asarray(atoms.info[REF_STRESS_KEY], dtype=float).reshape(-1)
    return atoms
