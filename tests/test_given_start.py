"""Starting from what the user has: initial_train_dataset / initial_valid_dataset (one file or one per member)
become the initial datasets, models in model/ the initial ensemble; FHI_AL-al runs without FHI_AL-initial-ds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read, write

from fhi_al.ensemble import ensemble_seeds
from fhi_al.settings import load_run_settings
from foundation_helpers import xtb_labelled
from workflow import make_run_folder, run_cli

STATISTICS_TERMS = ("atomic_energies_fn", "scale_shift")
TAGS = [f"water_{seed}" for seed in ensemble_seeds(1, 2)]  # GENERAL of tests/workflow.py: name_exp water, seed 1


@pytest.fixture(scope="module")
def water_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("given")
    files = {"train": folder / "train.xyz", "valid": folder / "valid.xyz", "ammonia": folder / "nh3.xyz",
             "no_forces": folder / "no_forces.xyz"}
    write(files["train"], xtb_labelled("H2O", 8, seed=11), format="extxyz")
    write(files["valid"], xtb_labelled("H2O", 3, seed=12), format="extxyz")
    write(files["ammonia"], xtb_labelled("NH3", 2, seed=13), format="extxyz")
    frames = xtb_labelled("H2O", 2, seed=14)
    for atoms in frames:
        del atoms.arrays["REF_forces"]
    write(files["no_forces"], frames, format="extxyz")
    return files


def given_run(folder: Path, train, valid=None, **active) -> Path:
    section = {"initial_train_dataset": train, "max_MD_steps": 20, **active}
    if valid is not None:
        section["initial_valid_dataset"] = valid
    return make_run_folder(folder, al={"ACTIVE_LEARNING": section})


def test_al_runs_from_a_shared_file_without_initial_ds(tmp_path, water_files):
    folder = given_run(tmp_path / "run", str(water_files["train"]), str(water_files["valid"]))
    result = run_cli("FHI_AL-al", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    train = read(folder / "data" / "initial" / "train_shared.xyz", index=":")
    valid = read(folder / "data" / "initial" / "valid_shared.xyz", index=":")
    original = read(water_files["train"], index=":")
    assert len(train) == 8 and len(valid) == 3
    for stored, source in zip(train, original):
        np.testing.assert_allclose(stored.arrays["REF_forces"], source.arrays["REF_forces"], atol=1e-6)
        assert stored.info["procedure"] == "given"
    marker = json.loads((folder / "restart" / "done" / "initial_dataset.done").read_text())
    assert marker["source"]["train/shared"] == str(water_files["train"])
    assert marker["members"] == "trained on the given data"
    assert (folder / "restart" / "done" / "active_learning.done").exists()
    for tag in TAGS:
        assert (folder / "model" / f"{tag}.model").is_file()


def test_per_member_files_and_existing_models(tmp_path, water_files):
    first = given_run(tmp_path / "first", {TAGS[0]: str(water_files["train"]), TAGS[1]: str(water_files["valid"])})
    result = run_cli("FHI_AL-initial-ds", first)
    assert result.returncode == 0, result.stderr[-3000:]
    for tag, count in zip(TAGS, (8, 3)):  # no validation file: frames split off by valid_ratio (0.25)
        n_train = len(read(first / "data" / "initial" / f"train_{tag}.xyz", index=":"))
        n_valid = len(read(first / "data" / "initial" / f"valid_{tag}.xyz", index=":"))
        assert n_train + n_valid == count and n_valid >= 1
    # a second run with these models in model/: they are the ensemble (no training), weights unchanged
    second = given_run(tmp_path / "second", str(water_files["train"]), str(water_files["valid"]))
    shutil.copytree(first / "model", second / "model")
    result = run_cli("FHI_AL-initial-ds", second)
    assert result.returncode == 0, result.stderr[-3000:]
    marker = json.loads((second / "restart" / "done" / "initial_dataset.done").read_text())
    assert marker["members"] == "model/ (given)"
    from fhi_al.procedures.common import make_trainer

    trainer = make_trainer(load_run_settings(second), second)
    for tag in TAGS:
        member = trainer.load_member(tag)  # the checkpoint that active learning starts from
        saved = torch.load(second / "model" / f"{tag}.model", weights_only=False).state_dict()
        weights = {name: value for name, value in member.model.state_dict().items()
                   if not name.startswith(STATISTICS_TERMS)}  # E0s, scale, shift: from the run's data
        assert len(weights) > 10
        for name, value in weights.items():
            torch.testing.assert_close(value, saved[name].to(value.dtype))


def test_models_of_another_architecture_exit_2_before_writing(tmp_path, water_files):
    first = given_run(tmp_path / "first", str(water_files["train"]), str(water_files["valid"]))
    assert run_cli("FHI_AL-initial-ds", first).returncode == 0
    other = make_run_folder(tmp_path / "other", mace={"ARCHITECTURE": {"num_channels": 16, "MLP_irreps": "16x0e"}},
                            al={"ACTIVE_LEARNING": {"initial_train_dataset": str(water_files["train"])}})
    shutil.copytree(first / "model", other / "model")
    result = run_cli("FHI_AL-initial-ds", other)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "architecture differs" in result.stderr and ".model" in result.stderr and "Traceback" not in result.stderr
    assert not (other / "data").exists()


@pytest.mark.parametrize("case, message", [
    ("no_forces", "REF_forces"), ("ammonia", "element(s) N"), ("missing", "no such file"),
    ("unknown_tag", "unknown"), ("valid_only", "needs initial_train_dataset")])
def test_bad_given_datasets_exit_2(tmp_path, water_files, case, message):
    train = {"no_forces": str(water_files["no_forces"]), "ammonia": str(water_files["ammonia"]),
             "missing": str(tmp_path / "nope.xyz"), "unknown_tag": {"water_99": str(water_files["train"])}}.get(case)
    section = {"initial_valid_dataset": str(water_files["valid"])} if case == "valid_only" else \
        {"initial_train_dataset": train}
    folder = make_run_folder(tmp_path / "run", al={"ACTIVE_LEARNING": section})
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "ACTIVE_LEARNING.initial_" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder / "data").exists() and not (folder / "logs").exists()
