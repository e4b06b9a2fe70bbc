"""What the labelling service sends between ranks: message tags and structures as plain arrays (the waiting
itself is the communicator's: `fhi_al.parallel.MPIComm.receive`)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ase import Atoms

log = logging.getLogger(__name__)

TAG_TASK = 101  # ML rank (or group leader) -> reference rank: a structure to compute, or None to stop
TAG_RESULT = 102  # group leader -> ML rank: a LabelResult with the group's busy interval
TAG_TRAIN = 103  # rank 0 -> training rank: work for its members, or None to stop
TAG_TRAINED = 104  # training rank -> rank 0: a member's weights and metrics after a visit


def atoms_message(atoms: Atoms) -> dict:
    return {"numbers": atoms.get_atomic_numbers(), "positions": atoms.get_positions(), "cell": atoms.get_cell()[:],
            "pbc": atoms.get_pbc(), "info": {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}}


def atoms_from_message(message: dict) -> Atoms:
    atoms = Atoms(numbers=message["numbers"], positions=message["positions"], cell=message["cell"],
                  pbc=message["pbc"])
    atoms.info.update(message["info"])
    return atoms


def stop_ranks(comm: Any, ranks: Sequence[int]) -> None:
    for rank in ranks:
        comm.send(None, dest=rank, tag=TAG_TASK)
