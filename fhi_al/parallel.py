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

    def post(self, obj: Any, *, dest: int, tag: int) -> Any:
        """Start sending `obj` and return at once -> the request (`.Test()` true once sent). For two ranks that
        may send to each other at the same moment: a blocking send of a large message on both sides waits for a
        receive that neither makes."""
        return self.mpi.isend(obj, dest=dest, tag=tag)

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


ML_RANKS_KEY = "ACTIVE_LEARNING.ml_ranks"


@dataclass(frozen=True)
class Layout:
    """Who does what in a job of N ranks.

    Ranks 0 .. ml_ranks-1 are the ML ranks: rank 0 runs the procedure (MD, uncertainty, labels) and trains
    its own ensemble members; ranks 1 .. ml_ranks-1 (training ranks) train the other members.
    serial mode (`parallel: false`): rank 0 and the ranks from ml_ranks on share the reference (`reference_comm`).
    parallel mode: the ranks from ml_ranks on form reference groups of `group_size` ranks.
    """

    parallel: bool
    is_ml_rank: bool  # rank 0: runs the procedure
    group_index: int  # -1 on the ML ranks in parallel mode and on training ranks
    num_groups: int
    reference_comm: Any  # the communicator this rank's reference calculator uses (None where it uses none)
    ml_ranks: int = 1
    group_size: int = 1

    @property
    def training_ranks(self) -> list[int]:
        return list(range(1, self.ml_ranks))

    @property
    def leaders(self) -> list[int]:
        """Parallel mode: the first rank of each reference group."""
        return [self.ml_ranks + group * self.group_size for group in range(self.num_groups)]


def check_ranks(*, size: int, parallel: bool, group_size: int = 1, ml_ranks: int = 1,
                ensemble_size: int | None = None) -> None:
    """InputError unless `size` ranks can be split into `ml_ranks` ML ranks and (parallel mode) reference
    groups of `group_size` ranks. One process runs parallel mode as serial mode."""
    if ensemble_size is not None and ml_ranks > ensemble_size + 1:
        raise InputError(f"got {ml_ranks} ML ranks for {ensemble_size} ensemble members: at most ensemble_size + 1 "
                         f"= {ensemble_size + 1} (rank 0 runs the MD, every other ML rank trains at least one "
                         f"member)", where=ML_RANKS_KEY)
    if ml_ranks > size:
        raise InputError(f"got {ml_ranks} ML ranks but the job has {size} rank(s): start it with mpirun -n N, "
                         f"N >= {ml_ranks}{' + the reference groups' if parallel else ''}", where=ML_RANKS_KEY)
    workers = size - ml_ranks
    if parallel and size > 1 and (workers < 1 or workers % group_size):  # one process runs everything itself
        raise InputError(
            f"parallel mode needs {ml_ranks} ML rank(s) plus reference groups of {group_size} rank(s): "
            f"{size} rank(s) cannot be split that way (use N = {ml_ranks} + k*{group_size})",
            where="ACTIVE_LEARNING.parallel",
        )


def make_layout(*, parallel: bool, group_size: int = 1, ml_ranks: int = 1, comm: Comm | None = None) -> Layout:
    """This rank's role (collective: every rank of `comm` calls it with the same arguments)."""
    comm = comm or world()
    check_ranks(size=comm.size, parallel=parallel, group_size=group_size, ml_ranks=ml_ranks)
    training = 0 < comm.rank < ml_ranks
    if not parallel:
        if ml_ranks == 1:
            return Layout(parallel=False, is_ml_rank=comm.rank == ROOT, group_index=0, num_groups=1,
                          reference_comm=comm)
        shared = comm.split(1 if training else 0, comm.rank)  # rank 0 and the ranks from ml_ranks on
        return Layout(parallel=False, is_ml_rank=comm.rank == ROOT, group_index=-1 if training else 0,
                      num_groups=1, reference_comm=None if training else shared, ml_ranks=ml_ranks)
    num_groups = (comm.size - ml_ranks) // group_size
    if comm.rank < ml_ranks:
        comm.split(0, comm.rank)  # Split is collective: the ML ranks take part and keep no group
        return Layout(parallel=True, is_ml_rank=comm.rank == ROOT, group_index=-1, num_groups=num_groups,
                      reference_comm=None, ml_ranks=ml_ranks, group_size=group_size)
    group = (comm.rank - ml_ranks) // group_size
    sub = comm.split(1 + group, comm.rank)
    return Layout(parallel=True, is_ml_rank=False, group_index=group, num_groups=num_groups, reference_comm=sub,
                  ml_ranks=ml_ranks, group_size=group_size)


def local_rank() -> int:
    """This process's index among the job's processes on its node (from the launcher; 0 without one)."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def configure_threads() -> None:
    """One thread per rank unless OMP_NUM_THREADS says otherwise (torch ignores the variable once loaded)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
