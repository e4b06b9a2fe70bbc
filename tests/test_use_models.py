"""Handing the models to production: `EnsembleCalculator.from_run_dir` loads a finished run's members (means,
per-member forces, the AL uncertainty, stress for cells), and the README's "Use the models" snippet runs as written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import write
from mace.calculators import MACECalculator

from conformance import emt_labelled
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.errors import InputError
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer
from fhi_al.uncertainty import frame_uncertainty, per_atom_force_spread
from foundation_helpers import xtb_labelled

REPO = Path(__file__).resolve().parents[1]
TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])
SEEDS = (1, 2, 3)
FD_STEP_A = 1e-4


def finished_run(folder: Path, data, *, model_dir: str = "model", seeds=SEEDS) -> Path:
    """A run folder as a finished run leaves it: settings, geometry.in and model_dir/{tag}.model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mace_settings.yaml").write_text(f"GENERAL:\n  name_exp: run\n  model_dir: {model_dir}\n")
    write(folder / "geometry.in", data[0][0], format="aims")
    trainer = Trainer(TrainingConfig(name_exp="run", hypers=TINY, batch_size=3, scheduler="none", model_dir=model_dir,
                                     training_plots=False), folder)
    for seed in seeds:
        member = trainer.create_member(f"run_{seed}", seed, *data)
        trainer.train(member, 2, report=False)
        trainer.export(member)
    return folder


@pytest.fixture(scope="module")
def water_run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("water") / "run",
                        (xtb_labelled("H2O", 6, seed=21), xtb_labelled("H2O", 2, seed=22)), model_dir="final_models")


def test_public_import_is_cheap_and_gives_the_calculator():
    code = ("import sys, fhi_al; assert 'torch' not in sys.modules; "
            "from fhi_al import EnsembleCalculator; from fhi_al.ensemble import EnsembleCalculator as E; "
            "assert EnsembleCalculator is E")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_run_dir_gives_member_means_forces_comm_and_the_al_uncertainty(water_run):
    from fhi_al import EnsembleCalculator

    calculator = EnsembleCalculator.from_run_dir(water_run)  # model_dir read from the run's mace_settings.yaml
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(5).normal(scale=0.05, size=(3, 3))
    atoms.calc = calculator
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    results = calculator.results
    paths = sorted((water_run / "final_models").glob("*.model"))
    assert [p.name for p in paths] == [f"run_{seed}.model" for seed in SEEDS]
    own_energies = []
    for index, path in enumerate(paths):
        member = atoms.copy()
        member.calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        np.testing.assert_allclose(results["forces_comm"][index], member.get_forces(), atol=1e-10)
        own_energies.append(member.get_potential_energy())
    assert energy == pytest.approx(np.mean(own_energies), rel=1e-12)
    np.testing.assert_allclose(forces, results["forces_comm"].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(results["forces_uncertainty_per_atom"], per_atom_force_spread(results["forces_comm"]))
    assert results["forces_uncertainty_max"] == pytest.approx(frame_uncertainty(results["forces_comm"], "max"))
    assert results["forces_uncertainty_max"] > 0.0
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # a molecule has no stress


def test_forces_are_minus_the_gradient_of_the_mean_energy(water_run):
    from fhi_al import EnsembleCalculator

    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(6).normal(scale=0.05, size=(3, 3))
    atoms.calc = EnsembleCalculator.from_run_dir(water_run)
    forces = atoms.get_forces()
    numerical = np.zeros_like(forces)
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.calc = atoms.calc
                displaced.positions[atom, axis] += sign * FD_STEP_A
                energies.append(displaced.get_potential_energy())
            numerical[atom, axis] = -(energies[0] - energies[1]) / (2 * FD_STEP_A)
    np.testing.assert_allclose(forces, numerical, atol=1e-6)


def test_stress_of_a_periodic_cell_is_the_member_mean(tmp_path):
    from fhi_al import EnsembleCalculator

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    run = finished_run(tmp_path / "cu", (emt_labelled(cell, 4, seed=1), emt_labelled(cell, 2, seed=2)), seeds=(1, 2))
    atoms = cell.copy()
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    atoms.calc = EnsembleCalculator.from_run_dir(run)
    stress = atoms.get_stress()
    own = []
    for path in sorted((run / "model").glob("*.model")):
        member = atoms.copy()
        member.calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        own.append(member.get_stress())
    np.testing.assert_allclose(stress, np.mean(own, axis=0), atol=1e-10)
    np.testing.assert_allclose(atoms.calc.results["stress_comm"], own, atol=1e-10)
    assert np.abs(stress).max() > 0.0


def test_run_without_models_is_an_input_error(tmp_path):
    from fhi_al import EnsembleCalculator

    with pytest.raises(InputError, match="no model files"):
        EnsembleCalculator.from_run_dir(tmp_path)


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use the models", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)
    return code


def test_readme_md_snippet_runs_on_a_finished_run(tmp_path):
    run = finished_run(tmp_path / "run", (xtb_labelled("H2O", 6, seed=31), xtb_labelled("H2O", 2, seed=32)),
                       seeds=(1, 2))
    (run / "analysis").mkdir()
    (run / "analysis" / "uncertainty_checks.jsonl").write_text(
        '{"trajectory": 0, "md_step": 5, "uncertainty": 0.2, "threshold": null, "decision": "none"}\n'
        '{"trajectory": 0, "md_step": 10, "uncertainty": 0.2, "threshold": 1e-6, "decision": "crossed"}\n')
    result = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=run, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(lines) == 21  # steps 0, 10, ..., 200
    uncertainties = [float(re.search(r"uncertainty ([0-9.]+) eV/Å", line).group(1)) for line in lines]
    assert all(value > 0.0 for value in uncertainties)
    assert all(line.endswith("above the AL threshold") for line in lines)  # threshold 1e-6 eV/Å from the record
