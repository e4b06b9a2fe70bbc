"""The training engine: loss formula, metrics, history records, schedulers, optimizer reset, convergence
with best weights, growing data with cached featurization, checkpoint files and settings plumbing.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import molecule
from mace.data import AtomicData
from mace.modules.utils import compute_avg_num_neighbors
from mace.data.utils import config_from_atoms_list
from mace.tools import AtomicNumberTable, torch_geometric
from mace.tools.torch_tools import default_dtype

from conformance import emt_labelled, predict
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.architectures.mace.model import KEYSPEC
from fhi_al.data.stats import compute_statistics
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer, member_tag

TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])


@pytest.fixture(scope="module")
def data():
    return emt_labelled(molecule("CH3CH2OH"), 6, seed=11), emt_labelled(molecule("CH3CH2OH"), 3, seed=12)


def make(run_dir, data, tag="eng_1", **overrides):
    settings = dict(name_exp="eng", hypers=TINY, batch_size=3, valid_batch_size=2, scheduler="none",
                    ema_decay=0.9, energy_weight=2.0, forces_weight=10.0)
    trainer = Trainer(TrainingConfig(**{**settings, **overrides}), run_dir)
    return trainer, trainer.create_member(tag, 1, list(data[0]), list(data[1]))


def test_evaluate_matches_mace_loss_formula_and_metrics(run_dir, data):
    trainer, member = make(run_dir, data)
    valid = data[1]
    pred = predict(trainer, member.inference_model(), valid)
    ref_e = np.array([a.info["REF_energy"] for a in valid])
    ref_f = np.concatenate([a.arrays["REF_forces"] for a in valid])
    natoms = np.array([len(a) for a in valid])
    de, df = (pred["energy"] - ref_e) / natoms, pred["forces"] - ref_f
    metrics = trainer.evaluate(member, valid)
    assert metrics["loss"] == pytest.approx(2.0 * np.mean(de**2) + 10.0 * np.mean(df**2), rel=1e-10)
    assert metrics["energy_mae_per_atom"] == pytest.approx(np.mean(np.abs(de)), rel=1e-10)
    assert metrics["energy_rmse_per_atom"] == pytest.approx(np.sqrt(np.mean(de**2)), rel=1e-10)
    assert metrics["forces_mae"] == pytest.approx(np.mean(np.abs(df)), rel=1e-10)
    assert metrics["forces_rmse"] == pytest.approx(np.sqrt(np.mean(df**2)), rel=1e-10)


def test_history_appended_every_valid_skip_epochs(run_dir, data):
    trainer, member = make(run_dir, data, valid_skip=2)
    assert trainer.train(member, 3) is not None
    trainer.train(member, 1)
    lines = trainer.history_path("eng_1").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert trainer.history_path("eng_1") == run_dir / "results" / "eng_1_history.jsonl"
    assert [r["epoch"] for r in records] == [2, 4]
    assert {"energy_mae_per_atom", "energy_rmse_per_atom", "forces_mae", "forces_rmse", "loss",
            "train_loss", "lr", "n_train"} <= set(records[0])
    assert records[-1]["loss"] == pytest.approx(trainer.evaluate(member, member.valid_atoms)["loss"])


def test_schedulers_step_only_when_asked(run_dir, data):
    trainer, member = make(run_dir, data, scheduler="ExponentialLR", lr_scheduler_gamma=0.5, lr=0.01)
    trainer.train(member, 2)
    assert member.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    trainer.train(member, 2, use_scheduler=True)
    assert member.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    trainer, member = make(run_dir, data, tag="eng_2", scheduler="ReduceLROnPlateau", lr_factor=0.5,
                           scheduler_patience=0, lr=0.01)
    member.scheduler.step(-1.0)  # a best loss no real validation can beat: every validation is a plateau
    trainer.train(member, 2, use_scheduler=True)
    assert member.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)


def test_reset_optimizer_keeps_groups_and_base_lr(run_dir, data):
    trainer, member = make(run_dir, data, scheduler="ExponentialLR", lr_scheduler_gamma=0.5, weight_decay=1e-3)
    trainer.train(member, 2, use_scheduler=True)
    groups_before = [(g["name"], g["weight_decay"], len(g["params"])) for g in member.optimizer.param_groups]
    assert member.optimizer.state
    trainer.reset_optimizer(member)
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in member.optimizer.param_groups] == groups_before
    assert all(g["lr"] == pytest.approx(0.01) for g in member.optimizer.param_groups)
    assert not member.optimizer.state
    assert member.scheduler.optimizer is member.optimizer


def test_converge_stops_on_patience_and_keeps_best_weights(run_dir, data):
    trainer, member = make(run_dir, data, lr=0.05)
    stop = trainer.converge(member, max_epochs=12, patience=2, margin=0.0)
    best = stop.metrics
    losses = [record["loss"] for record in member.history]
    assert best["loss"] == min(losses)
    assert trainer.evaluate(member, member.valid_atoms)["loss"] == pytest.approx(min(losses), rel=1e-12)
    stopped_early = len(losses) < 12
    if stopped_early:
        assert losses.index(min(losses)) == len(losses) - 3  # two validations without improvement
        assert stop.converged
    assert trainer.checkpoints.latest_path("eng_1").exists()


def test_growing_data_is_featurized_once_and_refreshes_statistics(run_dir, data):
    trainer, member = make(run_dir, data)
    calls = []
    featurize = trainer.architecture.featurize
    trainer.architecture.featurize = lambda atoms: calls.append(1) or featurize(atoms)
    trainer.train(member, 2)
    # the 6 training structures were featurized when the member was created; the 3 validation ones now,
    # once each over two epochs
    assert len(calls) == 3
    extra = emt_labelled(molecule("CH3CH2OH"), 2, seed=13)
    member.train_atoms.extend(extra)
    trainer.train(member, 2)
    assert len(calls) == 5
    assert member.stats.num_structures == 8


def test_statistics_match_mace(data):
    train = data[0]
    stats = compute_statistics(train, cutoff_A=3.0, atomic_energies=None)
    table = AtomicNumberTable([1, 6, 8])
    graphs = [AtomicData.from_config(c, z_table=table, cutoff=3.0)
              for c in config_from_atoms_list(train, key_specification=KEYSPEC)]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=4)
    with default_dtype("float64"):
        assert stats.num_neighbors_mean == pytest.approx(compute_avg_num_neighbors(loader), rel=1e-12)
    forces = np.concatenate([a.arrays["REF_forces"] for a in train])
    assert stats.forces_rms == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert stats.per_atom_energy_mean == pytest.approx(0.0, abs=1e-8)  # least squares leaves no mean residual


def test_checkpoint_files_pruned_or_kept_and_restart_latest(run_dir, data):
    trainer, member = make(run_dir, data)
    for _ in range(3):
        trainer.train(member, 1)
        trainer.save_checkpoint(member)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["eng_1_epoch-3.pt"]
    trainer, member = make(run_dir, data, tag="eng_2", keep_checkpoints=True)
    for _ in range(2):
        trainer.train(member, 1)
        trainer.save_checkpoint(member)
    assert len(list((run_dir / "checkpoints").glob("eng_2_*"))) == 2
    trainer, resumed = make(run_dir, data, tag="eng_1", restart_latest=True)
    assert resumed.epoch == 3
    trainer, fresh = make(run_dir, data, tag="eng_1", restart_latest=False)
    assert fresh.epoch == 0


def test_ema_weights_are_used_for_evaluation(run_dir, data):
    trainer, member = make(run_dir, data)
    trainer.train(member, 2)
    with_ema = trainer.evaluate(member, member.valid_atoms)["loss"]
    ema, member.ema = member.ema, None
    raw = trainer.evaluate(member, member.valid_atoms)["loss"]
    member.ema = ema
    assert with_ema != raw
    with member.ema.average_parameters():
        name, averaged = next(iter(member.model.named_parameters()))
        averaged = averaged.detach().clone()
    assert torch.equal(dict(member.inference_model().named_parameters())[name], averaged)


def test_config_from_settings_reads_sections():
    settings = SimpleNamespace(
        mace=SimpleNamespace(general=SimpleNamespace(name_exp="water", seed=7, default_dtype="float32",
                                                     loss_dir="losses"),
                             training=SimpleNamespace(lr=0.002, batch_size=4, ema=False, scheduler="ExponentialLR"),
                             misc=SimpleNamespace(keep_checkpoints=True, device="cpu"),
                             architecture=SimpleNamespace(model="ScaleShiftMACE", atomic_energies={1: -13.6},
                                                          hypers=TINY)),
        al=SimpleNamespace(active_learning=SimpleNamespace(valid_skip=3)))
    config = TrainingConfig.from_settings(settings)
    assert (config.name_exp, config.seed, config.dtype, config.lr, config.batch_size) == (
        "water", 7, torch.float32, 0.002, 4)
    assert (config.ema, config.keep_checkpoints, config.model, config.valid_skip) == (False, True, "ScaleShiftMACE", 3)
    assert config.results_dir == "losses" and config.hypers is TINY and config.forces_weight == 100.0
    assert member_tag(config.name_exp, config.seed) == "water_7"


def test_learning_curve_plot(run_dir, data):
    from fhi_al.training.plots import plot_histories, read_history

    trainer, member = make(run_dir, data)
    trainer.train(member, 2)
    assert len(read_history(trainer.history_path(member.tag))) == 2
    out = plot_histories([trainer.history_path(member.tag)], run_dir / "results" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_type_weights_scale_the_loss(run_dir, data):
    trainer, member = make(run_dir, data, config_type_weights={"Default": 1.0, "important": 3.0})
    valid = [atoms.copy() for atoms in data[1]]
    valid[0].info["config_type"] = "important"
    pred = predict(trainer, member.inference_model(), valid)
    weights = np.array([3.0, 1.0, 1.0])
    natoms = np.array([len(a) for a in valid])
    de = (pred["energy"] - np.array([a.info["REF_energy"] for a in valid])) / natoms
    df = pred["forces"] - np.concatenate([a.arrays["REF_forces"] for a in valid])
    per_atom_weight = np.repeat(weights, natoms)[:, None]
    expected = 2.0 * np.mean(weights * de**2) + 10.0 * np.mean(per_atom_weight * df**2)
    assert trainer.evaluate(member, valid)["loss"] == pytest.approx(expected, rel=1e-10)
