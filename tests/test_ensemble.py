"""The ensemble calculator: member means and spreads equal each member's own prediction, batched calls
equal single calls, exported files equal in-memory members and mace's own committee calculator.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import pytest
from ase.build import molecule
from mace.calculators import MACECalculator

from conformance import emt_labelled, predict
from fhi_al.architectures.mace import kernels
from fhi_al.architectures.mace.channel_major import InteractionPlan
from fhi_al.architectures.mace.kernels import checked
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.ensemble import Ensemble, EnsembleCalculator, ensemble_seeds
from fhi_al.uncertainty import per_atom_force_spread
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer, member_tag

TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])
SIZE = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ensemble")
    trainer = Trainer(TrainingConfig(name_exp="ens", hypers=TINY, batch_size=3, scheduler="none"), run_dir)
    members = []
    for index, seed in enumerate(ensemble_seeds(42, SIZE)):
        data = emt_labelled(molecule("CH3CH2OH"), 4, seed=100 + index)
        member = trainer.create_member(member_tag("ens", seed), seed, data, data[:1])
        trainer.train(member, 1)
        members.append(member)
    return trainer, members


@pytest.fixture(scope="module")
def structures():
    return emt_labelled(molecule("CH3CH2OH"), 2, seed=7) + emt_labelled(molecule("H2O"), 1, seed=8)


def test_seeds_are_distinct_and_reproducible():
    seeds = ensemble_seeds(42, 6)
    assert seeds[0] == 42 and len(set(seeds)) == 6 and seeds == ensemble_seeds(42, 6)
    assert ensemble_seeds(43, 6) != seeds


def test_results_are_member_means_and_spreads(trained, structures):
    trainer, members = trained
    atoms = structures[0].copy()
    atoms.calc = EnsembleCalculator(members)
    forces = atoms.get_forces()
    results = atoms.calc.results
    own = [predict(trainer, member.inference_model(), [structures[0]]) for member in members]
    member_forces = np.stack([o["forces"] for o in own])
    member_energies = np.array([o["energy"][0] for o in own])
    np.testing.assert_allclose(results["forces_comm"], member_forces, atol=1e-12)
    np.testing.assert_allclose(forces, member_forces.mean(axis=0), atol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(member_energies.mean(), rel=1e-12)
    assert results["energy_var"] == pytest.approx(member_energies.var(), rel=1e-10)
    spread = np.sqrt(((member_forces - member_forces.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(results["forces_uncertainty_per_atom"], spread, rtol=1e-10)
    assert results["forces_uncertainty_max"] == pytest.approx(spread.max())
    assert results["forces_uncertainty_mean"] == pytest.approx(spread.mean())
    assert spread.min() > 0.0  # differently seeded members disagree
    assert atoms.calc.get_property("forces_uncertainty_max", atoms) == results["forces_uncertainty_max"]


def test_batch_equals_single_calls(trained, structures):
    _, members = trained
    calculator = EnsembleCalculator(members)
    many = structures * 3  # 9 structures, 63 atoms in one batched call
    batched = calculator.calculate_batch(many)
    for atoms, result in zip(many, batched):
        single = calculator.ensemble.predict([atoms])[0]
        assert result["forces_comm"].shape == (SIZE, len(atoms), 3)
        assert result["energy"] == pytest.approx(single["energy"], rel=1e-12)
        np.testing.assert_allclose(result["forces_comm"], single["forces_comm"], atol=1e-11)
        np.testing.assert_allclose(result["forces_uncertainty_per_atom"], single["forces_uncertainty_per_atom"],
                                   atol=1e-11)


def test_files_equal_members_and_mace_committee(trained, structures):
    trainer, members = trained
    paths = [trainer.export(member) for member in members]
    from_files = EnsembleCalculator.from_files(paths).calculate_batch(structures[:1])[0]
    from_members = EnsembleCalculator(members).calculate_batch(structures[:1])[0]
    np.testing.assert_allclose(from_files["forces_comm"], from_members["forces_comm"], atol=1e-12)
    committee = MACECalculator(model_paths=[str(p) for p in paths], device="cpu", default_dtype="float64")
    atoms = structures[0].copy()
    atoms.calc = committee
    atoms.get_potential_energy()
    np.testing.assert_allclose(committee.results["forces_comm"], from_files["forces_comm"], atol=1e-10)
    assert committee.results["energy_var"] == pytest.approx(from_files["energy_var"], rel=1e-8)
    assert committee.results["energy"] == pytest.approx(from_files["energy"], rel=1e-12)


def test_members_ensemble_follows_training(trained, structures):
    trainer, members = trained
    ensemble = Ensemble.from_members(members)
    before = ensemble.predict(structures[:1])[0]["forces_comm"]
    trainer.train(members[0], 1)
    after = ensemble.predict(structures[:1])[0]["forces_comm"]
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(before[1:], after[1:])


RICH = MaceHypers(num_channels=4, max_L=1, r_max=4.0, num_interactions=2, correlation=3, radial_MLP=[8])


@pytest.mark.parametrize("path", ["fused", "channel-major", "member-wise"])
@pytest.mark.parametrize("hypers", [TINY, RICH], ids=["L0-nu2", "L1-nu3"])
def test_stacked_members_equal_mace_reference(tmp_path, monkeypatch, structures, hypers, path):
    """The ensemble's evaluation of all members (stacked: frozen contractions, vmapped dense layers, message
    passing by the fused C kernels or channel-major in torch; or, for members the stacked model does not take,
    member by member) against each member's own mace modules, unfrozen and evaluated one by one: energies,
    forces and the uncertainties built on them."""
    if path != "fused":
        monkeypatch.setenv("FHI_AL_FUSED_KERNELS", "0")
    assert (kernels.library(torch.float64) is not None) == (path == "fused")
    stacked = path != "member-wise"
    if not stacked:  # a block the stacked model cannot take: the ensemble falls back to member-wise inference
        monkeypatch.setattr(InteractionPlan, "supports", staticmethod(lambda block: False))
    trainer = Trainer(TrainingConfig(name_exp="st", hypers=hypers, model="ScaleShiftMACE", batch_size=2,
                                     scheduler="none"), tmp_path)
    members = [trainer.create_member(member_tag("st", seed), seed,
                                     emt_labelled(molecule("CH3CH2OH"), 2 + index, seed=30 + index))
               for index, seed in enumerate(ensemble_seeds(3, SIZE))]
    ensemble = Ensemble.from_members(members)
    results = ensemble.predict(structures)
    assert ensemble._stacked is not None and (ensemble._stacked[1] is not None) == stacked  # the path that ran
    bounds = np.cumsum([0] + [len(atoms) for atoms in structures])
    own = [predict(trainer, member.averaged_model(), structures) for member in members]  # mace's modules
    for k, result in enumerate(results):
        energies = np.array([o["energy"][k] for o in own])
        forces = np.stack([o["forces"][bounds[k]:bounds[k + 1]] for o in own])
        np.testing.assert_allclose(result["energy_comm"], energies, rtol=1e-12, atol=1e-8)
        np.testing.assert_allclose(result["forces_comm"], forces, rtol=0, atol=1e-8)
        assert result["energy_var"] == pytest.approx(energies.var(), rel=1e-8)
        spread = per_atom_force_spread(forces)
        np.testing.assert_allclose(result["forces_uncertainty_per_atom"], spread, rtol=1e-7, atol=1e-10)
        assert result["forces_uncertainty_max"] == pytest.approx(spread.max(), rel=1e-8)
        assert np.abs(forces).max() > 1e-3 and spread.min() > 0.0


def test_stacked_float32_members_equal_their_own_models(tmp_path, structures):
    """Members trained in float32 (GENERAL.default_dtype) are stacked and evaluated by the float32 kernels."""
    trainer = Trainer(TrainingConfig(name_exp="f32", hypers=RICH, model="ScaleShiftMACE", batch_size=2,
                                     scheduler="none", default_dtype="float32"), tmp_path)
    members = [trainer.create_member(member_tag("f32", seed), seed,
                                     emt_labelled(molecule("CH3CH2OH"), 2 + index, seed=50 + index))
               for index, seed in enumerate(ensemble_seeds(5, SIZE))]
    ensemble = Ensemble.from_members(members)
    results = ensemble.predict(structures)
    assert kernels.library(torch.float32) is not None and ensemble._stacked[1] is not None
    assert members[0].averaged_model().r_max.dtype == torch.float32
    bounds = np.cumsum([0] + [len(atoms) for atoms in structures])
    own = [predict(trainer, member.averaged_model(), structures) for member in members]
    for k, result in enumerate(results):
        np.testing.assert_allclose(result["energy_comm"], [o["energy"][k] for o in own], rtol=1e-6)
        forces = np.stack([o["forces"][bounds[k]:bounds[k + 1]] for o in own])
        np.testing.assert_allclose(result["forces_comm"], forces, rtol=0, atol=2e-5)
        assert np.abs(forces).max() > 1e-2


def test_refused_kernel_inputs_fall_back_to_the_same_results(tmp_path, monkeypatch, caplog, structures):
    """When the kernels refuse their inputs (here: every call, by a zero channel limit), the stacked model runs
    its torch message passing and contractions instead, with the kernels' results, and says so once."""
    trainer = Trainer(TrainingConfig(name_exp="fb", hypers=RICH, model="ScaleShiftMACE", batch_size=2,
                                     scheduler="none"), tmp_path)
    members = [trainer.create_member(member_tag("fb", seed), seed,
                                     emt_labelled(molecule("CH3CH2OH"), 2 + index, seed=70 + index))
               for index, seed in enumerate(ensemble_seeds(7, SIZE))]
    ensemble = Ensemble.from_members(members)
    with_kernels = ensemble.predict(structures)
    assert kernels.library(torch.float64) is not None and ensemble._stacked[1] is not None
    monkeypatch.setattr(checked, "MAX_LANES", 0)
    monkeypatch.setattr(checked, "_reported", set())
    with caplog.at_level(logging.WARNING, logger=checked.__name__):
        fallback = ensemble.predict(structures)
        ensemble.predict(structures)
    assert caplog.text.count("refused its inputs") == 2  # messages and contractions, each reported once
    for ours, theirs in zip(fallback, with_kernels):
        np.testing.assert_allclose(ours["energy_comm"], theirs["energy_comm"], rtol=1e-12)
        np.testing.assert_allclose(ours["forces_comm"], theirs["forces_comm"], rtol=0, atol=1e-10)
        assert np.abs(ours["forces_comm"]).max() > 1e-3


def test_identical_members_are_stacked_with_zero_spread(trained, structures):
    """Parameters equal in all members are not stacked; that includes whole members (the same file twice)."""
    trainer, members = trained
    path = trainer.export(members[0])
    ensemble = Ensemble.from_files([path, path])
    result = ensemble.predict(structures[:1])[0]
    assert ensemble._stacked[1] is not None
    np.testing.assert_allclose(result["forces_comm"][0], result["forces_comm"][1], rtol=0, atol=1e-12)
    own = predict(trainer, members[0].inference_model(), structures[:1])
    np.testing.assert_allclose(result["forces_comm"][0], own["forces"], rtol=0, atol=1e-10)
    assert result["forces_uncertainty_max"] < 1e-10
