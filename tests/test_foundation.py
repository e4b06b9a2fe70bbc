"""Fine-tuning a MACE foundation model (naive with mace's --freeze, and multihead with replay data): members start
from the foundation's weights with seed-dependent readouts, restart/export/MACECalculator work as for models
trained from scratch, LAMMPS files are written by mace's converter, and bad foundation inputs exit 2.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write
from mace.calculators import MACECalculator

from conformance import predict
from fhi_al import cli
from fhi_al.architectures.mace import foundation as foundation_module
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.architectures.mace.lammps import lammps_path
from fhi_al.ensemble import EnsembleCalculator
from fhi_al.errors import EXIT_BAD_INPUT, InputError
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer
from foundation_helpers import foundation_file, water_data, xtb_labelled  # noqa: F401  (fixtures)

SETTINGS_HYPERS = MaceHypers(num_channels=32, max_L=1, r_max=5.0)  # what the settings ask; the foundation wins
FREEZE_INTERACTIONS = 5  # mace: >= 1 embedding, >= 5 interactions, >= 6 products, >= 7 readouts


def finetune_trainer(run_dir, foundation_file, **overrides) -> Trainer:
    settings = dict(name_exp="water", hypers=SETTINGS_HYPERS, batch_size=3, scheduler="none", ema_decay=0.9,
                    training_plots=False, foundation_model=str(foundation_file))
    return Trainer(TrainingConfig(**{**settings, **overrides}), run_dir)


def load_foundation_file(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_members_start_from_the_foundation_and_differ_by_seed(run_dir, foundation_file, water_data, caplog):
    with caplog.at_level(logging.INFO, logger="fhi_al"):
        trainer = finetune_trainer(run_dir, foundation_file)
    assert "num_channels 32 -> 8" in caplog.text and "r_max 5.0 -> 4.0" in caplog.text
    found = load_foundation_file(foundation_file)
    first, second = [trainer.create_member(f"water_{seed}", seed, *water_data) for seed in (1, 2)]
    again = trainer.create_member("water_1_again", 1, *water_data)
    assert trainer.architecture.cutoff_A == 4.0 and first.model.atomic_numbers.tolist() == [1, 8]
    rows = [found.atomic_numbers.tolist().index(z) for z in (1, 8)]
    for member in (first, second):
        for index in range(2):
            torch.testing.assert_close(member.model.interactions[index].linear_up.weight,
                                       found.interactions[index].linear_up.weight)
        torch.testing.assert_close(member.model.products[0].symmetric_contractions.contractions[0].weights_max,
                                   found.products[0].symmetric_contractions.contractions[0].weights_max[rows])
        torch.testing.assert_close(member.model.scale_shift.scale.reshape(-1), found.scale_shift.scale.reshape(-1))
        assert member.model.interactions[0].avg_num_neighbors == found.interactions[0].avg_num_neighbors
    # readouts are re-initialised from each member's seed: different members, same seed same readout
    assert not torch.equal(first.model.readouts[0].linear.weight, second.model.readouts[0].linear.weight)
    assert not torch.equal(first.model.readouts[0].linear.weight, found.readouts[0].linear.weight)
    torch.testing.assert_close(first.model.readouts[0].linear.weight, again.model.readouts[0].linear.weight)


def test_fine_tuned_members_learn_and_keep_the_foundation_statistics(run_dir, foundation_file, water_data):
    trainer = finetune_trainer(run_dir, foundation_file, lr=0.005)
    member = trainer.create_member("water_1", 1, *water_data)
    scale = member.model.scale_shift.scale.clone()
    before = trainer.evaluate(member, water_data[1])["forces_mae"]
    trainer.train(member, 4)
    after = trainer.evaluate(member, water_data[1])["forces_mae"]
    assert after < 0.8 * before
    member.train_atoms = member.train_atoms + xtb_labelled("H2O", 2, seed=9)  # data grow: statistics refresh
    trainer.train(member, 1)
    torch.testing.assert_close(member.model.scale_shift.scale, scale)  # the foundation's scale is kept


def test_freeze_follows_mace(run_dir, foundation_file, water_data):
    trainer = finetune_trainer(run_dir, foundation_file, freeze=FREEZE_INTERACTIONS, ema=False)
    member = trainer.create_member("water_1", 1, *water_data)
    frozen = {name: p.detach().clone() for name, p in member.model.named_parameters()
              if name.startswith(("node_embedding", "interactions"))}
    free = {name: p.detach().clone() for name, p in member.model.named_parameters()
            if name.startswith(("products", "readouts"))}
    trainer.train(member, 2)
    params = dict(member.model.named_parameters())
    assert frozen and all(not params[name].requires_grad and torch.equal(params[name], value)
                          for name, value in frozen.items())
    assert all(params[name].requires_grad for name in free)
    assert any(not torch.equal(params[name], value) for name, value in free.items())
    with pytest.raises(InputError, match="ARCHITECTURE.freeze"):
        finetune_trainer(run_dir / "all", foundation_file, freeze=7).create_member("water_1", 1, *water_data)


def test_members_with_frozen_products_are_evaluated_stacked(run_dir, foundation_file, water_data):
    """Products frozen (freeze 6): every member has the foundation's contraction weights; the stacked ensemble
    evaluation must still equal each member's own prediction."""
    trainer = finetune_trainer(run_dir, foundation_file, freeze=6)
    members = [trainer.create_member(f"water_{seed}", seed, *water_data) for seed in (1, 2)]
    for member in members:
        trainer.train(member, 1, report=False)
    calculator = EnsembleCalculator(members)
    assert calculator.ensemble._stacked_predictor(calculator.ensemble.models) is not None
    atoms = water_data[1][0].copy()
    atoms.calc = calculator
    atoms.get_forces()
    for index, member in enumerate(members):
        own = predict(trainer, member.inference_model(), water_data[1][:1])
        np.testing.assert_allclose(calculator.results["forces_comm"][index], own["forces"], atol=1e-8)


def test_restart_export_calculators_and_lammps(run_dir, foundation_file, water_data):
    trainer = finetune_trainer(run_dir, foundation_file, export_lammps=True)
    members = [trainer.create_member(f"water_{seed}", seed, *water_data) for seed in (1, 2)]
    for member in members:
        trainer.train(member, 2)
        trainer.save_checkpoint(member)
    # restart: a new trainer resumes each member from its checkpoint and predicts exactly the same
    resumed_trainer = finetune_trainer(run_dir, foundation_file, export_lammps=True)
    resumed = resumed_trainer.load_member("water_1", train_atoms=water_data[0], valid_atoms=water_data[1])
    assert resumed.epoch == 2
    ours = predict(trainer, members[0].inference_model(), water_data[1])
    again = predict(resumed_trainer, resumed.inference_model(), water_data[1])
    np.testing.assert_allclose(again["forces"], ours["forces"], atol=1e-12)
    resumed_trainer.train(resumed, 1)  # warm start continues where it stopped
    assert resumed.epoch == 3
    # export: mace's MACECalculator and our ensemble read the files; LAMMPS files by mace's converter
    paths = [trainer.export(member) for member in members]
    ensemble = EnsembleCalculator.from_files(paths)
    atoms = water_data[1][0].copy()
    atoms.calc = ensemble
    atoms.get_potential_energy()
    for index, (member, path) in enumerate(zip(members, paths)):
        calculator = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        own = water_data[1][0].copy()
        own.calc = calculator
        np.testing.assert_allclose(own.get_forces(), ensemble.results["forces_comm"][index], atol=1e-10)
        mine = predict(trainer, member.inference_model(), water_data[1][:1])
        assert own.get_potential_energy() == pytest.approx(float(mine["energy"][0]), rel=1e-12)
        lammps = torch.jit.load(str(lammps_path(path)))
        assert lammps_path(path).name == f"{member.tag}.model-lammps.pt"
        assert float(lammps.r_max) == 4.0 and lammps.atomic_numbers.tolist() == [1, 8]


def test_multihead_replays_the_foundation_data_on_its_own_head(run_dir, foundation_file, water_data):
    replay = xtb_labelled("H2O2", 3, seed=11) + xtb_labelled("CH3OH", 2, seed=12)  # methanol: not the run's elements
    write(run_dir / "replay.xyz", replay, format="extxyz")
    trainer = finetune_trainer(run_dir, foundation_file, finetuning="multihead", replay_dataset="replay.xyz",
                               export_lammps=True)
    member = trainer.create_member("water_1", 1, *water_data)
    assert member.model.heads == ["Default", "pt_head"]
    replayed = trainer.architecture.replay_atoms()
    assert [len(atoms) for atoms in replayed] == [4, 4, 4]
    assert int(trainer.architecture.featurize(replayed[0]).head) == 1
    assert int(trainer.architecture.featurize(water_data[0][0]).head) == 0
    e0 = member.model.atomic_energies_fn.atomic_energies
    found = load_foundation_file(foundation_file)
    assert float(e0[1, 0]) == pytest.approx(float(found.atomic_energies_fn.atomic_energies.view(-1)[0]))
    before = trainer.evaluate(member, replayed)["forces_mae"]
    trainer.train(member, 3)
    assert trainer.evaluate(member, replayed)["forces_mae"] < before  # the replay head is trained too
    path = trainer.export(member)
    calculator = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    assert calculator.head == "Default"
    atoms = water_data[1][0].copy()
    atoms.calc = calculator
    ours = predict(trainer, member.inference_model(), water_data[1][:1])
    assert atoms.get_potential_energy() == pytest.approx(float(ours["energy"][0]), rel=1e-12)
    assert torch.jit.load(str(lammps_path(path))).head.tolist() == [0]  # the Default head, not mace's last
    as_foundation = foundation_module.load_foundation(str(path))  # a multihead model as the next foundation
    assert as_foundation.heads == ["Default"]  # mace's remove_pt_head keeps the fine-tuned head


# ------------------------------------------------------------------------------------------------ bad input
MACE_SETTINGS = "GENERAL:\n  name_exp: ft\nARCHITECTURE:\n  model: MACE\n  foundation_model: {path}\n{extra}"
AL_SETTINGS = "ACTIVE_LEARNING:\n  ensemble_size: 2\nREFERENCE:\n  calculator: xtb\n"


def run_bad(folder, capsys, *, foundation, extra="", geometry=None, mace_text=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mace_settings.yaml").write_text(mace_text or MACE_SETTINGS.format(path=foundation, extra=extra))
    (folder / "active_learning_settings.yaml").write_text(AL_SETTINGS)
    write(folder / "geometry.in", geometry if geometry is not None else molecule("H2O"), format="aims")
    before = sorted(p.name for p in folder.iterdir())
    code = cli.main_atomic_energies(["--run-dir", str(folder)])
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    return code, capsys.readouterr().err


def test_missing_foundation_file_exits_2(tmp_path, capsys):
    code, err = run_bad(tmp_path / "run", capsys, foundation="no_such.model")
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.foundation_model" in err and "no such file" in err


def test_foundation_that_is_not_a_mace_model_exits_2(tmp_path, capsys):
    (tmp_path / "weights.model").write_text("not a model\n")
    torch.save({"state": torch.zeros(2)}, tmp_path / "state_dict.model")
    for name, expected in (("weights.model", "torch cannot read it"), ("state_dict.model", "holds a dict")):
        code, err = run_bad(tmp_path / name.split(".")[0], capsys, foundation=tmp_path / name)
        assert code == EXIT_BAD_INPUT and "ARCHITECTURE.foundation_model" in err and "not a MACE model" in err
        assert expected in err


def test_foundation_without_the_geometrys_elements_exits_2(tmp_path, foundation_file, capsys):
    code, err = run_bad(tmp_path / "run", capsys, foundation=foundation_file, geometry=molecule("SH2"))
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.foundation_model" in err and "does not know S" in err


def test_multihead_without_replay_data_exits_2(tmp_path, foundation_file, capsys):
    code, err = run_bad(tmp_path / "none", capsys, foundation=foundation_file, extra="  finetuning: multihead\n")
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.replay_dataset" in err
    unlabelled = tmp_path / "unlabelled.xyz"
    write(unlabelled, molecule("H2O"), format="extxyz")
    code, err = run_bad(tmp_path / "unlabelled", capsys, foundation=foundation_file,
                        extra=f"  finetuning: multihead\n  replay_dataset: {unlabelled}\n")
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.replay_dataset" in err and "REF_energy" in err


def test_mace_mp_name_offline_exits_2(tmp_path, capsys, monkeypatch):
    from mace.calculators import foundations_models

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(foundations_models, "download_mace_mp_checkpoint", offline)
    monkeypatch.setattr(foundation_module, "_LOADED", {})
    code, err = run_bad(tmp_path / "run", capsys, foundation="medium")
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.foundation_model" in err and "'medium'" in err
    assert "local .model file" in err


def test_foundation_and_lammps_need_mace(tmp_path, capsys):
    aenet = "ARCHITECTURE:\n  model: aenet\n"
    code, err = run_bad(tmp_path / "foundation", capsys, foundation=None,
                        mace_text=aenet + "  foundation_model: small\n")
    assert code == EXIT_BAD_INPUT and "ARCHITECTURE.foundation_model" in err and "MACE" in err
    code, err = run_bad(tmp_path / "lammps", capsys, foundation=None,
                        mace_text=aenet + "MISC:\n  export_lammps: true\n")
    assert code == EXIT_BAD_INPUT and "MISC.export_lammps" in err


# ------------------------------------------------------------------------------------------------- settings
def test_settings_resolve_the_foundation_next_to_the_run(tmp_path, foundation_file):
    from fhi_al.settings import load_run_settings

    run = tmp_path / "run"
    run.mkdir()
    (run / "found.model").write_bytes(foundation_file.read_bytes())
    (run / "replay.xyz").write_text("")
    (run / "mace_settings.yaml").write_text("ARCHITECTURE:\n  model: MACE\n  foundation_model: found.model\n"
                                            "  finetuning: multihead\n  replay_dataset: replay.xyz\n  freeze: 5\n")
    (run / "active_learning_settings.yaml").write_text(AL_SETTINGS)
    arch = load_run_settings(run).mace.architecture
    assert (arch.foundation_model, arch.replay_dataset) == (str(run / "found.model"), str(run / "replay.xyz"))
    assert (arch.finetuning, arch.freeze) == ("multihead", 5)
    config = TrainingConfig.from_settings(load_run_settings(run))
    assert (config.foundation_model, config.finetuning, config.freeze) == (str(run / "found.model"), "multihead", 5)
    (run / "mace_settings.yaml").write_text("ARCHITECTURE:\n  foundation_model: SMALL\nMISC:\n  export_lammps: true\n")
    settings = load_run_settings(run)
    assert settings.mace.architecture.foundation_model == "small" and settings.mace.misc.export_lammps
    (run / "mace_settings.yaml").write_text("ARCHITECTURE:\n  freeze: 5\n")
    assert any("ARCHITECTURE.freeze only matters with ARCHITECTURE.foundation_model" in note
               for note in load_run_settings(run).notes)
    (run / "mace_settings.yaml").write_text("ARCHITECTURE:\n  foundation_model: small\n  freeze: 7\n")
    with pytest.raises(InputError, match="ARCHITECTURE.freeze"):
        load_run_settings(run)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_full_run_fine_tunes_the_foundation_and_hands_over_the_models(tmp_path, foundation_file):
    from workflow import make_run_folder, run_cli

    from fhi_al.ensemble import EnsembleCalculator

    folder = make_run_folder(tmp_path / "run", mace={"ARCHITECTURE": {"foundation_model": str(foundation_file),
                                                                      "num_channels": 16},
                                                     "MISC": {"export_lammps": True}},
                             al={"ACTIVE_LEARNING": {"max_MD_steps": 60}})
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr
    models = sorted((folder / "model").glob("*.model"))
    assert len(models) == 2
    for path in models:
        assert torch.jit.load(str(lammps_path(path))).atomic_numbers.tolist() == [1, 8]
        assert int(load_foundation_file(path).products[0].linear.irreps_out[0].mul) == 8  # the foundation's width
    log_text = (folder / "logs" / "initial_dataset.log").read_text()
    assert "num_channels 16 -> 8" in log_text and "fine-tuning the foundation model" in log_text
    atoms = molecule("H2O")
    atoms.calc = EnsembleCalculator.from_run_dir(folder)
    assert np.isfinite(atoms.get_forces()).all() and atoms.calc.results["forces_uncertainty_max"] > 0.0
    assert run_cli("FHI_AL", folder).returncode == 0  # a finished run resumes to nothing


def test_mace_mp_name_goes_through_maces_own_loader(monkeypatch, foundation_file, water_data, run_dir):
    from mace.calculators import foundations_models

    asked = []

    def cached_checkpoint(model=None):  # what mace returns once the download is in its cache
        asked.append(model)
        return str(foundation_file)

    monkeypatch.setattr(foundations_models, "download_mace_mp_checkpoint", cached_checkpoint)
    monkeypatch.setattr(foundation_module, "_LOADED", {})
    trainer = finetune_trainer(run_dir, "SMALL")
    member = trainer.create_member("water_1", 1, *water_data)
    assert asked == ["small"] and member.model.atomic_numbers.tolist() == [1, 8]
    assert trainer.architecture.hypers.num_channels == 8
