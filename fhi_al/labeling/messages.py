"""What the labelling service sends between ranks: message tags, structures as plain arrays, polite receives."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from ase import Atoms

log = logging.getLogger(__name__)

TAG_TASK = 101  # ML rank (or group leader) -> reference rank: a structure to compute, or None to stop
TAG_RESULT = 102  # group leader -> ML rank: a LabelResult with the group's busy interval
POLL_INTERVAL_S = 0.005  # idle ranks poll instead of blocking: MPICH's blocking calls spin a core


def atoms_message(atoms: Atoms) -> dict:
    return {"numbers": atoms.get_atomic_numbers(), "positions": atoms.get_positions(), "cell": atoms.get_cell()[:],
            "pbc": atoms.get_pbc(), "info": {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}}


def atoms_from_message(message: dict) -> Atoms:
    atoms = Atoms(numbers=message["numbers"], positions=message["positions"], cell=message["cell"],
                  pbc=message["pbc"])
    atoms.info.update(message["info"])
    return atoms


def receive_politely(comm: Any, *, source: int, tag: int) -> Any:
    """Blocking receive that sleeps between probes, so a waiting rank leaves its core to the others."""
    while not comm.mpi.Iprobe(source=source, tag=tag):
        time.sleep(POLL_INTERVAL_S)
    return comm.mpi.recv(source=source, tag=tag)


def stop_ranks(comm: Any, ranks: Sequence[int]) -> None:
    for rank in ranks:
        comm.mpi.send(None, dest=rank, tag=TAG_TASK)
