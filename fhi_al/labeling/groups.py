"""Parallel mode: rank 0 queues structures (`GroupLabeler`) that reference groups of ranks label
(`serve_reference_group`), and drives ab initio MD through a group (`RemoteReference`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Sequence

from ase.calculators.calculator import Calculator, all_changes

from ..errors import ReferenceError
from ..parallel import ROOT, Comm, Layout, wait_until
from .label import label_structure
from .messages import TAG_RESULT, TAG_TASK, atoms_from_message, atoms_message, stop_ranks

log = logging.getLogger(__name__)



class GroupLabeler:
    """Parallel mode, ML rank: a queue of structures served by the reference groups, collected as they
    finish (non-blocking). Keeps a timeline of every group's busy intervals and the ML rank's waiting time."""

    asynchronous = True  # submit() returns at once; results come later through collect()/wait()

    def __init__(self, comm: Comm, leaders: Sequence[int], *, timeout_s: float | None = None):
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
        self.queue.append((label_id, atoms_message(atoms), record))
        self._dispatch()

    def _dispatch(self) -> None:
        for leader in self.leaders:
            if leader not in self.busy and self.queue:
                task = self.queue.popleft()
                self.comm.send(task, dest=leader, tag=TAG_TASK)
                self.busy[leader] = task[0]

    def _poll(self) -> None:
        for leader in list(self.busy):
            if self.comm.has_message(source=leader, tag=TAG_RESULT):
                result, group, start, end = self.comm.receive(source=leader, tag=TAG_RESULT)
                del self.busy[leader]
                self.timeline.append({"group": group, "label_id": result.label_id, "start": start, "end": end})
                self.done.append(result)
        self._dispatch()

    def _polled_result(self, label_id: str | None = None) -> Any:
        """Poll once; -> a finished result (the one of `label_id` if given), else None."""
        self._poll()
        return next((r for r in self.done if label_id is None or r.label_id == label_id), None)

    def _all_received(self) -> bool:
        """Poll once; -> True when no group is computing."""
        self._poll()
        return not self.busy

    def collect(self) -> list:
        """Labels finished since the last call (possibly none)."""
        self._poll()
        done, self.done = self.done, []
        return done

    def wait(self) -> list:
        """Block (politely) until at least one label is finished, or nothing is in flight."""
        started = time.perf_counter()
        wait_until(lambda: self._polled_result() is not None or not self.busy)
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
        mine = wait_until(lambda: self._polled_result(label_id))
        self.done.remove(mine)
        self.waited_s += time.perf_counter() - started
        return mine

    def close(self) -> None:
        """Receive the results still on their way (no send stays unmatched), then stop the groups; once."""
        if self.closed:
            return
        wait_until(self._all_received)
        stop_ranks(self.comm, self.leaders)
        self.closed = True

    def busy_fractions(self) -> dict[str, float]:
        wall_s = max(time.time() - self.started_at, 1e-9)
        fractions = {f"group_{g}": sum(t["end"] - t["start"] for t in self.timeline if t["group"] == g) / wall_s
                     for g in range(len(self.leaders))}
        fractions["ml_rank"] = max(0.0, 1.0 - self.waited_s / wall_s)
        return fractions


class RemoteReference(Calculator):
    """Parallel mode, ML rank: the reference as an ASE Calculator whose calculations run on a reference
    group (used to drive ab initio MD and for one-off calls). With `stress` (the groups' reference gives
    stress) it also offers the stress of periodic cells."""

    def __init__(self, labeler: GroupLabeler, name: str, *, stress: bool = False):
        super().__init__()
        self.implemented_properties = ["energy", "free_energy", "forces"] + (["stress"] if stress else [])
        self.labeler = labeler
        self.reference_name = name  # the name of the reference the groups run
        self.calls = 0

    def _get_name(self) -> str:
        return self.reference_name

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        result = self.labeler.compute_now(f"remote-{self.calls}", self.atoms)
        if not result.ok:
            raise ReferenceError(result.error, calculator=self.name)
        self.results = {"energy": result.energy_eV, "free_energy": result.energy_eV,
                        "forces": result.forces_eV_per_A}
        if result.stress_eV_per_A3 is not None:
            self.results["stress"] = result.stress_eV_per_A3


def serve_reference_group(calc: Any, *, layout: Layout, comm: Comm, timeout_s: float | None,
                          ledger: Any) -> None:
    """Parallel mode, reference ranks: compute what the ML rank sends until it says stop. The group's
    leader receives and answers; the other ranks of the group join each calculation. `ledger` has been told
    whether this rank writes (the group's leader only)."""
    group = layout.reference_comm
    leader = group.rank == ROOT
    while True:
        if leader:
            task = comm.receive(source=ROOT, tag=TAG_TASK)
            for rank in range(1, group.size):
                group.send(task, dest=rank, tag=TAG_TASK)
        else:
            task = group.receive(source=ROOT, tag=TAG_TASK)
        if task is None:
            return
        label_id, message, record = task
        start = time.time()
        result = label_structure(calc, label_id, atoms_from_message(message), timeout_s=timeout_s,
                                 ledger=ledger if record else None)
        if leader:
            comm.send((result, layout.group_index, start, time.time()), dest=ROOT, tag=TAG_RESULT)
