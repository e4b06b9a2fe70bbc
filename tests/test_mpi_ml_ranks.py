"""ACTIVE_LEARNING.ml_ranks = 2 under mpiexec: members train concurrently on their own ranks, in serial mode
(`-n 2`: rank 0 runs MD, the reference and one member; rank 1 trains the other) and in parallel mode (`-n 3`: two
ML ranks and one xTB group). Run with `mpiexec -n 2|3 python -m pytest --with-mpi`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from asi_build import shared_tmp  # noqa: F401
from fhi_al import cli
from fhi_al.procedures.common import make_trainer
from fhi_al.settings.loader import load_run_settings
from workflow import make_run_folder, on_rank_0, run_everywhere, stored_frames, world

pytestmark = pytest.mark.mpi(min_size=2)

TWO_ML_RANKS = {"ACTIVE_LEARNING": {"n_samples": 3, "max_initial_epochs": 4, "intermediate_epochs": 2,
                                    "max_MD_steps": 40, "max_epochs_worker": 2, "ml_ranks": 2, "converge_al": True,
                                    "converge_best": False, "max_final_epochs": 4, "patience": 2}}


def check_run(folder, *, log_line: str) -> None:
    """Labels stored once; rank 1 trained its member through AL and the final convergence; the model rank 0
    exported for it holds the weights rank 1 saved last."""
    ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(ids) == len(set(ids)) and any(i.startswith("al-") for i in ids)
    log_text = (folder / "logs" / "AL.log").read_text()
    assert log_line in log_text
    state = json.loads((folder / "restart" / "al" / "state.json").read_text())["data"]
    (remote,) = state["remote_done"]
    assert state["remote_done"][remote] > 0 and f"rank 1 trains {remote}" in log_text
    assert "converged after" in log_text or "not converged" in log_text
    trainer = make_trainer(load_run_settings(folder), folder)
    saved = trainer.load_member(remote).averaged_model().state_dict()  # rank 1's last checkpoint, EMA weights
    exported = torch.load(folder / "model" / f"{remote}.model", weights_only=False).state_dict()
    assert set(exported) == set(saved)
    for name, value in exported.items():
        np.testing.assert_allclose(value.detach().numpy(), saved[name].detach().numpy(), rtol=1e-12, err_msg=name)


def test_two_ml_ranks_in_serial_mode(shared_tmp):
    if world().Get_size() != 2:
        pytest.skip("two ML ranks and no other rank")
    folder = shared_tmp / "ml_ranks_serial"
    on_rank_0(lambda: make_run_folder(folder, al=TWO_ML_RANKS))
    assert run_everywhere(cli.main_full, folder) == 0
    on_rank_0(lambda: check_run(folder, log_line="2 ML ranks: rank 0 runs the MD and trains"))


@pytest.mark.mpi(min_size=3)
def test_two_ml_ranks_in_parallel_mode(shared_tmp):
    if world().Get_size() != 3:
        pytest.skip("two ML ranks and one reference group")
    folder = shared_tmp / "ml_ranks_parallel"
    on_rank_0(lambda: make_run_folder(folder, al={"ACTIVE_LEARNING": {**TWO_ML_RANKS["ACTIVE_LEARNING"],
                                                                     "parallel": True}}))
    assert run_everywhere(cli.main_full, folder) == 0
    on_rank_0(lambda: check_run(folder, log_line="Parallel mode: 2 ML ranks and 1 reference group(s)"))


def test_large_messages_crossing_between_two_ranks_both_arrive():
    """Rank 0 posting a label while a training rank posts weights: each keeps receiving while its own message
    is under way (Outbox), so two messages too large for MPI's eager buffers do not wait on each other."""
    from fhi_al.parallel import MPIComm

    comm = MPIComm(world())
    arrived = comm.rank > 1 or exchange_two_large_messages(comm)
    assert all(world().allgather(arrived)), "a message did not arrive on one of the ranks"


def exchange_two_large_messages(comm) -> bool:
    from fhi_al.labeling.messages import TAG_TRAINED
    from fhi_al.parallel import wait_until
    from fhi_al.procedures.member_ranks import Outbox

    other = 1 - comm.rank
    outbox, received = Outbox(comm), []
    outbox.post(np.full(1_000_000, float(comm.rank)), dest=other, tag=TAG_TRAINED)  # 8 MB
    deadline = time.monotonic() + 120

    def both_done() -> bool:
        if comm.has_message(source=other, tag=TAG_TRAINED):
            received.append(comm.receive(source=other, tag=TAG_TRAINED))
        return (outbox.flush() and bool(received)) or time.monotonic() > deadline

    wait_until(both_done)
    return bool(received) and received[0].shape == (1_000_000,) and received[0][0] == other and outbox.flush()
