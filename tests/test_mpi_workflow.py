"""FHI_AL under mpiexec: serial mode (all ranks share the reference, rank 0 does the ML) and parallel mode
(rank 0 does the ML while reference groups label). Run with `mpiexec -n 2|3 python -m pytest --with-mpi`."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.io import read

from asi_build import lj_energy_forces, shared_tmp, standin_lib, write_species_dir  # noqa: F401
from fhi_al import cli
from workflow import BIN, make_run_folder, on_rank_0, run_everywhere, stored_frames, world

pytestmark = pytest.mark.mpi(min_size=2)

# 30 MD steps: every check may label (label_spacing_steps 0), so that active learning labels within the run
SHORT_AL = {"ACTIVE_LEARNING": {"n_samples": 3, "max_initial_epochs": 4, "intermediate_epochs": 2,
                                "max_MD_steps": 30, "max_epochs_worker": 2, "label_spacing_steps": 0}}


def one_process_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA", "OMPI_", "PMIX"))}
    return {**env, "FHI_AL_NO_MPI": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def test_serial_mode_gives_the_one_process_result(shared_tmp):
    folder = shared_tmp / "mpi_serial"
    alone = shared_tmp / "one_process"
    on_rank_0(lambda: (make_run_folder(folder, al=SHORT_AL), make_run_folder(alone, al=SHORT_AL)))
    assert run_everywhere(cli.main_initial_dataset, folder) == 0

    def same_as_one_process():
        result = subprocess.run([str(BIN / "FHI_AL-initial-ds"), "--run-dir", str(alone)], env=one_process_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        for path in sorted((alone / "data").rglob("*.xyz")):
            assert path.read_bytes() == (folder / path.relative_to(alone)).read_bytes(), path.name

    on_rank_0(same_as_one_process)


def test_parallel_mode_with_xtb_groups(shared_tmp):
    folder = shared_tmp / "mpi_parallel"
    on_rank_0(lambda: make_run_folder(folder, al={"ACTIVE_LEARNING": {**SHORT_AL["ACTIVE_LEARNING"],
                                                                         "parallel": True}}))
    assert run_everywhere(cli.main_full, folder) == 0

    def labels_and_busy_fractions():
        ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
        assert len(ids) == len(set(ids)) and any(i.startswith("al-") for i in ids)
        log_text = (folder / "logs" / "AL.log").read_text()
        groups = world().Get_size() - 1
        assert f"Parallel mode: 1 ML rank and {groups} reference group(s)" in log_text
        assert "Busy fraction of wall time" in log_text
        usage = yaml.safe_load((folder / "results" / "initial_reference_usage.json").read_text())
        assert {entry["group"] for entry in usage["timeline"]} <= set(range(groups))
        assert 0 < usage["busy_fractions"]["group_0"] <= 1

    on_rank_0(labels_and_busy_fractions)


@pytest.mark.mpi(min_size=3)
def test_parallel_mode_with_the_asi_standin_on_a_two_rank_group(shared_tmp, standin_lib):
    if world().Get_size() != 3:
        pytest.skip("needs exactly 1 ML rank + one reference group of 2 ranks")
    folder = shared_tmp / "mpi_aims"

    def argon_run_folder():
        cluster = Atoms("Ar4", positions=[[0, 0, 0], [3.7, 0, 0], [1.85, 3.2, 0], [1.85, 1.07, 3.0]])
        make_run_folder(folder, atoms=cluster, mace={"GENERAL": {"name_exp": "argon"}}, al={
            "ACTIVE_LEARNING": {**SHORT_AL["ACTIVE_LEARNING"], "parallel": True, "reference_group_size": 2,
                                "aims_lib_path": str(standin_lib),
                                "species_dir": str(write_species_dir(folder / "species", ["Ar"]))},
            "MD": {"temperature": 30}, "REFERENCE": {"calculator": "aims"}})
        (folder / "control.in").write_text("xc pbe\nsc_iter_limit 100\n")

    on_rank_0(argon_run_folder)
    assert run_everywhere(cli.main_initial_dataset, folder) == 0

    def lennard_jones_labels():
        frames = stored_frames(folder)
        assert len(frames) == 12  # 2 members x n_samples 3 x 2 rounds
        for frame in frames[:3]:
            energy, forces = lj_energy_forces(frame.get_positions())
            assert frame.info["REF_energy"] == pytest.approx(energy, rel=1e-8)
            np.testing.assert_allclose(frame.arrays["REF_forces"], forces, atol=1e-8)
        assert (folder / "reference_group_1").exists() is False  # one group: index 0 works in the run folder

    on_rank_0(lennard_jones_labels)


def test_a_failure_on_rank_0_fails_every_rank_instead_of_hanging():
    def check_on_rank_0_only():
        assert world().rank != 0, "rank 0's check failed"

    with pytest.raises((AssertionError, pytest.fail.Exception), match="rank 0's check failed"):
        on_rank_0(check_on_rank_0_only)
    world().Barrier()  # every rank got here: none is left waiting for the others
