"""Replay data of multihead fine-tuning (ARCHITECTURE.finetuning: multihead): labelled frames of the foundation's
own reference, trained on mace's `pt_head` next to the run's data on the `Default` head so that fine-tuning does
not erase what the foundation knew (mace's multiheads_finetuning, with the replay set given by the user).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import torch
from ase import Atoms

from ...errors import InputError
from ..base import REF_ENERGY_KEY, REF_FORCES_KEY

log = logging.getLogger(__name__)

REPLAY_KEY = "ARCHITECTURE.replay_dataset"
HEAD_KEY = "head"  # mace's default head_key in atoms.info
REPLAY_HEAD = "pt_head"


def read_replay(path: str | Path | None, foundation: torch.nn.Module) -> list[Atoms]:
    """The replay frames of `path`, tagged for the pt_head; InputError naming the key for a missing or
    unreadable file, a frame without REF_energy/REF_forces, or elements the foundation does not know."""
    if path is None:
        raise InputError("multihead fine-tuning needs replay data: an extxyz file of labelled frames",
                         where=REPLAY_KEY)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file {str(path)!r}", where=REPLAY_KEY)
    from ase.io import read

    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as error:  # noqa: BLE001 - any reader failure is a garbled file
        raise InputError(f"{path} is not an extxyz file ASE can read ({type(error).__name__}: {error})",
                         where=REPLAY_KEY) from None
    if not frames:
        raise InputError(f"{path} holds no frames", where=REPLAY_KEY)
    known = {int(z) for z in foundation.atomic_numbers}
    for index, atoms in enumerate(frames):
        if REF_ENERGY_KEY not in atoms.info or REF_FORCES_KEY not in atoms.arrays:
            raise InputError(f"frame {index} of {path} has no {REF_ENERGY_KEY}/{REF_FORCES_KEY}; replay frames must "
                             f"be labelled", where=REPLAY_KEY)
        unknown = sorted(set(int(z) for z in atoms.numbers) - known)
        if unknown:
            raise InputError(f"frame {index} of {path} has elements {unknown} the foundation model does not know",
                             where=REPLAY_KEY)
        atoms.info[HEAD_KEY] = REPLAY_HEAD
    return frames


def select_replay(frames: Iterable[Atoms], zs: Iterable[int]) -> list[Atoms]:
    """The replay frames made of the run's elements only (mace's fine_tuning_select keeps such frames too)."""
    allowed = set(int(z) for z in zs)
    frames = list(frames)
    kept = [atoms for atoms in frames if set(int(z) for z in atoms.numbers) <= allowed]
    if not kept:
        raise InputError(f"none of the {len(frames)} replay frames is made only of the system's elements "
                         f"{sorted(allowed)}", where=REPLAY_KEY)
    if len(kept) < len(frames):
        log.info("replay data: %d of %d frames have only the system's elements and are replayed", len(kept),
                 len(frames))
    return kept
