"""Conformance tests every architecture passes; a test module subclasses `ArchitectureConformance` and
provides the `tiny_hypers` fixture (and `model_name`). Physics: forces = -dE/dR, invariances; engine:
loss decreases, checkpoints reproduce predictions, warm start continues without re-initialisation, a trained
member exports to a file whose ASE calculator reproduces the member; stress (GENERAL.compute_stress) is either
trained, with stress = (1/V) dE/dstrain, or refused naming the key and the model.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from scipy.spatial.transform import Rotation

from fhi_al.architectures.exported import ExportedModelCalculator
from fhi_al.architectures.registry import get_architecture_class, trains_stress
from fhi_al.errors import InputError
from fhi_al.labeling import REF_ENERGY_KEY, REF_FORCES_KEY, REF_STRESS_KEY
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer
from fhi_al.training.head import load_exported

FD_STEP_A = 1e-4
FD_RTOL = 1e-5
EXACT = dict(rtol=1e-10, atol=1e-10)


def emt_labelled(base: Atoms, count: int, *, seed: int, displacement_A: float = 0.08) -> list[Atoms]:
    """Randomly displaced copies of `base` labelled with ASE's EMT (raw calculator results)."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=displacement_A, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.info[REF_ENERGY_KEY] = float(atoms.calc.results["energy"])
        atoms.arrays[REF_FORCES_KEY] = np.array(atoms.calc.results["forces"])
        atoms.info["label_id"] = f"test-s{seed}-{index}"
        atoms.calc = None
        structures.append(atoms)
    return structures


def emt_copper(count: int, *, seed: int) -> list[Atoms]:
    """Rattled, strained 4-atom fcc Cu cells labelled with EMT, stress included (Voigt, eV/Å³)."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + np.diag(rng.uniform(-0.02, 0.02, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_stress()
        atoms.info.update({REF_ENERGY_KEY: float(atoms.calc.results["energy"]), "label_id": f"cu-{seed}-{index}",
                           REF_STRESS_KEY: np.array(atoms.calc.results["stress"])})
        atoms.arrays[REF_FORCES_KEY] = np.array(atoms.calc.results["forces"])
        atoms.calc = None
        structures.append(atoms)
    return structures


def fd_stress_check(trainer: Trainer, model: torch.nn.Module, atoms: Atoms, step: float = 1e-4) -> None:
    """The architecture's predicted stress equals (1/V) dE/dstrain of its energy by central differences."""
    arch = trainer.architecture

    def energy(structure: Atoms) -> float:
        return float(arch.predict(model, arch.collate([arch.featurize(structure)]))["energy"][0].detach())

    stress = arch.predict_stress(model, arch.collate([arch.featurize(atoms)]))["stress"][0].detach().numpy()
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = step / 2 if i != j else step
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
            energies.append(energy(moved))
        numerical = (energies[0] - energies[1]) / (2 * step) / atoms.get_volume()
        assert numerical == pytest.approx(stress[i, j], rel=1e-5, abs=1e-9)


def predict(trainer: Trainer, model: torch.nn.Module, structures: list[Atoms]) -> dict[str, np.ndarray]:
    arch = trainer.architecture
    out = arch.predict(model, arch.collate([arch.featurize(atoms) for atoms in structures]), training=False)
    return {key: value.detach().numpy() for key, value in out.items()}


def fd_check(trainer: Trainer, model: torch.nn.Module, atoms: Atoms) -> None:
    """Predicted forces equal minus the central finite difference of the predicted energy."""
    forces = predict(trainer, model, [atoms])["forces"]
    for index, axis in [(0, 0), (3, 1), (8, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[index, axis] += sign * FD_STEP_A
            energies.append(predict(trainer, model, [moved])["energy"][0])
        numerical = -(energies[0] - energies[1]) / (2 * FD_STEP_A)
        assert abs(forces[index, axis]) > 1e-6
        assert numerical == pytest.approx(forces[index, axis], rel=FD_RTOL, abs=1e-7)


class ArchitectureConformance:
    """Base class; subclasses set `model_name` and define the `tiny_hypers` fixture."""

    model_name: str = ""
    loss_drop_factor = 0.5  # the training loss must at least halve in `loss_epochs` epochs
    loss_epochs = 15
    export_tolerance = dict(rtol=0, atol=1e-12)  # exported file vs the member, energies (eV) and forces (eV/Å)

    def exported_calculator(self, path):
        """An ASE calculator of an exported model file; this default reads any architecture's file."""
        return ExportedModelCalculator(path, loader=load_exported)

    @pytest.fixture
    def config(self, tiny_hypers) -> TrainingConfig:
        return TrainingConfig(name_exp="conf", model=self.model_name, hypers=tiny_hypers, default_dtype="float64",
                              batch_size=4, valid_batch_size=8, lr=0.01, scheduler="none", ema=True,
                              ema_decay=0.9, forces_weight=10.0)

    @pytest.fixture
    def data(self):
        ethanol = molecule("CH3CH2OH")
        return emt_labelled(ethanol, 8, seed=1), emt_labelled(ethanol, 4, seed=2)

    @pytest.fixture
    def trainer(self, config, run_dir) -> Trainer:
        return Trainer(config, run_dir)

    @pytest.fixture
    def member(self, trainer, data):
        train, valid = data
        return trainer.create_member("conf_1", 1, train, valid)

    def test_forces_are_minus_energy_gradient(self, trainer, member, data):
        fd_check(trainer, member.inference_model(), data[1][0])

    def test_rotation_and_translation_invariance(self, trainer, member, data):
        atoms = data[1][1]
        model = member.inference_model()
        reference = predict(trainer, model, [atoms])
        rotation = Rotation.random(random_state=7).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + np.array([1.3, -0.4, 2.2])
        result = predict(trainer, model, [moved])
        np.testing.assert_allclose(result["energy"], reference["energy"], **EXACT)
        np.testing.assert_allclose(result["forces"], reference["forces"] @ rotation.T, rtol=1e-8, atol=1e-9)

    def test_permutation_of_like_atoms(self, trainer, member, data):
        atoms = data[1][2]
        model = member.inference_model()
        reference = predict(trainer, model, [atoms])
        hydrogens = [i for i, z in enumerate(atoms.numbers) if z == 1]
        order = np.arange(len(atoms))
        order[hydrogens] = hydrogens[::-1]
        result = predict(trainer, model, [atoms[order]])
        np.testing.assert_allclose(result["energy"], reference["energy"], **EXACT)
        np.testing.assert_allclose(result["forces"], reference["forces"][order], rtol=1e-8, atol=1e-9)

    def test_loss_decreases(self, trainer, member):
        before = trainer.evaluate(member, member.train_atoms)["loss"]
        trainer.train(member, self.loss_epochs)
        after = trainer.evaluate(member, member.train_atoms)["loss"]
        assert after < self.loss_drop_factor * before

    def test_checkpoint_reproduces_predictions(self, trainer, member, data):
        trainer.train(member, 2)
        trainer.save_checkpoint(member)
        loaded = trainer.load_member(member.tag, train_atoms=member.train_atoms, valid_atoms=member.valid_atoms)
        first, second = (predict(trainer, m.inference_model(), data[1]) for m in (member, loaded))
        np.testing.assert_array_equal(first["energy"], second["energy"])
        np.testing.assert_array_equal(first["forces"], second["forces"])
        assert loaded.epoch == member.epoch == 2

    def test_warm_start_continues(self, trainer, member):
        trainer.train(member, 2)
        loss_before = trainer.evaluate(member, member.valid_atoms)["loss"]
        trainer.save_checkpoint(member)
        resumed = trainer.load_member(member.tag, train_atoms=member.train_atoms, valid_atoms=member.valid_atoms)
        assert trainer.evaluate(resumed, resumed.valid_atoms)["loss"] == loss_before
        # continuing the original and the resumed member gives the same trajectory (no re-initialisation)
        trainer.train(member, 2)
        trainer.train(resumed, 2)
        assert trainer.evaluate(resumed, resumed.valid_atoms)["loss"] == pytest.approx(
            trainer.evaluate(member, member.valid_atoms)["loss"], rel=1e-10)
        assert trainer.evaluate(member, member.valid_atoms)["loss"] != loss_before


    def test_stress_is_trained_or_refused(self, config, run_dir):
        """GENERAL.compute_stress: the settings check (registry, no torch) agrees with the class; an architecture
        with a strain hook trains on REF_stress and predicts (1/V) dE/dstrain, the others refuse it."""
        from dataclasses import replace

        assert get_architecture_class(self.model_name).trains_stress == trains_stress(self.model_name)
        stress_config = replace(config, compute_stress=True)
        if not trains_stress(self.model_name):
            with pytest.raises(InputError, match=f"GENERAL.compute_stress.*{self.model_name}"):
                Trainer(stress_config, run_dir)
            return
        trainer = Trainer(stress_config, run_dir)
        member = trainer.create_member("conf_stress", 1, emt_copper(4, seed=5), emt_copper(2, seed=6))
        trainer.train(member, 2)
        assert "stress_mae_meV_per_A3" in member.history[-1]
        fd_stress_check(trainer, member.inference_model(), member.valid_atoms[0])

    def test_hypers_load_without_torch(self):
        """Settings are validated before any heavy library loads (a bad key exits within a second)."""
        code = ("import sys; from fhi_al.architectures.registry import hypers_class; "
                f"hypers_class({self.model_name!r})(); print(sorted({{'torch', 'e3nn', 'mace'}} & set(sys.modules)))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]"

    def test_trains_and_exports_to_a_calculator(self, trainer, member, data):
        trainer.train(member, 3)
        path = trainer.export(member)
        assert path == trainer.run_dir / "model" / f"{member.tag}.model"
        expected = predict(trainer, member.inference_model(), data[1])
        calculator = self.exported_calculator(path)
        bounds = np.cumsum([0] + [len(atoms) for atoms in data[1]])
        for index, atoms in enumerate(data[1]):
            atoms = atoms.copy()
            atoms.calc = calculator
            np.testing.assert_allclose(atoms.get_potential_energy(), expected["energy"][index], **self.export_tolerance)
            np.testing.assert_allclose(atoms.get_forces(), expected["forces"][bounds[index]:bounds[index + 1]],
                                       **self.export_tolerance)


def check_export_round_trip(arch, model: torch.nn.Module, atoms: Atoms, path, *, load, calculator, label: str):
    """Export, load back (same hypers and species) and compare an ASE calculator on the file with the model to
    1e-12; a foreign file is an InputError naming the architecture. Returns the loaded model."""
    from fhi_al.errors import InputError

    arch.export(model, path)
    loaded_arch, loaded = load(path)
    assert loaded_arch.hypers == arch.hypers and loaded.species == model.species
    expected = arch.predict(model, arch.collate([arch.featurize(atoms)]))
    atoms = atoms.copy()
    atoms.calc = calculator(path)
    assert atoms.get_potential_energy() == pytest.approx(float(expected["energy"][0]), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].numpy(), atol=1e-12)
    other = path.parent / "other.model"
    torch.save({"format": "something else"}, other)
    with pytest.raises(InputError, match=f"not a model file of fhi_al.s {label} architecture"):
        load(other)
    return loaded
