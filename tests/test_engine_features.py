"""Engine-level training features (issue 9): statistics as parameters, engine shifts/scales and ZBL, loss
options, force fraction, optimizers/schedulers, early stopping, checkpoints, filters, predictions, cache, plots.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list

from conformance import emt_labelled, predict
from fhi_al.architectures.aenet.hypers import AenetHypers
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.architectures.nequip.hypers import NequipHypers
from fhi_al.errors import SettingsError
from fhi_al.settings.loader import build_architecture
from fhi_al.training import optim, zbl
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer

TINY_MACE = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=1, correlation=2, radial_MLP=[8])
TINY_AENET = AenetHypers(rad_order=4, rad_cutoff=4.0, ang_order=2, ang_cutoff=3.0, min_cutoff=0.5, hidden_sizes=[8])
TINY_NEQUIP = NequipHypers(r_max=4.0, num_layers=1, l_max=1, num_features=4, num_basis=4, invariant_neurons=8,
                           invariant_layers=1)
E0 = {1: -13.6, 6: -1030.0, 8: -2040.0}


@pytest.fixture(scope="module")
def data():
    return emt_labelled(molecule("CH3CH2OH"), 10, seed=21), emt_labelled(molecule("CH3CH2OH"), 3, seed=22)


def make(run_dir, data, tag="feat_1", **overrides):
    settings = dict(name_exp="feat", model="aenet", hypers=TINY_AENET, batch_size=5, valid_batch_size=5,
                    scheduler="none", ema=False, training_plots=False, forces_weight=10.0)
    trainer = Trainer(TrainingConfig(**{**settings, **overrides}), run_dir)
    return trainer, trainer.create_member(tag, 1, list(data[0]), list(data[1]))


# --- 1. statistics as parameters -------------------------------------------------------------------------
def test_statistics_resolve_to_independent_values(run_dir, data):
    train = data[0]
    refs = {"avg_num_neighbors": "forces_rms"}
    trainer, member = make(run_dir, data, model="NequIP", hypers=TINY_NEQUIP, hypers_statistics=refs)
    forces = np.concatenate([a.arrays["REF_forces"] for a in train])
    assert float(member.model.avg_num_neighbors) == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    trainer, member = make(run_dir, data, tag="feat_2", model="NequIP", hypers=TINY_NEQUIP,
                           hypers_statistics={"avg_num_neighbors": "num_neighbors_mean"})
    counts = np.concatenate([np.bincount(neighbor_list("i", a, 4.0), minlength=len(a)) for a in train])
    assert float(member.model.avg_num_neighbors) == pytest.approx(counts[counts > 0].mean(), rel=1e-12)
    counts_matrix = np.array([[np.sum(a.numbers == z) for z in (1, 6, 8)] for a in train], float)
    energies = np.array([a.info["REF_energy"] for a in train])
    lstsq = np.linalg.lstsq(counts_matrix, energies, rcond=None)[0]
    per_type_rms = {z: np.sqrt(np.mean(forces[np.concatenate([a.numbers for a in train]) == z] ** 2)) for z in (1, 6, 8)}
    stats = member.stats
    np.testing.assert_allclose([stats.per_type_energy_shifts[z] for z in (1, 6, 8)], lstsq, rtol=1e-10)
    np.testing.assert_allclose([stats.per_type_forces_rms[z] for z in (1, 6, 8)], list(per_type_rms.values()))


def test_statistic_references_are_validated_at_settings_load():
    arch = build_architecture({"model": "NequIP", "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}"})
    assert arch.hypers_statistics == {"avg_num_neighbors": "num_neighbors_mean"}
    with pytest.raises(SettingsError, match="num_neighbours_mean.*num_neighbors_mean"):
        build_architecture({"model": "NequIP", "avg_num_neighbors": "${training_data_stats:num_neighbours_mean}"})
    with pytest.raises(SettingsError, match="forces_rmss"):
        build_architecture({"model": "aenet", "energy_scale": "${training_data_stats:forces_rmss}"})
    arch = build_architecture({"model": "aenet", "energy_shift": {"H": -1.0, "C": -2.0}, "zbl": True})
    assert arch.energy_shift == {1: -1.0, 6: -2.0} and arch.zbl


# --- 2. per-type shifts and scales -----------------------------------------------------------------------
@pytest.mark.parametrize("model_name, hypers", [("aenet", TINY_AENET), ("MACE", TINY_MACE)])
def test_engine_shift_and_per_element_scale(run_dir, data, model_name, hypers):
    scale = {"H": 0.5, "C": 2.0, "O": 3.0}
    trainer, member = make(run_dir, data, model=model_name, hypers=hypers, energy_shift=E0,
                           energy_scale={1: 0.5, 6: 2.0, 8: 3.0})
    model = member.inference_model()
    atoms = data[1][0]
    out = predict(trainer, model, [atoms])
    inner = trainer.architecture.inner
    batch = inner.collate([inner.featurize(atoms)])
    atomic = inner.atomic_energies(model.base, batch.inputs, inner.positions(batch.inputs)).detach().numpy()
    expected = sum(scale_z * e + E0[z] for z, e, scale_z in
                   zip(atoms.numbers, atomic, [{1: 0.5, 6: 2.0, 8: 3.0}[z] for z in atoms.numbers]))
    assert out["energy"][0] == pytest.approx(expected, rel=1e-12)
    if model_name == "aenet":
        assert float(model.base.atomic_energies_eV.abs().max()) == 0.0  # no E0 counted twice
    else:
        assert float(model.base.atomic_energies_fn.atomic_energies.abs().max()) == 0.0
    from conformance import fd_check  # forces of the scaled per-atom energies are -dE/dR

    fd_check(trainer, model, atoms)
    assert scale  # per-element mapping by symbol is checked in the settings test


def test_trainable_shift_moves_and_fixed_one_does_not(run_dir, data):
    trainer, member = make(run_dir, data, energy_shift=E0, energy_shift_trainable=True, lr=0.05)
    before = member.model.head.shift_eV.detach().clone()
    trainer.train(member, 2)
    assert not torch.equal(member.model.head.shift_eV.detach(), before)
    trainer, member = make(run_dir, data, tag="feat_2", energy_shift=E0, lr=0.05)
    trainer.train(member, 2)
    assert member.model.head.shift_eV.tolist() == [E0[1], E0[6], E0[8]]


def test_cohesive_target_needs_atomic_energies(run_dir, data):
    with pytest.raises(SettingsError, match="atomic_energies"):
        make(run_dir, data, energy_target="cohesive")
    trainer, member = make(run_dir, data, energy_target="cohesive", atomic_energies=E0)
    assert member.model.head.shift_eV.tolist() == [E0[1], E0[6], E0[8]]


# --- 3. ZBL ----------------------------------------------------------------------------------------------
def test_zbl_close_pair_repulsive_and_smooth_at_cutoff():
    pair = Atoms("CH", positions=[[0, 0, 0], [0, 0, 0.3]])

    def energy_force(distance):
        pair.positions[1, 2] = distance
        pairs = zbl.pair_list(pair, cutoff_A=1.0, dtype=torch.float64)
        e, f = zbl.zbl_energy_forces(pairs, torch.tensor(pair.positions), cutoff_A=1.0, width_A=0.5)
        return float(e[0]), f.numpy()

    e_close, f_close = energy_force(0.3)
    assert e_close > 10.0 and f_close[1, 2] > 0 and f_close[0, 2] < 0  # pushed apart
    assert energy_force(0.3 - 1e-3)[0] > e_close  # monotonic repulsion
    for distance in (1.0, 1.2):
        assert energy_force(distance)[0] == 0.0 and not energy_force(distance)[1].any()
    e, f = energy_force(0.9999)  # switch: value and slope vanish continuously at the cutoff
    assert 0.0 < e < 1e-9 and np.abs(f).max() < 1e-4
    step = 1e-5
    for distance in (0.4, 0.75):
        e_plus, e_minus = energy_force(distance + step)[0], energy_force(distance - step)[0]
        assert energy_force(distance)[1][1, 2] == pytest.approx(-(e_plus - e_minus) / (2 * step), rel=1e-6)


@pytest.mark.parametrize("model,hypers", [("MACE", TINY_MACE), ("aenet", TINY_AENET)])
def test_zbl_added_to_every_architecture(run_dir, data, model, hypers):
    squeezed = data[1][0].copy()
    squeezed.positions[4] = squeezed.positions[0] + [0.0, 0.0, 0.45]  # an H on top of a C
    with_zbl, member_zbl = make(run_dir, data, model=model, hypers=hypers, zbl=True, zbl_cutoff=0.8)
    plain, member = make(run_dir, data, tag="feat_2", model=model, hypers=hypers)
    member_zbl.model.base.load_state_dict(member.model.state_dict())
    a = predict(with_zbl, member_zbl.inference_model(), [squeezed])
    b = predict(plain, member.inference_model(), [squeezed])
    pairs = zbl.pair_list(squeezed, cutoff_A=0.8, dtype=torch.float64)
    e, f = zbl.zbl_energy_forces(pairs, torch.tensor(squeezed.positions), cutoff_A=0.8, width_A=0.5)
    assert float(e[0]) > 1.0
    assert a["energy"][0] - b["energy"][0] == pytest.approx(float(e[0]), rel=1e-9)
    np.testing.assert_allclose(a["forces"] - b["forces"], f.numpy(), atol=1e-9)


# --- 4./5. loss and force fraction -----------------------------------------------------------------------
def _manual_loss(trainer, member, atoms, *, criterion, alpha=None, per_atom=True, delta=0.01):
    pred = predict(trainer, member.inference_model(), atoms)
    natoms = np.array([len(a) for a in atoms])
    de = pred["energy"] - np.array([a.info["REF_energy"] for a in atoms])
    de = de / natoms if per_atom else de
    df = pred["forces"] - np.concatenate([a.arrays["REF_forces"] for a in atoms])
    err = {"mse": np.square, "l1": np.abs,
           "huber": lambda x: np.where(np.abs(x) < delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta))}[criterion]
    return (1 - alpha) * err(de).mean() + alpha * err(df).mean()


@pytest.mark.parametrize("criterion,per_atom", [("l1", True), ("huber", False), ("mse", False)])
def test_loss_criteria_and_alpha(run_dir, data, criterion, per_atom):
    trainer, member = make(run_dir, data, force_alpha=0.7, criterion=criterion,
                           energy_loss="per_atom" if per_atom else "total")
    expected = _manual_loss(trainer, member, data[1], criterion=criterion, alpha=0.7, per_atom=per_atom)
    assert trainer.evaluate(member, data[1])["loss"] == pytest.approx(expected, rel=1e-10)


def test_force_fraction_uses_that_share_of_structures(run_dir, data):
    trainer, member = make(run_dir, data, force_fraction=0.3, batch_size=10, lr=1e-12, forces_weight=1.0,
                           energy_weight=0.0)
    mask = trainer.force_mask(member, member.train_atoms)
    assert mask.sum() == 3
    chosen = [a for a, m in zip(member.train_atoms, mask) if m]
    pred = predict(trainer, member.inference_model(), chosen)
    df = pred["forces"] - np.concatenate([a.arrays["REF_forces"] for a in chosen])
    loss = trainer._train_epoch(member, use_scheduler=False)
    assert loss == pytest.approx(np.mean(df**2), rel=1e-6)  # only the chosen structures' forces count
    fixed, fixed_member = make(run_dir, data, tag="feat_2", force_fraction=0.3, force_sampling="fixed")
    first = fixed.force_mask(fixed_member, fixed_member.train_atoms)
    fixed_member.epoch = 7
    np.testing.assert_array_equal(fixed.force_mask(fixed_member, fixed_member.train_atoms), first)
    resample, member3 = make(run_dir, data, tag="feat_3", force_fraction=0.3, force_resample_num_epochs=3)
    masks = []
    for epoch in range(6):
        member3.epoch = epoch
        masks.append(resample.force_mask(member3, member3.train_atoms))
    assert all(np.array_equal(masks[0], m) for m in masks[:3]) and all(np.array_equal(masks[3], m) for m in masks[3:])
    few, member4 = make(run_dir, data, tag="feat_4", force_fraction=0.01, force_min_structures_per_epoch=2)
    assert few.force_mask(member4, member4.train_atoms).sum() == 2


# --- 6. optimizers and schedulers ------------------------------------------------------------------------
def test_onecycle_lr_trace_matches_schedule(run_dir, data):
    trainer, member = make(run_dir, data, scheduler="onecycle", lr=0.01, min_lr=1e-4, warmup_steps=3,
                           onecycle_total_steps=7, batch_size=5)
    trace = []
    for _ in range(5):  # 2 steps per epoch
        trainer.train(member, 1, use_scheduler=True)
        trace.append(optim.current_lr(member.optimizer))
    def expected(step):
        if step < 3:
            return 0.01 * (step + 1) / 3
        progress = min(1.0, (step - 3) / 4)
        return 1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
    np.testing.assert_allclose(trace, [expected(2 * (k + 1)) for k in range(5)], rtol=1e-12)


def test_sgd_momentum_and_scheduler_names(run_dir, data):
    trainer, member = make(run_dir, data, optimizer="sgd", momentum=0.8, scheduler="plateau", min_lr=1e-3)
    assert isinstance(member.optimizer, torch.optim.SGD) and member.optimizer.param_groups[0]["momentum"] == 0.8
    assert optim.is_plateau(member.scheduler) and member.scheduler.min_lrs[0] == 1e-3
    for name, cls in (("exponential", torch.optim.lr_scheduler.ExponentialLR),
                      ("ExponentialLR", torch.optim.lr_scheduler.ExponentialLR)):
        assert isinstance(optim.build_scheduler(member.optimizer, TrainingConfig(scheduler=name)), cls)
    with pytest.raises(SettingsError, match="TRAINING.scheduler"):
        optim.build_scheduler(member.optimizer, TrainingConfig(scheduler="cosine"))


# --- 7. early stopping, checkpoints, filters, predictions ------------------------------------------------
def test_early_stopping_and_checkpoint_options(run_dir, data):
    trainer, member = make(run_dir, data, n_early_stopping=2, checkpoint_interval=2, max_checkpoints=2,
                           save_best=True)
    trainer.train(member, 2)
    assert (run_dir / "checkpoints" / "feat_1_best.pt").exists()
    member.best_valid_loss = -1.0  # nothing can improve on it: every validation is stale
    trainer.train(member, 10)
    assert member.epoch == 4  # stopped after two stale validations
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("feat_1_epoch-*.pt"))
    assert names == ["feat_1_epoch-2.pt", "feat_1_epoch-4.pt"]
    resumed_trainer, resumed = make(run_dir, data, tag="feat_9", resume_from="checkpoints/feat_1_epoch-2.pt")
    assert resumed.epoch == 2 and resumed.tag == "feat_9"


def test_outlier_filters_drop_exactly_the_outliers(run_dir, data, caplog):
    train = [a.copy() for a in data[0]]
    train[2].info["REF_energy"] += 50.0 * len(train[2])
    train[5].arrays["REF_forces"][3] = [0.0, 30.0, 0.0]
    limit = max((a.info["REF_energy"] - sum(E0[z] for z in a.numbers)) / len(a) for a in data[0]) + 1.0
    with caplog.at_level("INFO", logger="fhi_al.training.selection"):
        trainer, member = make(run_dir, (train, data[1]), max_energy=limit, max_forces=20.0, atomic_energies=E0)
    kept = trainer.train_set(member)
    assert [a.info["label_id"] for a in kept] == [a.info["label_id"] for i, a in enumerate(train) if i not in (2, 5)]
    assert member.stats.num_structures == 8
    assert "2 of 10 structures dropped" in caplog.text


def test_write_predictions_and_plots(run_dir, data):
    trainer, member = make(run_dir, data, write_predictions=True, training_plots=True)
    trainer.train(member, 2)
    from ase.io import read

    frames = read(run_dir / "results" / "feat_1_predictions_valid.extxyz", ":")
    pred = predict(trainer, member.inference_model(), data[1])
    np.testing.assert_allclose([f.info["MLFF_energy"] for f in frames], pred["energy"], rtol=1e-10)
    np.testing.assert_allclose(frames[0].arrays["MLFF_forces"], pred["forces"][:len(frames[0])], atol=1e-8)
    with open(run_dir / "results" / "feat_1_predictions_train.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and float(rows[0]["energy_ref_eV"]) == pytest.approx(data[0][0].info["REF_energy"])
    for name in ("feat_1_curves.png", "feat_1_parity.png"):
        assert (run_dir / "results" / name).read_bytes()[:4] == b"\x89PNG"
    record = trainer.train(member, 1) and member.history[-1]
    assert record["train_forces_rmse"] > 0 and record["train_energy_rmse_per_atom"] > 0


# --- 8. cache --------------------------------------------------------------------------------------------
def test_featurization_cache_reuse_invalidation_and_lru(run_dir, data):
    trainer, member = make(run_dir, data, cache_max_structures=14)
    calls = []
    featurize = trainer.architecture.featurize
    trainer.architecture.featurize = lambda atoms: calls.append(1) or featurize(atoms)
    trainer.train(member, 2)
    assert len(calls) == 3  # train featurized at creation, valid at the first validation, then reused
    moved = member.train_atoms[0].copy()
    moved.positions[0, 0] += 0.01
    member.train_atoms[0] = moved  # the structure set changed: only the changed structure is redone
    trainer.train(member, 1)
    assert len(calls) == 4 and len(trainer.cache) == 14
    moved = member.train_atoms[1].copy()
    moved.positions[0, 0] += 0.01
    member.train_atoms[1] = moved
    trainer.train(member, 1)
    assert len(calls) == 5 and len(trainer.cache) == 14  # LRU bound: the unused original went
    uncached, member2 = make(run_dir, data, tag="feat_2", cache_featurization=False)
    before = uncached.cache.misses
    uncached.train(member2, 1)
    assert uncached.cache.misses - before == 13 and len(uncached.cache) == 0


def test_num_workers_give_the_same_epoch(run_dir, data):
    first, a = make(run_dir, data)
    second, b = make(run_dir, data, tag="feat_2", num_workers=1)
    assert first._train_epoch(a, use_scheduler=False) == pytest.approx(second._train_epoch(b, use_scheduler=False),
                                                                      rel=1e-12)


def test_exported_model_keeps_the_engine_terms(run_dir, data):
    """A model exported with ZBL and a per-element shift predicts the same after loading as an ensemble."""
    from fhi_al.ensemble import EnsembleCalculator

    trainer, member = make(run_dir, data, model="aenet", hypers=AenetHypers(rad_order=4, ang_order=2,
                                                                             hidden_sizes=[4]),
                           zbl=True, zbl_cutoff=0.8, energy_shift={1: -13.0, 6: -1030.0, 8: -2040.0})
    trainer.train(member, 1)
    path = trainer.export(member)
    squeezed = data[1][0].copy()
    squeezed.positions[4] = squeezed.positions[0] + [0.0, 0.0, 0.45]
    expected = predict(trainer, member.inference_model(), [squeezed])
    squeezed.calc = EnsembleCalculator.from_files([path])
    assert squeezed.get_potential_energy() == pytest.approx(float(expected["energy"][0]), rel=1e-10)
    np.testing.assert_allclose(squeezed.get_forces(), expected["forces"], atol=1e-8)
