"""How a procedure reaches the reference, whatever the number of ranks: `run_procedure` runs the procedure on
the ML rank with `Services` (the reference as an ASE Calculator, for ab initio MD and one-off calls, and a
label queue: submit/collect/wait) and makes every other rank serve the reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..parallel import ROOT, Comm, make_layout, world
from ..references.base import is_collective
from ..references.ledger import Ledger, as_ledger
from .groups import GroupLabeler, RemoteReference, serve_reference_group
from .messages import stop_ranks
from .serial import SerialLabeler, SharedReference, serve_shared_reference

log = logging.getLogger(__name__)


@dataclass
class Services:
    reference: Any  # ASE Calculator
    labeler: Any  # SerialLabeler or GroupLabeler


def run_procedure(procedure: Callable[[Services], Any], *, make_reference: Callable[[Any, int], Any],
                  reference_name: str = "reference", parallel: bool, group_size: int = 1,
                  timeout_s: float | None = None, ledger: Any = None) -> Any:
    """Run `procedure(services)` on the rank(s) that do the ML, and the reference service on the others.
    `make_reference(comm, group_index)` builds this rank's reference calculator; `reference_name` names it
    on the ML rank of parallel mode, which builds none.

    One process: everything here. Serial mode: rank 0 runs the procedure; with a collective reference
    (FHI-aims) the other ranks join every calculation, with an embedded one they idle until the end. Parallel
    mode: rank 0 runs the procedure and queues labels; the other ranks form reference groups of `group_size`
    ranks. A failure on a serving rank aborts the whole job rather than leaving rank 0 waiting.
    """
    comm = world()
    if comm.size == 1 or not parallel:
        return _run_serial_mode(procedure, comm, make_reference, timeout_s, ledger)
    layout = make_layout(parallel=True, group_size=group_size, comm=comm)
    if not layout.is_ml_rank:
        calc = make_reference(layout.reference_comm, layout.group_index)
        told = _told(ledger, writes=layout.reference_comm.rank == ROOT)
        return _serve_or_abort(comm, lambda: serve_reference_group(calc, layout=layout, comm=comm,
                                                                   timeout_s=timeout_s, ledger=told))
    leaders = [1 + group * group_size for group in range(layout.num_groups)]
    labeler = GroupLabeler(comm, leaders, timeout_s=timeout_s)
    log.info("Parallel mode: 1 ML rank and %d reference group(s) of %d rank(s).", layout.num_groups, group_size)
    try:
        # The groups label periodic cells with stress whenever their reference gives it; this rank cannot ask
        # the library (e.g. an aims build without ASI_stress), so it offers stress and a missing one fails the
        # calculation that needed it (NPT ab initio MD) with ASE's PropertyNotImplementedError.
        reference = RemoteReference(labeler, reference_name, stress=True)
        return procedure(Services(reference=reference, labeler=labeler))
    finally:
        labeler.close()


def _told(ledger: Any, *, writes: bool) -> Ledger | None:
    """The ledger of this rank, told whether it writes."""
    if ledger is None:
        return None
    ledger = as_ledger(ledger)
    return Ledger(ledger.path, writes=writes, label_purpose=ledger.label_purpose)


def _run_serial_mode(procedure, comm: Comm, make_reference, timeout_s, ledger) -> Any:
    calc = make_reference(comm, 0)
    if comm.rank != ROOT:
        return _serve_or_abort(comm, lambda: serve_shared_reference(calc, comm))
    reference = SharedReference(calc, comm) if comm.size > 1 and is_collective(calc) else calc
    try:
        return procedure(Services(reference=reference,
                                  labeler=SerialLabeler(reference, timeout_s=timeout_s, ledger=ledger)))
    finally:
        if comm.size > 1:
            stop_ranks(comm, range(1, comm.size))


def _serve_or_abort(comm: Comm, serve: Callable[[], None]) -> None:
    try:
        serve()
    except BaseException:
        # written (and flushed) to the run's log before MPI_Abort, which may cut the launcher's output short
        log.critical("rank %d failed while serving the reference; aborting the job", comm.rank, exc_info=True)
        comm.abort(1)
