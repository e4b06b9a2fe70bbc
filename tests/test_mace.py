"""MACE passes the architecture conformance suite; its exported files run unchanged in mace's own
MACECalculator, and its statistics (E0s, neighbours, scale/shift) follow the current training set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from mace.calculators import MACECalculator
from mace.data.utils import compute_average_E0s, config_from_atoms_list
from mace.tools import AtomicNumberTable

from conformance import ArchitectureConformance, emt_labelled, predict
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.architectures.mace.model import KEYSPEC
from fhi_al.errors import InputError
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer

TINY = dict(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])


@pytest.fixture
def tiny_hypers() -> MaceHypers:
    return MaceHypers(**TINY)


class MaceExportsForMace(ArchitectureConformance):
    """An exported file runs unchanged in mace's own MACECalculator."""

    export_tolerance = dict(rtol=1e-12, atol=1e-10)

    def exported_calculator(self, path):
        return MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")


class TestMaceConformance(MaceExportsForMace):
    model_name = "MACE"


class TestScaleShiftMaceConformance(MaceExportsForMace):
    model_name = "ScaleShiftMACE"

    @pytest.fixture
    def tiny_hypers(self) -> MaceHypers:
        return MaceHypers(**{**TINY, "max_L": 1})


@pytest.fixture
def ethanol_data():
    return emt_labelled(molecule("CH3CH2OH"), 6, seed=3), emt_labelled(molecule("CH3CH2OH"), 3, seed=4)


def make_trainer(run_dir, **overrides) -> Trainer:
    settings = dict(name_exp="mace", hypers=MaceHypers(**TINY), batch_size=3, scheduler="none", ema_decay=0.9)
    return Trainer(TrainingConfig(**{**settings, **overrides}), run_dir)


def test_export_uses_ema_weights(run_dir, ethanol_data):
    trainer = make_trainer(run_dir)
    member = trainer.create_member("mace_5", 5, *ethanol_data)
    trainer.train(member, 2)
    exported = torch.load(trainer.export(member), weights_only=False)
    raw = dict(member.model.named_parameters())
    with member.ema.average_parameters():
        averaged = {name: p.detach().clone() for name, p in member.model.named_parameters()}
    name = next(iter(averaged))
    assert torch.equal(dict(exported.named_parameters())[name], averaged[name])
    assert not torch.equal(raw[name].detach(), averaged[name])


def test_atomic_energies_from_settings_and_least_squares(run_dir, ethanol_data):
    given = {1: -13.6, 6: -1029.0, 8: -2041.0}
    trainer = make_trainer(run_dir, atomic_energies=given)
    member = trainer.create_member("mace_1", 1, *ethanol_data)
    e0 = member.model.atomic_energies_fn.atomic_energies.view(-1).tolist()
    assert e0 == pytest.approx([given[1], given[6], given[8]])
    assert member.stats.atomic_energies_source == "settings"
    fitted = make_trainer(run_dir).create_member("mace_2", 2, *ethanol_data)
    configs = config_from_atoms_list(ethanol_data[0], key_specification=KEYSPEC)
    mace_e0 = compute_average_E0s(configs, AtomicNumberTable([1, 6, 8]))
    assert fitted.model.atomic_energies_fn.atomic_energies.view(-1).tolist() == pytest.approx(
        [mace_e0[1], mace_e0[6], mace_e0[8]], rel=1e-10)


def test_missing_atomic_energy_is_an_input_error(run_dir, ethanol_data):
    with pytest.raises(InputError, match="ARCHITECTURE.atomic_energies"):
        make_trainer(run_dir, atomic_energies={1: -13.6, 6: -1029.0}).create_member("m_1", 1, *ethanol_data)


def test_statistics_follow_growing_data_without_touching_weights(run_dir, ethanol_data):
    trainer = make_trainer(run_dir, model="ScaleShiftMACE", atomic_energies={1: -1.0, 6: -2.0, 8: -3.0})
    member = trainer.create_member("mace_1", 1, ethanol_data[0][:2], ethanol_data[1])
    old_neighbors, old_scale = member.stats.num_neighbors_mean, member.stats.forces_rms
    trainer.train(member, 1)
    weights = {name: p.detach().clone() for name, p in member.model.named_parameters()}
    old_shift = float(member.model.scale_shift.shift)
    # far-stretched water molecules: other neighbour counts, energies and forces
    water = emt_labelled(molecule("H2O"), 3, seed=9, displacement_A=0.3)
    member.train_atoms = ethanol_data[0][:2] + water
    assert trainer.refresh_statistics(member)
    assert not trainer.refresh_statistics(member)
    assert all(torch.equal(p, weights[name]) for name, p in member.model.named_parameters())
    assert member.stats.num_structures == 5
    assert float(member.model.scale_shift.shift) == pytest.approx(member.stats.per_atom_energy_mean)
    assert float(member.model.scale_shift.shift) != pytest.approx(old_shift)
    assert float(member.model.scale_shift.scale) == pytest.approx(member.stats.forces_rms)
    assert member.stats.forces_rms != pytest.approx(old_scale)
    assert member.stats.num_neighbors_mean != pytest.approx(old_neighbors)
    for interaction in member.model.interactions:
        assert interaction.avg_num_neighbors == member.stats.num_neighbors_mean


def test_plain_mace_variant_has_no_shift_and_mace_defaults(run_dir, ethanol_data):
    member = make_trainer(run_dir, model="MACE").create_member("mace_1", 1, *ethanol_data)
    assert float(member.model.scale_shift.shift) == 0.0
    assert type(member.model.interactions[0]).__name__ == "RealAgnosticInteractionBlock"
    names = [group["name"] for group in member.optimizer.param_groups]
    assert names == ["embedding", "interactions_decay", "interactions_no_decay", "products", "readouts"]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])
@pytest.mark.parametrize("max_L, correlation", [(0, 1), (1, 2), (2, 3)])
def test_frozen_contractions_reproduce_mace(run_dir, monkeypatch, ethanol_data, max_L, correlation, fused):
    if not fused:
        monkeypatch.setenv("FHI_AL_FUSED_KERNELS", "0")
    hypers = MaceHypers(**{**TINY, "max_L": max_L, "correlation": correlation, "num_channels": 4})
    trainer = Trainer(TrainingConfig(hypers=hypers, model="ScaleShiftMACE"), run_dir)
    member = trainer.create_member("m_1", 1, *ethanol_data)
    plain, fast = member.averaged_model(), member.inference_model()
    assert any(type(m).__name__ == "FrozenContraction" for m in fast.modules())
    assert not any(type(m).__name__ == "FrozenContraction" for m in plain.modules())
    structures = ethanol_data[1] + emt_labelled(molecule("H2O"), 1, seed=5)
    expected, result = predict(trainer, plain, structures), predict(trainer, fast, structures)
    np.testing.assert_allclose(result["energy"], expected["energy"], rtol=1e-12)
    np.testing.assert_allclose(result["forces"], expected["forces"], rtol=1e-10, atol=1e-12)
    assert np.abs(expected["forces"]).max() > 1e-3
