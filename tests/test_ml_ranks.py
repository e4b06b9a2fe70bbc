"""Members trained on their own ML ranks (ACTIVE_LEARNING.ml_ranks): who trains what, the rank checks, weights
handed from a training rank to rank 0, and a run killed mid-way under `mpiexec -n 2` that resumes without losing
or repeating a label. The MPI runs themselves: tests/test_mpi_ml_ranks.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from ase.build import molecule

from conformance import emt_labelled, predict
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.errors import InputError
from fhi_al.parallel import check_ranks
from fhi_al.procedures.member_ranks import member_owners, rank_device
from fhi_al.procedures.state import ActiveLearningState
from fhi_al.training.checkpoint import adopt_weights, weights_state
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer
from workflow import BIN, env, make_run_folder, stored_frames

TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])


def test_training_ranks_take_members_first_and_rank_0_the_fewest():
    tags = ["m0", "m1", "m2", "m3"]
    assert member_owners(tags[:2], 1) == {"m0": 0, "m1": 0}
    assert member_owners(tags[:2], 2) == {"m0": 1, "m1": 0}
    assert member_owners(tags, 2) == {"m0": 1, "m1": 0, "m2": 1, "m3": 0}
    assert member_owners(tags, 5) == {"m0": 1, "m1": 2, "m2": 3, "m3": 4}  # rank 0 only runs MD
    owners = member_owners([f"m{i}" for i in range(7)], 3)
    counts = [list(owners.values()).count(rank) for rank in range(3)]
    assert counts == [2, 3, 2] and max(counts) - min(counts) <= 1


def test_each_ml_rank_takes_its_own_gpu():
    assert rank_device("cuda", ml_ranks=2, rank_on_node=3, gpus=2) == "cuda:1"
    assert rank_device("cuda", ml_ranks=4, rank_on_node=2, gpus=4) == "cuda:2"
    assert rank_device("cuda:0", ml_ranks=2, rank_on_node=1, gpus=2) == "cuda:0"  # an explicit GPU is kept
    assert rank_device("cuda", ml_ranks=1, rank_on_node=1, gpus=2) == "cuda"
    assert rank_device("cpu", ml_ranks=2, rank_on_node=1, gpus=0) == "cpu"


@pytest.mark.parametrize("kwargs, key, words", [
    (dict(size=1, parallel=False, ml_ranks=2), "ACTIVE_LEARNING.ml_ranks", "mpirun -n N"),
    (dict(size=4, parallel=False, ml_ranks=4, ensemble_size=2), "ACTIVE_LEARNING.ml_ranks", "ensemble_size + 1 = 3"),
    (dict(size=2, parallel=True, ml_ranks=2), "ACTIVE_LEARNING.parallel", "N = 2 + k*1"),
    (dict(size=5, parallel=True, ml_ranks=2, group_size=2), "ACTIVE_LEARNING.parallel", "N = 2 + k*2"),
])
def test_rank_counts_that_cannot_be_split(kwargs, key, words):
    with pytest.raises(InputError) as error:
        check_ranks(**kwargs)
    assert error.value.where == key and words in str(error.value)


def test_rank_counts_that_can_be_split():
    check_ranks(size=2, parallel=False, ml_ranks=2, ensemble_size=2)
    check_ranks(size=3, parallel=False, ml_ranks=3, ensemble_size=2)  # rank 0 runs MD only
    check_ranks(size=6, parallel=True, ml_ranks=2, group_size=2, ensemble_size=4)
    check_ranks(size=1, parallel=True, ml_ranks=1)  # one process: parallel mode runs as serial mode


def test_weights_from_a_training_rank_make_rank_0s_copy_predict_the_same(tmp_path):
    train, valid = emt_labelled(molecule("CH3CH2OH"), 6, seed=21), emt_labelled(molecule("CH3CH2OH"), 3, seed=22)
    config = TrainingConfig(name_exp="ranks", hypers=TINY, batch_size=3, valid_batch_size=2, scheduler="none",
                            ema_decay=0.9)
    trainer, copy_trainer = Trainer(config, tmp_path / "a"), Trainer(config, tmp_path / "b")
    member = trainer.create_member("ranks_1", 1, train[:3], valid)
    copy = copy_trainer.create_member("ranks_1", 1, train[:3], valid)
    member.train_atoms.extend(train[3:])  # the training rank's data grew: new statistics, new weights
    trainer.train(member, 3, report=False)
    before = predict(copy_trainer, copy.inference_model(), valid)["forces"]
    adopt_weights(copy, weights_state(member))
    after = predict(copy_trainer, copy.inference_model(), valid)["forces"]
    expected = predict(trainer, member.inference_model(), valid)["forces"]
    assert not np.allclose(before, expected)
    np.testing.assert_allclose(after, expected, rtol=1e-10, atol=1e-10)
    assert copy.epoch == member.epoch == 3 and copy.stats == member.stats
    assert "optimizer" not in weights_state(member)  # rank 0 never trains a remote member


def test_record_keeps_the_remote_epoch_counts_and_reads_older_records():
    state = ActiveLearningState(labels=3, remote_assigned={"w_1": 8}, remote_done={"w_1": 6})
    again = ActiveLearningState.from_record(json.loads(json.dumps(state.to_record())))
    assert again.remote_assigned == {"w_1": 8} and again.remote_done == {"w_1": 6}
    older = state.to_record()
    del older["remote_assigned"], older["remote_done"]
    assert ActiveLearningState.from_record(older).remote_done == {}


def _ledger_labels(folder) -> list[str]:
    path = folder / "logs" / "reference_ledger.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["label_id"] for r in records if r.get("purpose") == "label" and r.get("ok", True)]


def _al_state(folder) -> dict:
    try:
        return json.loads((folder / "restart" / "al" / "state.json").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return {}


@pytest.mark.slow
def test_two_ml_ranks_killed_mid_run_resume_without_losing_a_label(tmp_path):
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": {"ml_ranks": 2, "max_MD_steps": 80}})
    command = [str(BIN / "mpiexec"), "-n", "2", str(BIN / "FHI_AL"), "--run-dir", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                               start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        state = _al_state(folder)
        if state.get("labels", 0) >= 1 and sum(state.get("remote_done", {}).values()) > 0:
            os.killpg(process.pid, signal.SIGKILL)
            epoch_at_kill = {tag: _checkpoint_epoch(folder, tag) for tag in state["remote_done"]}
            break
        time.sleep(0.2)
    process.wait()
    killed = _al_state(folder)
    assert killed.get("labels", 0) >= 1, "the run ended before it could be killed mid-way"
    result = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(stored) == len(set(stored))  # nothing stored twice
    assert set(_ledger_labels(folder)) <= set(stored)  # every label paid for is stored
    final = _al_state(folder)
    assert final["labels"] > killed["labels"]
    (remote,) = final["remote_done"]  # the member trained on rank 1 went on from its checkpoint
    assert final["remote_done"][remote] > killed["remote_done"][remote]
    assert _checkpoint_epoch(folder, remote) > epoch_at_kill[remote]


def _checkpoint_epoch(folder, tag: str) -> int:
    return max(int(path.stem.rpartition("-")[2]) for path in (folder / "checkpoints").glob(f"{tag}_epoch-*.pt"))
