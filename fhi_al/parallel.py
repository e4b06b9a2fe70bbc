"""The communicator layer: every rank decision starts here, and this module imports nothing of fhi_al but errors.

`world()` is the job's communicator: mpi4py's COMM_WORLD when the job runs under mpiexec, a one-process
stand-in otherwise, with the same methods, so the rest of the code runs unchanged on one process.
Procedures ask this module who does what (`Layout`) instead of testing rank numbers themselves; the
labelling service built on it (reference groups, label queues) is the package `fhi_al.labeling`.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .errors import FhiAlError, InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = 0

# A waiting rank checks for its message, then sleeps, doubling the sleep up to a cap: MPICH's blocking calls
# (recv, probe, bcast, barrier) spin a core at 100% for as long as they wait, which on a shared node takes the
# core from the ranks that compute. The first sleep keeps a busy exchange fast; the cap bounds how late an idle
# rank notices its message (reference calculations take seconds to hours).
WAIT_FIRST_SLEEP_S = 0.001
WAIT_MAX_SLEEP_S = 0.05


def wait_until(ready: Callable[[], Any], *, first_sleep_s: float = WAIT_FIRST_SLEEP_S,
               max_sleep_s: float = WAIT_MAX_SLEEP_S) -> Any:
    """Call `ready()` until it returns something true (and return that), sleeping between calls with
    exponential back-off: the one way a rank of fhi_al waits for another."""
    sleep_s = first_sleep_s
    while not (outcome := ready()):
        time.sleep(sleep_s)
        sleep_s = min(2 * sleep_s, max_sleep_s)
    return outcome


class SerialComm:
    """The communicator of a one-process run: every collective is the identity."""

    rank = 0
    size = 1
    mpi = None  # the underlying mpi4py communicator, None here

    def bcast(self, obj: T, root: int = ROOT) -> T:
        return obj

    def barrier(self) -> None:
        return None

    def allreduce_max(self, value: float) -> float:
        return value

    def allgather(self, obj: Any) -> list:
        return [obj]

    def split(self, color: int, key: int = 0) -> "SerialComm":
        return self

    def abort(self, code: int = 1) -> None:
        sys.exit(code)

    def fortran_handle(self) -> int:
        """Handle that ASI_init expects; meaningless without MPI."""
        return 0

    def library_comm(self) -> Any:
        """A real mpi4py communicator of this one process, for libraries that need one (asi4py)."""
        from mpi4py import MPI  # loaded only when a library asks for it: a one-process run needs no MPI

        return MPI.COMM_WORLD


class MPIComm:
    """Thin wrapper around an mpi4py communicator with the methods fhi_al uses."""

    def __init__(self, comm):
        self.mpi = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    # Every collective starts with a polite barrier: a rank that arrives early (a reference rank while rank 0
    # trains) waits there without spinning; the collective itself then runs with every rank present.
    def barrier(self) -> None:
        wait_until(self.mpi.Ibarrier().Test)

    def bcast(self, obj: T, root: int = ROOT) -> T:
        self.barrier()
        return self.mpi.bcast(obj, root=root)

    def allreduce_max(self, value: float) -> float:
        from mpi4py import MPI

        self.barrier()
        return self.mpi.allreduce(value, op=MPI.MAX)

    def allgather(self, obj: Any) -> list:
        self.barrier()
        return self.mpi.allgather(obj)

    def split(self, color: int, key: int = 0) -> "MPIComm":
        self.barrier()
        return MPIComm(self.mpi.Split(color, key))

    def send(self, obj: Any, *, dest: int, tag: int) -> None:
        """Send `obj` (pickled); returns once MPI has it buffered or received. A small message goes at once; a
        large one waits (without spinning) until `dest` receives it."""
        wait_until(self.mpi.isend(obj, dest=dest, tag=tag).Test)

    def has_message(self, *, source: int, tag: int) -> bool:
        """True when a message from `source` with `tag` can be received now (never waits)."""
        return bool(self.mpi.Iprobe(source=source, tag=tag))

    def receive(self, *, source: int, tag: int) -> Any:
        """The next message from `source` with `tag`, waited for without spinning a core (`wait_until`)."""
        wait_until(lambda: self.has_message(source=source, tag=tag))
        return self.mpi.recv(source=source, tag=tag)

    def abort(self, code: int = 1) -> None:
        self.mpi.Abort(code)

    def fortran_handle(self) -> int:
        return self.mpi.py2f()

    def library_comm(self) -> Any:
        return self.mpi


Comm = SerialComm | MPIComm


def _launched_by_mpi() -> bool:
    markers = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_ID")
    return any(name in os.environ for name in markers)


def isolate_ase_from_mpi() -> None:
    """ASE broadcasts file reads and writes over its own world communicator once mpi4py is loaded; every
    rank decision in fhi_al is made here, so ASE gets a one-process communicator on every rank."""
    import ase.parallel

    ase.parallel.world = ase.parallel.DummyMPI()


@functools.lru_cache(maxsize=1)
def world() -> Comm:
    """The job's communicator (cached). Without an MPI launcher no MPI library is initialised."""
    isolate_ase_from_mpi()
    if os.environ.get("FHI_AL_NO_MPI") == "1" or not _launched_by_mpi():
        return SerialComm()
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() == 1:
        return SerialComm()
    return MPIComm(MPI.COMM_WORLD)


def mpi_world_for_library() -> Any:
    """An mpi4py communicator for libraries that need a real one (asi4py), even on one process."""
    return world().library_comm()


def is_root(comm: Comm | None = None) -> bool:
    return (comm or world()).rank == ROOT


def root_only(func: Callable[..., T]) -> Callable[..., T]:
    """Run `func` on the root rank only and hand its result to every rank; an fhi_al error raised on the
    root is raised on every rank, so that all of them stop the same way."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        comm = world()
        outcome: tuple[bool, Any] = (True, None)
        if comm.rank == ROOT:
            try:
                outcome = (True, func(*args, **kwargs))
            except FhiAlError as error:
                outcome = (False, error)
        ok, value = comm.bcast(outcome)
        if not ok:
            raise value
        return value

    return wrapper


class RootOnlyFilter(logging.Filter):
    """Lets records through on the root rank only, except CRITICAL ones (a rank about to end the job must be
    heard from wherever it runs); the one place where logs are rank-filtered."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or world().rank == ROOT


@dataclass(frozen=True)
class Layout:
    """Who does what in a job.

    serial mode (`parallel: false`): every rank is in `reference_comm`, rank 0 also does the ML.
    parallel mode: rank 0 does the ML; the other ranks form reference groups of `group_size` ranks.
    """

    parallel: bool
    is_ml_rank: bool
    group_index: int  # -1 on the ML rank in parallel mode
    num_groups: int
    reference_comm: Any  # the communicator this rank's reference calculator uses (None on the ML rank in parallel mode)


def make_layout(*, parallel: bool, group_size: int = 1, comm: Comm | None = None) -> Layout:
    comm = comm or world()
    if not parallel:
        return Layout(parallel=False, is_ml_rank=comm.rank == ROOT, group_index=0, num_groups=1, reference_comm=comm)
    workers = comm.size - 1
    if workers < 1 or workers % group_size:
        raise InputError(
            f"parallel mode needs 1 ML rank plus reference groups of {group_size} rank(s): "
            f"{comm.size} rank(s) cannot be split that way (use N = 1 + k*{group_size})",
            where="ACTIVE_LEARNING.parallel",
        )
    if comm.rank == ROOT:
        comm.split(0, 0)  # Split is collective: the ML rank takes part and keeps no group
        return Layout(parallel=True, is_ml_rank=True, group_index=-1, num_groups=workers // group_size,
                      reference_comm=None)
    group = (comm.rank - 1) // group_size
    sub = comm.split(1 + group, comm.rank)
    return Layout(parallel=True, is_ml_rank=False, group_index=group, num_groups=workers // group_size,
                  reference_comm=sub)


def configure_threads() -> None:
    """One thread per rank unless OMP_NUM_THREADS says otherwise (torch ignores the variable once loaded)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
