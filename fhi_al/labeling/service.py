"""How a procedure reaches the reference, whatever the number of ranks: `run_procedure` runs the procedure on
the ML rank with `Services` (the reference as an ASE Calculator, for ab initio MD and one-off calls, and a
label queue: submit/collect/wait) and makes every other rank serve the reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..parallel import ROOT, Comm, make_layout, world
from ..references.base import is_collective
from ..references.ledger import Ledger, as_ledger
from .groups import GroupLabeler, RemoteReference, serve_reference_group
from .messages import TAG_TRAIN, stop_ranks
from .serial import SerialLabeler, SharedReference, serve_shared_reference

log = logging.getLogger(__name__)


@dataclass
class Services:
    reference: Any  # ASE Calculator
    labeler: Any  # SerialLabeler or GroupLabeler
    training_ranks: tuple[int, ...] = ()  # the ranks that train members beside rank 0 (ACTIVE_LEARNING.ml_ranks)
    comm: Any = None  # the job's communicator (fhi_al.parallel.world()), to reach the training ranks


def run_procedure(procedure: Callable[[Services], Any], *, make_reference: Callable[[Any, int], Any],
                  reference_name: str = "reference", parallel: bool, group_size: int = 1, ml_ranks: int = 1,
                  serve_training: Callable[[Comm], Any] | None = None, timeout_s: float | None = None,
                  ledger: Any = None) -> Any:
    """Run `procedure(services)` on rank 0, the reference service on the reference ranks and
    `serve_training(comm)` on the training ranks (ranks 1 .. ml_ranks-1; without one they wait for the end).
    `make_reference(comm, group_index)` builds this rank's reference calculator; `reference_name` names it
    on rank 0 of parallel mode, which builds none.

    One process: everything here. Serial mode: rank 0 runs the procedure; with a collective reference
    (FHI-aims) the reference ranks join every calculation, with an embedded one they idle until the end. Parallel
    mode: rank 0 runs the procedure and queues labels; the reference ranks form groups of `group_size`
    ranks. A failure on a serving rank aborts the whole job rather than leaving rank 0 waiting.
    """
    comm = world()
    if comm.size == 1:
        return _run_serial_mode(procedure, comm, make_reference, timeout_s, ledger, ())
    layout = make_layout(parallel=parallel, group_size=group_size, ml_ranks=ml_ranks, comm=comm)
    if 0 < comm.rank < ml_ranks:
        return _serve_or_abort(comm, lambda: (serve_training or _wait_for_end)(comm), role="training members")
    if not parallel:
        return _run_serial_mode(procedure, layout.reference_comm, make_reference, timeout_s, ledger,
                                layout.training_ranks, world_comm=comm)
    if not layout.is_ml_rank:
        calc = make_reference(layout.reference_comm, layout.group_index)
        told = _told(ledger, writes=layout.reference_comm.rank == ROOT)
        return _serve_or_abort(comm, lambda: serve_reference_group(calc, layout=layout, comm=comm,
                                                                   timeout_s=timeout_s, ledger=told))
    labeler = GroupLabeler(comm, layout.leaders, timeout_s=timeout_s)
    log.info("Parallel mode: %s and %d reference group(s) of %d rank(s).",
             "1 ML rank" if ml_ranks == 1 else f"{ml_ranks} ML ranks", layout.num_groups, group_size)
    try:
        # The groups label periodic cells with stress whenever their reference gives it; this rank cannot ask
        # the library (e.g. an aims build without ASI_stress), so it offers stress and a missing one fails the
        # calculation that needed it (NPT ab initio MD) with ASE's PropertyNotImplementedError.
        reference = RemoteReference(labeler, reference_name, stress=True)
        return procedure(Services(reference=reference, labeler=labeler, training_ranks=tuple(layout.training_ranks),
                                  comm=comm))
    finally:
        labeler.close()
        stop_training_ranks(comm, layout.training_ranks)


def _wait_for_end(comm: Comm) -> None:
    """A training rank in a procedure that trains nothing on it: wait (without spinning) for rank 0's stop."""
    while comm.receive(source=ROOT, tag=TAG_TRAIN) is not None:
        pass


def stop_training_ranks(comm: Comm, ranks: Sequence[int]) -> None:
    for rank in ranks:
        comm.send(None, dest=rank, tag=TAG_TRAIN)


def _told(ledger: Any, *, writes: bool) -> Ledger | None:
    """The ledger of this rank, told whether it writes."""
    if ledger is None:
        return None
    ledger = as_ledger(ledger)
    return Ledger(ledger.path, writes=writes, label_purpose=ledger.label_purpose)


def _run_serial_mode(procedure, comm: Comm, make_reference, timeout_s, ledger, training_ranks: Sequence[int],
                     world_comm: Comm | None = None) -> Any:
    """`comm`: the ranks that share the reference (rank 0 first); `world_comm`: the job's, for the training ranks."""
    calc = make_reference(comm, 0)
    if comm.rank != ROOT:
        return _serve_or_abort(comm, lambda: serve_shared_reference(calc, comm))
    reference = SharedReference(calc, comm) if comm.size > 1 and is_collective(calc) else calc
    try:
        return procedure(Services(reference=reference,
                                  labeler=SerialLabeler(reference, timeout_s=timeout_s, ledger=ledger),
                                  training_ranks=tuple(training_ranks), comm=world_comm or comm))
    finally:
        if comm.size > 1:
            stop_ranks(comm, range(1, comm.size))
        if world_comm is not None:
            stop_training_ranks(world_comm, training_ranks)


def _serve_or_abort(comm: Comm, serve: Callable[[], None], *, role: str = "serving the reference") -> None:
    try:
        serve()
    except BaseException:
        # written (and flushed) to the run's log before MPI_Abort, which may cut the launcher's output short
        log.critical("rank %d failed while %s; aborting the job", comm.rank, role, exc_info=True)
        comm.abort(1)
