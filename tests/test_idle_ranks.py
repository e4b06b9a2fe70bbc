"""Ranks that wait do not burn a core: MPICH's blocking calls spin at 100% CPU for as long as they wait (measured
here: a blocking recv used 1.46 s of CPU in a 1.50 s wait), fhi_al's waits sleep with back-off
(`fhi_al.parallel.wait_until`). Each test keeps ranks idle for a few seconds and reads their CPU time, and checks
that a message still arrives promptly. Run with `mpiexec -n 2|3 python -m pytest --with-mpi`."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase.build import bulk

from fhi_al.labeling import GroupLabeler, serve_reference_group
from fhi_al.parallel import ROOT, make_layout, world
from fhi_al.references import compute_label, make_reference

pytestmark = pytest.mark.mpi(min_size=2)

IDLE_S = 3.0  # how long the idle ranks wait
MAX_CPU_FRACTION = 0.2  # of the wait, in CPU time
MAX_LATENCY_S = 0.5  # from the send to the receipt (the back-off caps the sleep at 50 ms; the machine is shared)


class Clock:
    """Wall and CPU time of this process since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def assert_idle(wall_s: float, cpu_s: float, *, what: str) -> None:
    assert wall_s >= 0.8 * IDLE_S, f"{what}: returned after {wall_s:.2f} s, before the message was sent"
    assert cpu_s < MAX_CPU_FRACTION * wall_s, f"{what}: {cpu_s:.2f} s of CPU in a {wall_s:.2f} s wait"


def assert_idle_everywhere(comm, measured: dict | None) -> None:
    """Every rank checks every rank's measurement {what: (wall_s, cpu_s, latency_s)} (pytest-mpi shows rank
    0's report only)."""
    for what, (wall_s, cpu_s, latency_s) in sorted(kv for m in comm.allgather(measured or {}) for kv in m.items()):
        assert_idle(wall_s, cpu_s, what=what)
        assert latency_s < MAX_LATENCY_S, f"{what}: the message arrived {latency_s:.2f} s after it was sent"


def test_a_rank_waiting_for_a_message_leaves_its_core():
    comm = world()
    comm.barrier()
    measured = None
    if comm.rank == ROOT:
        time.sleep(IDLE_S)
        for rank in range(1, comm.size):
            comm.send(time.time(), dest=rank, tag=7)
    else:
        clock = Clock()
        sent_at = comm.receive(source=ROOT, tag=7)
        measured = {f"rank {comm.rank} in receive": (*clock.read(), time.time() - sent_at)}
    assert_idle_everywhere(comm, measured)


def test_collectives_wait_without_spinning():
    """bcast and barrier: the ranks that arrive early (reference ranks while rank 0 trains) sleep."""
    comm = world()
    comm.barrier()
    clock = Clock()
    if comm.rank == ROOT:
        time.sleep(IDLE_S)
    sent_at = comm.bcast(time.time() if comm.rank == ROOT else None)
    bcast = (*clock.read(), time.time() - sent_at)
    clock = Clock()
    if comm.rank == ROOT:
        time.sleep(IDLE_S)
        sent_at = time.time()
    comm.barrier()
    barrier = (*clock.read(), time.time() - comm.bcast(sent_at if comm.rank == ROOT else None))
    assert_idle_everywhere(comm, None if comm.rank == ROOT else {f"rank {comm.rank} in bcast": bcast,
                                                                 f"rank {comm.rank} in barrier": barrier})


def test_rank_0_and_reference_groups_wait_without_spinning():
    """Parallel mode's queue: rank 0 waits for results, the groups wait for work and for a simulated reference
    that sleeps; neither uses the CPU, and every result is the reference's and arrives promptly."""
    comm = world()
    layout = make_layout(parallel=True, comm=comm)
    structures = [bulk("Cu", "fcc", a=3.6 + 0.05 * g, cubic=True) for g in range(layout.num_groups)]
    if not layout.is_ml_rank:
        calc = make_reference(name="emt", simulated_cost_s=IDLE_S)
        clock = Clock()
        serve_reference_group(calc, layout=layout, comm=comm, timeout_s=None, ledger=None)
        assert_idle_everywhere(comm, {f"group {layout.group_index} serving": (*clock.read(), 0.0)})
        return
    time.sleep(1.0)  # the groups wait for their first task
    labeler = GroupLabeler(comm, leaders=range(1, comm.size))
    for index, atoms in enumerate(structures):
        labeler.submit(f"s{index}", atoms)
    clock, results, received_at = Clock(), {}, {}
    while labeler.in_flight:
        for result in labeler.wait():
            results[result.label_id], received_at[result.label_id] = result, time.time()
    waited = clock.read()
    labeler.close()
    latency_s = max(received_at[entry["label_id"]] - entry["end"] for entry in labeler.timeline)
    assert_idle_everywhere(comm, {"rank 0 waiting for labels": (*waited, latency_s)})
    for index, atoms in enumerate(structures):
        energy, forces = compute_label(make_reference(name="emt"), atoms)
        assert results[f"s{index}"].energy_eV == pytest.approx(energy, abs=1e-12)
        np.testing.assert_allclose(results[f"s{index}"].forces_eV_per_A, forces, atol=1e-12)
