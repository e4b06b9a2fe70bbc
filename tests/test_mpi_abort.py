"""A rank that dies while serving the reference must end the whole job, not leave rank 0 waiting forever
(a hung job burns its whole allocation). Each case launches its own `mpiexec -n 2`, because MPI_Abort ends
every process of the job, a pytest-mpi run included."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time

import pytest

from workflow import BIN

WAIT_LIMIT_S = 120  # a hang would run into the subprocess timeout far above the few seconds an abort takes

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from ase.build import molecule
    from ase.calculators.calculator import Calculator
    from fhi_al import parallel
    from fhi_al.labeling import run_procedure
    from fhi_al.logs import configure_logging

    configure_logging(Path(sys.argv[2]))  # as the CLI does: every rank, one log file

    PARALLEL = sys.argv[1] != "serial"
    KILLED = sys.argv[1] == "killed"

    class DiesOnServingRank(Calculator):
        # collective (as FHI-aims) in serial mode, so rank 1 joins every calculation
        implemented_properties = ["energy", "forces"]
        collective = not PARALLEL

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            if parallel.world().rank == 0:
                time.sleep(600)  # rank 0 alone would wait here for a partner that is gone
                return
            if KILLED:
                os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
            raise KeyboardInterrupt("interrupted while serving")  # not an Exception: escapes the label handling

    def procedure(services):
        services.labeler.submit("lost", molecule("H2O"))
        if services.labeler.asynchronous:
            services.labeler.wait()
        print("rank 0 finished normally", flush=True)

    run_procedure(procedure, make_reference=lambda comm, group: DiesOnServingRank(), parallel=PARALLEL)
""")


def run_job(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    """Runs the job; its log is tmp_path / "job.log"."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PMI_", "HYDRA", "OMPI_", "PMIX"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    result = subprocess.run([str(BIN / "mpiexec"), "-n", "2", str(BIN / "python"), str(script), mode,
                             str(tmp_path / "job.log")],
                            capture_output=True, text=True, env=env, timeout=WAIT_LIMIT_S)
    return result, time.monotonic() - started


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_a_failing_serving_rank_aborts_the_job(tmp_path, mode):
    result, elapsed_s = run_job(tmp_path, mode)
    assert result.returncode != 0, result.stdout + result.stderr
    # the log file, not the launcher's forwarding of stderr, which MPI_Abort may cut short
    log_text = (tmp_path / "job.log").read_text()
    assert "CRITICAL fhi_al.labeling.service: rank 1 failed while serving the reference; aborting the job" in log_text
    assert "KeyboardInterrupt: interrupted while serving" in log_text  # the cause, with its traceback
    assert "rank 0 finished normally" not in result.stdout
    assert elapsed_s < WAIT_LIMIT_S / 2, f"abort took {elapsed_s:.0f} s"


def test_a_killed_serving_rank_ends_the_job(tmp_path):
    """SIGKILL leaves no chance to call MPI_Abort; the launcher must end the other ranks."""
    result, elapsed_s = run_job(tmp_path, "killed")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "rank 0 finished normally" not in result.stdout
    assert elapsed_s < WAIT_LIMIT_S / 2, f"the job took {elapsed_s:.0f} s to end"
