"""Settings: defaults, the original tool's files, aliases and normalisation, examples generated from the schema."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, VENV_BIN
from fhi_al.errors import InputError, SettingsError
from fhi_al.settings import load_run_settings, normalise_atomic_energies
from fhi_al.settings import examples, schema
from fhi_al.settings.loader import hypers_class

SETTINGS_FOLDER = Path(REPO_ROOT) / "settings"

# The original tool's example files (FHI_AL era), with the keys users have in their folders.
OLD_MACE = """\
GENERAL:
  name_exp: test
  log_dir: ./logs
  checkpoints_dir: ./checkpoints
  results_dir: ./results
  model_dir: ./model
  save_cpu: False
  default_dtype: float32
  compute_forces: True
  compute_stress: False
  seed: 100

ARCHITECTURE:
  model: ScaleShiftMACE
  r_max: 5.
  num_channels: 16
  max_L: 0
  max_ell: 3
  radial_type: bessel
  num_radial_basis: 8
  num_cutoff_basis: 5
  interaction: RealAgnosticResidualInteractionBlock
  num_interactions: 2
  correlation: 3
  radial_MLP:
  - 16
  - 16
  - 16
  gate: silu
  MLP_irreps: 16x0e
  interaction_first: RealAgnosticResidualInteractionBlock
  E0s: average
  compute_avg_num_neighbors: True
  atomic_energies:
    1: -12.483008663366023
    8: -2041.7075263924146

TRAINING:
  valid_fraction: 0.1
  batch_size: 5
  valid_batch_size: 5
  weight_decay: 5.e-07
  scaling: std_scaling # the original kept this here
  lr: 0.01
  amsgrad: True
  optimizer: adam
  scheduler: ReduceLROnPlateau
  lr_scheduler_gamma: 0.9993
  lr_factor: 0.8
  scheduler_patience: 5
  swa: False
  ema: True
  ema_decay: 0.99
  max_num_epochs: 30
  loss: weighted
  energy_weight: 1.
  forces_weight: 1000.
  virials_weight: 1.
  stress_weight: 1.
  config_type_weights: {Default: 1.0}
  patience: 15
  clip_grad: 10.
  eval_interval: 5

MISC:
  device: cpu
  keep_checkpoints: False
  restart_latest: False
  wandb: False
  error_table: PerAtomMAE
  log_level: INFO
"""

OLD_AL = """\
ACTIVE_LEARNING:
  desired_acc: 0.000042
  lambda: 15.
  n_samples: 4
  valid_ratio: 0.3 # e.g. 0.3 means 30% of the data is used for validation
  converge_initial: False
  converge_al: True
  converge_best: True
  scheduler_initial: True
  max_initial_epochs: 30
  max_epochs_worker: 10
  max_final_epochs: 200
  intermediate_epochs: 10
  patience: 20
  max_MD_steps: 100
  max_set_size: 15
  valid_skip: 5
  sanity_skip: 10
  ensemble_size: 2
  c_x: -0.1
  dataset_dir: "./data"
  skip_step_initial: 10
  skip_step_mlff: 5
  num_trajectories: 3
  species_dir: "{species}"
  aims_lib_path: "{lib}"
  analysis: True
  initial_sampling: mace-mp0
  initial_foundational_size: "small"
  parallel: False
  threshold: 0.15

MD:
  stat_ensemble: NVT
  thermostat: Langevin
  temperature: 500
  timestep: 1.
  friction: 0.001
  seed: 42

MISC:
  create_restart: True
"""


def write_settings(folder: Path, mace: str = "", al: str = "") -> Path:
    (folder / schema.MACE_SETTINGS_FILE).write_text(mace, encoding="utf-8")
    (folder / schema.AL_SETTINGS_FILE).write_text(al, encoding="utf-8")
    return folder


def old_tool_folder(folder: Path) -> Path:
    species, lib = folder / "species", folder / "libaims.so"
    species.mkdir()
    lib.write_text("")
    return write_settings(folder, OLD_MACE, OLD_AL.format(species=species, lib=lib))


def test_empty_files_give_documented_defaults(tmp_path):
    settings = load_run_settings(write_settings(tmp_path))
    al, mace = settings.al, settings.mace
    assert al.reference.calculator == "xtb" and settings.calculator == "xtb"
    assert al.active_learning.ensemble_size == 4 and al.active_learning.lambda_ == 10.0
    assert al.md.temperature == 300.0 and al.md.thermostat == "Langevin"
    assert mace.architecture.model == "ScaleShiftMACE" and mace.architecture.atomic_energies is None
    assert type(mace.architecture.hypers).__name__ == "MaceHypers"
    assert mace.training.config_type_weights == {"Default": 1.0}
    assert settings.notes == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        al.md.temperature = 1.0  # type: ignore[misc]


def test_original_tool_files_load_with_notes(tmp_path):
    settings = old_tool_folder(tmp_path)
    loaded = load_run_settings(settings)
    al, mace = loaded.al, loaded.mace
    # values read under the original names
    assert al.active_learning.lambda_ == 15.0 and al.active_learning.analysis_skip == 10
    assert al.active_learning.desired_acc == pytest.approx(4.2e-5)
    assert al.md.stat_ensemble == "NVT" and al.md.timestep == 1.0 and al.md.temperature == 500.0
    assert al.reference.calculator == "aims"  # aims_lib_path set, no REFERENCE section
    assert al.active_learning.species_dir == str(tmp_path / "species")
    assert mace.general.default_dtype == "float32" and mace.general.seed == 100
    assert mace.architecture.atomic_energies == {1: pytest.approx(-12.483008663366023),
                                                 8: pytest.approx(-2041.7075263924146)}
    assert mace.architecture.hypers.radial_MLP == [16, 16, 16] and mace.architecture.hypers.max_L == 0
    assert mace.architecture.hypers.scaling == "std_scaling"  # moved from TRAINING
    assert mace.training.forces_weight == 1000.0 and mace.training.weight_decay == pytest.approx(5e-7)
    notes = "\n".join(loaded.notes)
    for key in ("GENERAL.save_cpu", "ARCHITECTURE.E0s", "TRAINING.valid_fraction", "TRAINING.swa", "MISC.wandb",
                "ACTIVE_LEARNING.threshold", "TRAINING.scaling"):
        assert key in notes, key


def test_choices_are_case_insensitive_and_canonical(tmp_path):
    write_settings(tmp_path, "TRAINING:\n  optimizer: AdamW\n  scheduler: exponentiallr\nMISC:\n  log_level: debug\n",
                   "MD:\n  stat_ensemble: nvt\n  thermostat: LANGEVIN\nREFERENCE:\n  calculator: PySCF\n")
    settings = load_run_settings(tmp_path)
    assert settings.mace.training.optimizer == "adamw" and settings.mace.training.scheduler == "ExponentialLR"
    assert settings.mace.misc.log_level == "DEBUG"
    assert (settings.al.md.stat_ensemble, settings.al.md.thermostat) == ("NVT", "Langevin")
    assert settings.calculator == "pyscf"


def test_aliases_of_newer_tool_names(tmp_path):
    write_settings(tmp_path, "GENERAL:\n  loss_dir: losses\n",
                   "ACTIVE_LEARNING:\n  convergence_patience: 7\n  max_train_set_size: 33\n  epochs_per_worker: 3\n"
                   "MD:\n  MD_seed: 5\n")
    settings = load_run_settings(tmp_path)
    section = settings.al.active_learning
    assert (section.patience, section.max_set_size, section.max_epochs_worker) == (7, 33, 3)
    assert settings.al.md.seed == 5 and settings.mace.general.results_dir == "losses"


@pytest.mark.parametrize("energies", [{"H": -13.6, "O": -2041.7}, {1: -13.6, 8: -2041.7}, {"1": -13.6, "o": -2041.7}])
def test_atomic_energies_by_symbol_or_number(energies):
    assert normalise_atomic_energies(energies) == {1: -13.6, 8: -2041.7}


@pytest.mark.parametrize("energies, message", [({"Hx": 1.0}, "Hx"), ({0: 1.0}, "out of range"),
                                               ({"H": 1.0, 1: 2.0}, "given twice")])
def test_atomic_energies_errors(energies, message):
    with pytest.raises(SettingsError, match=message) as info:
        normalise_atomic_energies(energies)
    assert info.value.where.startswith("ARCHITECTURE.atomic_energies.")


def test_reference_subsections(tmp_path):
    write_settings(tmp_path, "", "REFERENCE:\n  calculator: xtb\n  xtb:\n    method: gfn1-xtb\n"
                                 "    electronic_temperature_K: 500\n  pyscf:\n    basis: sto-3g\n    spin: 2\n")
    reference = load_run_settings(tmp_path).al.reference
    assert reference.xtb.method == "GFN1-xTB" and reference.xtb.electronic_temperature_K == 500.0
    assert reference.pyscf.basis == "sto-3g" and reference.pyscf.spin == 2 and reference.pyscf.xc == "pbe"


def test_relative_paths_resolve_against_run_dir(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libaims.so").write_text("")
    (tmp_path / "species").mkdir()
    write_settings(tmp_path, "", "ACTIVE_LEARNING:\n  aims_lib_path: lib/libaims.so\n  species_dir: species\n")
    section = load_run_settings(tmp_path).al.active_learning
    assert section.aims_lib_path == str(tmp_path / "lib" / "libaims.so")
    assert Path(section.species_dir).is_dir()


def test_explicit_xtb_with_aims_library_is_a_note(tmp_path):
    write_settings(tmp_path, "", "ACTIVE_LEARNING:\n  aims_lib_path: /nonexistent/libaims.so\n"
                                 "REFERENCE:\n  calculator: xtb\n")
    settings = load_run_settings(tmp_path)
    assert settings.calculator == "xtb" and any("aims_lib_path" in note for note in settings.notes)


def test_missing_file_is_input_error_naming_it(tmp_path):
    (tmp_path / schema.AL_SETTINGS_FILE).write_text("")
    with pytest.raises(InputError, match="mace_settings.yaml") as info:
        load_run_settings(tmp_path)
    assert not isinstance(info.value, SettingsError)


def test_yaml_error_names_line(tmp_path):
    write_settings(tmp_path, "GENERAL:\n  seed: 1\n  name_exp: [a\n")
    with pytest.raises(SettingsError) as info:
        load_run_settings(tmp_path)
    assert "mace_settings.yaml, line" in info.value.where


def test_hypers_class_is_light_and_registry_names_are_case_insensitive():
    cls = hypers_class("mace")
    assert cls.__name__ == "MaceHypers" and hypers_class("ScaleShiftMACE") is cls
    with pytest.raises(SettingsError, match="Did you mean 'MACE'"):
        hypers_class("MACEE")


def test_every_field_is_documented():
    for cls in (schema.GeneralSettings, schema.ArchitectureCommon, schema.TrainingSettings, schema.MaceMiscSettings,
                schema.ActiveLearningSettings, schema.MdSettings, schema.AlMiscSettings, schema.XtbSettings,
                schema.PyscfSettings, schema.ReferenceSettings, hypers_class("MACE")):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_committed_examples_equal_generated_and_load(tmp_path):
    for name, text in examples.example_texts().items():
        committed = (SETTINGS_FOLDER / name).read_text(encoding="utf-8")
        assert committed == text, f"settings/{name} is stale: run python -m fhi_al.settings.examples"
    for name in (schema.MACE_SETTINGS_FILE, schema.AL_SETTINGS_FILE, "geometry.in", "control.in"):
        shutil.copy(SETTINGS_FOLDER / name, tmp_path / name)
    settings = load_run_settings(tmp_path)
    (tmp_path / "empty").mkdir()
    defaults = load_run_settings(write_settings(tmp_path / "empty"))
    assert settings == defaults  # the examples spell out exactly the defaults
    # every documented key is in the example, under its YAML name
    data = yaml.safe_load((SETTINGS_FOLDER / schema.AL_SETTINGS_FILE).read_text())
    assert "lambda" in data["ACTIVE_LEARNING"] and "lambda_" not in data["ACTIVE_LEARNING"]
    assert set(data["REFERENCE"]) == {"calculator", "simulated_cost_s", "xtb", "pyscf", "aims"}


def test_examples_module_writes_files(tmp_path):
    proc = subprocess.run([os.path.join(VENV_BIN, "python"), "-m", "fhi_al.settings.examples", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / schema.MACE_SETTINGS_FILE).read_text() == examples.mace_settings_text()


@pytest.mark.parametrize("model", ["MACE", "ScaleShiftMACE", "aenet"])
def test_light_hypers_class_is_the_architectures_own(model):
    from fhi_al.architectures import registry

    try:
        architecture = registry.get_architecture_class(model)
    except ModuleNotFoundError:
        pytest.skip(f"{model} model module not there yet")
    assert architecture.Hypers is hypers_class(model)
