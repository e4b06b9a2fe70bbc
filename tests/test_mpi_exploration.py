"""Exploration under mpiexec: the uncertainty bias, metadynamics and replica exchange in parallel mode (rank 0 runs
the biased MD while the other ranks label) and with two ML ranks (members train on their own ranks while the
biased trajectories run on rank 0). Run with `mpiexec -n 2|3 python -m pytest --with-mpi`."""

from __future__ import annotations

import json

import pytest
import yaml

from asi_build import shared_tmp  # noqa: F401
from fhi_al import cli
from workflow import make_run_folder, on_rank_0, run_everywhere, stored_frames, world

pytestmark = pytest.mark.mpi(min_size=2)

EXPLORE = {"n_samples": 3, "max_initial_epochs": 4, "intermediate_epochs": 2, "max_MD_steps": 60,
           "max_epochs_worker": 2, "label_spacing_steps": 0, "num_trajectories": 3, "replica_exchange_steps": 10,
           "initial_sampling": "xtb-md"}
MD = {0: {"temperature": 400, "friction": 0.01, "seed": 3}, 1: {"temperature": 800, "friction": 0.01},
      2: {"temperature": 500, "friction": 0.01, "bias": "uncertainty",
          "metadynamics": {"cvs": [{"distance": [0, 1]}], "pace": 5}}}


def explore_folder(folder, **active_learning):
    make_run_folder(folder, al={"ACTIVE_LEARNING": {**EXPLORE, **active_learning}})
    path = folder / "active_learning_settings.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["MD"] = MD
    path.write_text(yaml.safe_dump(settings))


def check_exploration(folder) -> None:
    ids = [atoms.info["label_id"] for atoms in stored_frames(folder)]
    assert len(ids) == len(set(ids)) and any(i.startswith("al-") for i in ids)
    hills = (folder / "restart" / "al" / "hills_2.jsonl").read_text().splitlines()
    assert len(hills) >= 3
    report = json.loads((folder / "results" / "replica_exchange.json").read_text())
    assert report["pairs"]["0-1"]["attempts"] >= 1
    assert json.loads((folder / "results" / "calibration.json").read_text())["systems"]


def test_exploration_in_parallel_mode(shared_tmp):
    folder = shared_tmp / "explore_parallel"
    on_rank_0(lambda: explore_folder(folder, parallel=True))
    assert run_everywhere(cli.main_full, folder) == 0
    on_rank_0(lambda: check_exploration(folder))


def test_exploration_with_two_ml_ranks(shared_tmp):
    if world().Get_size() != 2:
        pytest.skip("two ML ranks and no other rank")
    folder = shared_tmp / "explore_ml_ranks"
    on_rank_0(lambda: explore_folder(folder, ml_ranks=2))
    assert run_everywhere(cli.main_full, folder) == 0
    on_rank_0(lambda: check_exploration(folder))
