"""Everything that knows about MPI ranks lives here.

`world()` is the job's communicator: mpi4py's COMM_WORLD when the job runs under mpiexec, a one-process
stand-in otherwise, with the same methods, so the rest of the code runs unchanged on one process.
Procedures ask this module who does what (`Layout`) instead of testing rank numbers themselves.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from ase.calculators.calculator import Calculator, all_changes

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = 0


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


class MPIComm:
    """Thin wrapper around an mpi4py communicator with the methods fhi_al uses."""

    def __init__(self, comm):
        self.mpi = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def bcast(self, obj: T, root: int = ROOT) -> T:
        return self.mpi.bcast(obj, root=root)

    def barrier(self) -> None:
        self.mpi.Barrier()

    def allreduce_max(self, value: float) -> float:
        from mpi4py import MPI

        return self.mpi.allreduce(value, op=MPI.MAX)

    def allgather(self, obj: Any) -> list:
        return self.mpi.allgather(obj)

    def split(self, color: int, key: int = 0) -> "MPIComm":
        return MPIComm(self.mpi.Split(color, key))

    def abort(self, code: int = 1) -> None:
        self.mpi.Abort(code)

    def fortran_handle(self) -> int:
        return self.mpi.py2f()


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
    comm = world()
    if comm.mpi is not None:
        return comm.mpi
    from mpi4py import MPI

    return MPI.COMM_WORLD


def is_root(comm: Comm | None = None) -> bool:
    return (comm or world()).rank == ROOT


def root_only(func: Callable[..., T]) -> Callable[..., T]:
    """Run `func` on the root rank only and hand its result to every rank; an fhi_al error raised on the
    root is raised on every rank, so that all of them stop the same way."""
    from .errors import FhiAlError

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
        from .errors import InputError

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


# ------------------------------------------------------------------------------------------------ services
# How a procedure reaches the reference, whatever the number of ranks: `Services.reference` is an ASE
# Calculator (for ab initio MD and one-off calls), `Services.labeler` a queue of labels (submit/collect/wait).

TAG_TASK = 101  # ML rank (or group leader) -> reference rank: a structure to compute, or None to stop
TAG_RESULT = 102  # group leader -> ML rank: a LabelResult with the group's busy interval
POLL_INTERVAL_S = 0.005  # idle ranks poll instead of blocking: MPICH's blocking calls spin a core


@dataclass
class Services:
    reference: Any  # ASE Calculator
    labeler: Any  # fhi_al.labeling.SerialLabeler or GroupLabeler


def _atoms_message(atoms) -> dict:
    return {"numbers": atoms.get_atomic_numbers(), "positions": atoms.get_positions(), "cell": atoms.get_cell()[:],
            "pbc": atoms.get_pbc(), "info": {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}}


def _atoms_from_message(message: dict):
    from ase import Atoms

    atoms = Atoms(numbers=message["numbers"], positions=message["positions"], cell=message["cell"],
                  pbc=message["pbc"])
    atoms.info.update(message["info"])
    return atoms


def _receive_politely(comm: MPIComm, *, source: int, tag: int) -> Any:
    """Blocking receive that sleeps between probes, so a waiting rank leaves its core to the others."""
    while not comm.mpi.Iprobe(source=source, tag=tag):
        time.sleep(POLL_INTERVAL_S)
    return comm.mpi.recv(source=source, tag=tag)


def is_collective_reference(calc: Any) -> bool:
    """FHI-aims runs on all ranks of its communicator together; the embedded references on one rank."""
    from .references.base import reference_name

    return reference_name(calc) == "aims"


class SharedReference(Calculator):
    """Serial mode, root side: the reference as an ASE Calculator that makes the other ranks join each
    calculation (FHI-aims over the whole communicator)."""

    def __init__(self, calc: Any, comm: Comm):
        super().__init__()
        self.calc, self.comm = calc, comm
        self.implemented_properties = list(calc.implemented_properties)
        self.fhi_al_name = getattr(calc, "fhi_al_name", type(calc).__name__)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        for rank in range(1, self.comm.size):
            self.comm.mpi.send(_atoms_message(self.atoms), dest=rank, tag=TAG_TASK)
        self.calc.calculate(self.atoms, list(properties), list(system_changes))
        self.results = dict(self.calc.results)

    def reset(self) -> None:
        super().reset()
        self.calc.reset()


def _stop_ranks(comm: Comm, ranks: Sequence[int]) -> None:
    for rank in ranks:
        comm.mpi.send(None, dest=rank, tag=TAG_TASK)


def serve_shared_reference(calc: Any, comm: Comm) -> None:
    """Serial mode, other ranks: join the root's reference calculations until it says stop."""
    while True:
        message = _receive_politely(comm, source=ROOT, tag=TAG_TASK)
        if message is None:
            return
        try:
            calc.calculate(_atoms_from_message(message), ["energy", "forces"], list(all_changes))
        except Exception:  # noqa: BLE001 - the root sees the same failure and reports it
            log.debug("reference failed on rank %d", comm.rank, exc_info=True)


class GroupLabeler:
    """Parallel mode, ML rank: a queue of structures served by the reference groups, collected as they
    finish (non-blocking). Keeps a timeline of every group's busy intervals and the ML rank's waiting time."""

    asynchronous = True  # submit() returns at once; results come later through collect()/wait()

    def __init__(self, comm: Comm, leaders: Sequence[int], *, timeout_s: float | None = None):
        from collections import deque

        self.comm, self.leaders = comm, list(leaders)
        self.timeout_s = timeout_s
        self.queue: deque = deque()
        self.busy: dict[int, str] = {}
        self.done: list = []
        self.timeline: list[dict[str, Any]] = []
        self.started_at = time.time()
        self.waited_s = 0.0
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self.queue) + len(self.busy)

    def submit(self, label_id: str, atoms: Any, *, record: bool = True) -> None:
        self.queue.append((label_id, _atoms_message(atoms), record))
        self._dispatch()

    def _dispatch(self) -> None:
        for leader in self.leaders:
            if leader not in self.busy and self.queue:
                task = self.queue.popleft()
                self.comm.mpi.send(task, dest=leader, tag=TAG_TASK)
                self.busy[leader] = task[0]

    def _poll(self) -> None:
        for leader in list(self.busy):
            if self.comm.mpi.Iprobe(source=leader, tag=TAG_RESULT):
                result, group, start, end = self.comm.mpi.recv(source=leader, tag=TAG_RESULT)
                del self.busy[leader]
                self.timeline.append({"group": group, "label_id": result.label_id, "start": start, "end": end})
                self.done.append(result)
        self._dispatch()

    def collect(self) -> list:
        """Labels finished since the last call (possibly none)."""
        self._poll()
        done, self.done = self.done, []
        return done

    def wait(self) -> list:
        """Block (politely) until at least one label is finished, or nothing is in flight."""
        started = time.perf_counter()
        while not self.done and self.busy:
            self._poll()
            if not self.done:
                time.sleep(POLL_INTERVAL_S)
        self.waited_s += time.perf_counter() - started
        return self.collect()

    def cancel_queued(self) -> list[str]:
        """Forget structures not yet sent to a group (their labels were never computed); -> their ids."""
        cancelled = [task[0] for task in self.queue]
        self.queue.clear()
        return cancelled

    def compute_now(self, label_id: str, atoms: Any) -> Any:
        """One calculation whose result is needed before going on (ab initio MD step); other results stay
        queued for `collect`."""
        self.submit(label_id, atoms, record=False)
        started = time.perf_counter()
        while True:
            self._poll()
            mine = [r for r in self.done if r.label_id == label_id]
            if mine:
                self.done.remove(mine[0])
                self.waited_s += time.perf_counter() - started
                return mine[0]
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        """Receive the results still on their way (no send stays unmatched), then stop the groups; once."""
        if self.closed:
            return
        while self.busy:
            self._poll()
            time.sleep(POLL_INTERVAL_S)
        _stop_ranks(self.comm, self.leaders)
        self.closed = True

    def busy_fractions(self) -> dict[str, float]:
        wall_s = max(time.time() - self.started_at, 1e-9)
        fractions = {f"group_{g}": sum(t["end"] - t["start"] for t in self.timeline if t["group"] == g) / wall_s
                     for g in range(len(self.leaders))}
        fractions["ml_rank"] = max(0.0, 1.0 - self.waited_s / wall_s)
        return fractions


class RemoteReference(Calculator):
    """Parallel mode, ML rank: the reference as an ASE Calculator whose calculations run on a reference
    group (used to drive ab initio MD and for one-off calls)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, labeler: GroupLabeler, name: str):
        super().__init__()
        self.labeler = labeler
        self.fhi_al_name = name
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from .errors import ReferenceError

        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        result = self.labeler.compute_now(f"remote-{self.calls}", self.atoms)
        if not result.ok:
            raise ReferenceError(result.error, calculator=self.fhi_al_name)
        self.results = {"energy": result.energy_eV, "free_energy": result.energy_eV,
                        "forces": result.forces_eV_per_A}


def serve_reference_group(calc: Any, *, layout: Layout, comm: Comm, timeout_s: float | None,
                          ledger: Any) -> None:
    """Parallel mode, reference ranks: compute what the ML rank sends until it says stop. The group's
    leader receives and answers; the other ranks of the group join each calculation."""
    from .labeling import label_structure

    group = layout.reference_comm
    leader = group.rank == ROOT
    while True:
        if leader:
            task = _receive_politely(comm, source=ROOT, tag=TAG_TASK)
            for rank in range(1, group.size):
                group.mpi.send(task, dest=rank, tag=TAG_TASK)
        else:
            task = _receive_politely(group, source=ROOT, tag=TAG_TASK)
        if task is None:
            return
        label_id, message, record = task
        start = time.time()
        result = label_structure(calc, label_id, _atoms_from_message(message), timeout_s=timeout_s,
                                 ledger=ledger if (record and leader) else None)
        if leader:
            comm.mpi.send((result, layout.group_index, start, time.time()), dest=ROOT, tag=TAG_RESULT)


def run_procedure(procedure: Callable[[Services], Any], *, make_reference: Callable[[Any], Any], parallel: bool,
                  group_size: int = 1, timeout_s: float | None = None, ledger: Any = None) -> Any:
    """Run `procedure(services)` on the rank(s) that do the ML, and the reference service on the others.
    `make_reference(comm, group_index)` builds this rank's reference calculator.

    One process: everything here. Serial mode: rank 0 runs the procedure; with FHI-aims the other ranks
    join every calculation, with an embedded reference they idle until the end. Parallel mode: rank 0
    runs the procedure and queues labels; the other ranks form reference groups of `group_size` ranks.
    A failure on a serving rank aborts the whole job rather than leaving rank 0 waiting.
    """
    comm = world()
    if comm.size == 1 or not parallel:
        return _run_serial_mode(procedure, comm, make_reference, timeout_s, ledger)
    layout = make_layout(parallel=True, group_size=group_size, comm=comm)
    if not layout.is_ml_rank:
        calc = make_reference(layout.reference_comm, layout.group_index)
        return _serve_or_abort(comm, lambda: serve_reference_group(calc, layout=layout, comm=comm,
                                                                   timeout_s=timeout_s, ledger=ledger))
    leaders = [1 + group * group_size for group in range(layout.num_groups)]
    labeler = GroupLabeler(comm, leaders, timeout_s=timeout_s)
    log.info("Parallel mode: 1 ML rank and %d reference group(s) of %d rank(s).", layout.num_groups, group_size)
    try:
        return procedure(Services(reference=RemoteReference(labeler, _reference_label(make_reference)),
                                  labeler=labeler))
    finally:
        labeler.close()


def _reference_label(make_reference: Callable[[Any], Any]) -> str:
    return getattr(make_reference, "reference_name", "reference")


def _run_serial_mode(procedure, comm: Comm, make_reference, timeout_s, ledger) -> Any:
    from .labeling import SerialLabeler

    calc = make_reference(comm, 0)
    if comm.rank != ROOT:
        return _serve_or_abort(comm, lambda: serve_shared_reference(calc, comm))
    reference = SharedReference(calc, comm) if comm.size > 1 and is_collective_reference(calc) else calc
    try:
        return procedure(Services(reference=reference,
                                  labeler=SerialLabeler(reference, timeout_s=timeout_s, ledger=ledger)))
    finally:
        if comm.size > 1:
            _stop_ranks(comm, range(1, comm.size))


def _serve_or_abort(comm: Comm, serve: Callable[[], None]) -> None:
    try:
        serve()
    except BaseException:
        # written (and flushed) to the run's log before MPI_Abort, which may cut the launcher's output short
        log.critical("rank %d failed while serving the reference; aborting the job", comm.rank, exc_info=True)
        comm.abort(1)
