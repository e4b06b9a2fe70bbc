"""Bad-input corpus run through the console script: exit status 2, the key or file named, no traceback, no output.

All cases run once, a few at a time, in a module fixture (each is a fresh `FHI_AL-atomic-energies` process);
the parametrised tests then check each case's result.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import VENV_BIN

SCRIPT = os.path.join(VENV_BIN, "FHI_AL-atomic-energies")
PARALLEL_CASES = 4
TIMEOUT_S = 120

MACE_OK = "GENERAL:\n  name_exp: bad_inputs\n  seed: 3\nARCHITECTURE:\n  model: MACE\n  num_channels: 8\n"
AL_OK = ("ACTIVE_LEARNING:\n  ensemble_size: 2\n  valid_ratio: 0.2\nMD:\n  temperature: 300\n"
         "REFERENCE:\n  calculator: emt\n")
WATER = ("atom 0.000000 0.000000 0.119262 O\n"
         "atom 0.000000 0.763239 -0.477047 H\n"
         "atom 0.000000 -0.763239 -0.477047 H\n")
XTB_MD_AL = "ACTIVE_LEARNING:\n  initial_sampling: xtb-md\nREFERENCE:\n  calculator: emt\n"
CONTROL_OK = "xc pbe\nrelativistic atomic_zora scalar\nspin none\n"


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def aims_setup(folder: Path, *, species=("H", "O"), lib=True, control=True) -> None:
    """Files of an aims run: a (dummy) library, species files and control.in; paths outside the run folder."""
    outside = folder.parent / "aims_files"
    (outside / "species").mkdir(parents=True, exist_ok=True)
    numbers = {"H": 1, "O": 8}
    for symbol in species:
        write(outside / "species", f"{numbers[symbol]:02d}_{symbol}_default", f"  species {symbol}\n")
    if lib:
        write(outside, "libaims.so", "")
    if control:
        write(folder, "control.in", CONTROL_OK)
    write(folder, "active_learning_settings.yaml",
          f"ACTIVE_LEARNING:\n  aims_lib_path: {outside / 'libaims.so'}\n  species_dir: {outside / 'species'}\n")


def al_file(text: str) -> Callable[[Path], None]:
    return lambda folder: write(folder, "active_learning_settings.yaml", text)


def mace_file(text: str) -> Callable[[Path], None]:
    return lambda folder: write(folder, "mace_settings.yaml", text)


def geometry_file(text: str) -> Callable[[Path], None]:
    return lambda folder: write(folder, "geometry.in", text)


def without_species_dir(folder: Path) -> None:
    aims_setup(folder)
    path = folder / "active_learning_settings.yaml"
    path.write_text(path.read_text().replace("/species\n", "/nospecies\n"))


@dataclass
class Case:
    name: str
    setup: Callable[[Path], None] = lambda folder: None
    expect: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    run_dir: str | None = None  # relative to the case folder; default: the run folder itself
    results: dict = field(default_factory=dict)


CASES = [
    Case("yaml_syntax_error", mace_file("GENERAL:\n  seed: [1, 2\n  name_exp: x\n"),
         ("mace_settings.yaml", "line", "not valid YAML")),
    Case("tab_indentation", al_file("MD:\n\ttemperature: 300\n"),
         ("active_learning_settings.yaml", "line 2", "tab")),
    Case("duplicate_key", al_file("MD:\n  seed: 1\n  seed: 2\n"),
         ("appears twice", "active_learning_settings.yaml")),
    Case("top_level_not_mapping", mace_file("- GENERAL\n- TRAINING\n"),
         ("mace_settings.yaml", "expected sections")),
    Case("unknown_section", al_file("ACTIVE_LEARNIG:\n  n_samples: 2\n"),
         ("ACTIVE_LEARNIG", "Did you mean 'ACTIVE_LEARNING'")),
    Case("unknown_key", al_file("ACTIVE_LEARNING:\n  frobnicate: 1\n"),
         ("ACTIVE_LEARNING.frobnicate", "unknown key", "Allowed keys")),
    Case("misspelt_key", al_file("ACTIVE_LEARNING:\n  desired_accc: 0.1\n"),
         ("ACTIVE_LEARNING.desired_accc", "Did you mean 'desired_acc'")),
    Case("misspelt_architecture_key", mace_file("ARCHITECTURE:\n  num_chanels: 8\n"),
         ("ARCHITECTURE.num_chanels", "Did you mean 'num_channels'")),
    Case("wrong_type_int", al_file("ACTIVE_LEARNING:\n  n_samples: four\n"),
         ("ACTIVE_LEARNING.n_samples", "'four'", "integer")),
    Case("wrong_type_float", mace_file("TRAINING:\n  lr: fast\n"),
         ("TRAINING.lr", "'fast'", "number")),
    Case("wrong_type_bool", al_file("ACTIVE_LEARNING:\n  parallel: 3\n"),
         ("ACTIVE_LEARNING.parallel", "true/false")),
    Case("negative_size", al_file("ACTIVE_LEARNING:\n  max_set_size: -5\n"),
         ("ACTIVE_LEARNING.max_set_size", "-5", ">= 1")),
    Case("zero_batch_size", mace_file("TRAINING:\n  batch_size: 0\n"),
         ("TRAINING.batch_size", ">= 1")),
    Case("negative_temperature", al_file("MD:\n  temperature: -300\n"),
         ("MD.temperature", "> 0")),
    Case("valid_ratio_one", al_file("ACTIVE_LEARNING:\n  valid_ratio: 1.0\n"),
         ("ACTIVE_LEARNING.valid_ratio", "< 1")),
    Case("ensemble_size_one", al_file("ACTIVE_LEARNING:\n  ensemble_size: 1\n"),
         ("ACTIVE_LEARNING.ensemble_size", ">= 2")),
    Case("bad_choice_thermostat", al_file("MD:\n  thermostat: Berendsen\n"),
         ("MD.thermostat", "'Berendsen'", "Langevin")),
    Case("npt_on_a_molecule", al_file("MD:\n  stat_ensemble: NPT\n"),
         ("MD.stat_ensemble", "periodic", "geometry.in", "NVT")),
    Case("npt_on_a_molecule_per_trajectory",
         al_file("ACTIVE_LEARNING:\n  num_trajectories: 2\nMD:\n  0:\n    temperature: 300\n"
                 "  1:\n    stat_ensemble: NPT\n    pressure: 1.0e9\n"),
         ("MD.1.stat_ensemble", "periodic", "geometry.in")),
    Case("bad_barostat", al_file("MD:\n  stat_ensemble: NPT\n  barostat: andersen\n"),
         ("MD.barostat", "'andersen'", "berendsen, mtk, isomtk")),
    Case("ml_ranks_in_one_process", al_file(AL_OK.replace("valid_ratio: 0.2", "valid_ratio: 0.2\n  ml_ranks: 2")),
         ("ACTIVE_LEARNING.ml_ranks", "1 rank(s)", "mpirun -n N")),
    Case("ml_ranks_above_ensemble", al_file(AL_OK.replace("valid_ratio: 0.2", "valid_ratio: 0.2\n  ml_ranks: 4")),
         ("ACTIVE_LEARNING.ml_ranks", "2 ensemble members", "at most ensemble_size + 1 = 3")),
    Case("md_index_beyond_num_trajectories",
         al_file("ACTIVE_LEARNING:\n  num_trajectories: 2\nMD:\n  0: {}\n  1: {}\n  2:\n    temperature: 500\n"),
         ("MD.2", "num_trajectories is 2")),
    Case("md_trajectory_without_entry",
         al_file("ACTIVE_LEARNING:\n  num_trajectories: 3\nMD:\n  0: {}\n  1: {}\n"),
         ("MD", "no entry for trajectory 2", "num_trajectories = 3")),
    Case("md_mixed_block_and_indices", al_file("MD:\n  0:\n    temperature: 300\n  temperature: 500\n"),
         ("MD.temperature", "not a trajectory index")),
    Case("md_entry_bad_key", al_file("MD:\n  0:\n    temprature: 300\n  1: {}\n"),
         ("MD.0.temprature", "Did you mean 'temperature'")),
    Case("bad_xtb_method", al_file("REFERENCE:\n  xtb:\n    method: GFN3\n"),
         ("REFERENCE.xtb.method", "GFN2-xTB")),
    Case("bad_initial_xtb_method", al_file("ACTIVE_LEARNING:\n  initial_xtb_method: foo\n"),
         ("ACTIVE_LEARNING.initial_xtb_method", "'foo'", "GFN2-xTB, GFN1-xTB")),
    Case("bad_calculator", al_file("REFERENCE:\n  calculator: vasp\n"),
         ("REFERENCE.calculator", "xtb")),
    Case("atomic_energies_unknown_symbol",
         mace_file("ARCHITECTURE:\n  atomic_energies:\n    H: -13.6\n    Hx: -1.0\n"),
         ("ARCHITECTURE.atomic_energies.Hx", "element symbol")),
    Case("unknown_architecture", mace_file("ARCHITECTURE:\n  model: MACEE\n"),
         ("ARCHITECTURE.model", "Did you mean 'MACE'")),
    Case("foundation_size_bogus",
         lambda f: write(f, "active_learning_settings.yaml",
                         "ACTIVE_LEARNING:\n  initial_sampling: mace-mp0\n  initial_foundational_size: huge\n"),
         ("ACTIVE_LEARNING.initial_foundational_size", "small, medium, large")),
    Case("not_utf8", lambda f: (f / "mace_settings.yaml").write_bytes(b"GENERAL:\n  name_exp: \xff\xfe\n"),
         ("mace_settings.yaml", "cannot read")),
    Case("missing_mace_settings", lambda f: (f / "mace_settings.yaml").unlink(), ("mace_settings.yaml", "not found")),
    Case("missing_al_settings", lambda f: (f / "active_learning_settings.yaml").unlink(),
         ("active_learning_settings.yaml", "not found")),
    Case("missing_geometry", lambda f: (f / "geometry.in").unlink(), ("geometry.in", "not found")),
    # a folder is read as a folder of geometry files (several systems): this one holds none
    Case("geometry_is_folder", lambda f: ((f / "geometry.in").unlink(), (f / "geometry.in").mkdir()),
         ("geometry.in", "no geometry files", "MISC.path_to_geometry")),
    Case("empty_geometry", geometry_file("# nothing here\n"), ("geometry.in", "no atoms")),
    Case("garbled_geometry", geometry_file("atom 0.0 abc 0.0 H\n"), ("geometry.in", "line 1")),
    Case("geometry_unknown_keyword", geometry_file(WATER + "atm 0 0 0 H\n"),
         ("geometry.in", "line 4", "Did you mean 'atom'")),
    Case("unknown_element", geometry_file(WATER + "atom 1 1 1 Xy\n"),
         ("geometry.in", "'Xy'", "unknown element")),
    Case("two_lattice_vectors", geometry_file("lattice_vector 5 0 0\nlattice_vector 0 5 0\n" + WATER),
         ("geometry.in", "exactly 3")),
    Case("aims_without_library", al_file("REFERENCE:\n  calculator: aims\n"),
         ("ACTIVE_LEARNING.aims_lib_path", "aims")),
    Case("aims_lib_path_missing_file",
         lambda f: (aims_setup(f, lib=False)), ("ACTIVE_LEARNING.aims_lib_path", "libaims.so", "no such file")),
    Case("species_dir_missing", without_species_dir, ("ACTIVE_LEARNING.species_dir", "no such folder")),
    Case("missing_control", lambda f: aims_setup(f, control=False), ("control.in", "not found")),
    Case("control_unknown_keyword",
         lambda f: (aims_setup(f), write(f, "control.in", CONTROL_OK + "sc_acuracy_rho 1e-5\n")),
         ("control.in", "line 4", "sc_acuracy_rho", "Did you mean 'sc_accuracy_rho'")),
    Case("control_without_xc", lambda f: (aims_setup(f), write(f, "control.in", "spin none\n")), ("control.in", "xc")),
    Case("control_bad_k_grid", lambda f: (aims_setup(f), write(f, "control.in", CONTROL_OK + "k_grid 4 4\n")),
         ("control.in", "k_grid", "three positive integers")),
    Case("element_missing_from_species_dir", lambda f: aims_setup(f, species=("H",)),
         ("08_O_default", "element O", "species")),
    Case("device_gpu_index_missing", mace_file(MACE_OK + "MISC:\n  device: cuda:99\n"),
         ("MISC.device", "'cuda:99'", "available here: cpu", "mace_settings.yaml")),
    Case("device_misspelt", mace_file(MACE_OK + "MISC:\n  device: gpu\n"),
         ("MISC.device", "'gpu'", "expected cpu, cuda, cuda:N")),
    Case("resume_from_missing", mace_file(MACE_OK + "TRAINING:\n  resume_from: old_run/checkpoints\n"),
         ("TRAINING.resume_from", "old_run/checkpoints", "no such checkpoint")),
    Case("cohesive_without_atomic_energies", mace_file(MACE_OK + "TRAINING:\n  energy_target: cohesive\n"),
         ("TRAINING.energy_target", "ARCHITECTURE.atomic_energies")),
    *([] if torch.cuda.is_available() else [
        Case("device_cuda_without_cuda", mace_file(MACE_OK + "MISC:\n  device: cuda\n"),
             ("MISC.device", "'cuda'", "without CUDA", "available here: cpu"))]),
    # exploration: metadynamics, biases, PLUMED, the absolute threshold
    Case("unknown_cv_kind", al_file(XTB_MD_AL + "MD:\n  metadynamics:\n    cvs: [{dihedral: [0, 1, 2]}]\n"),
         ("MD.metadynamics.cvs[0]", "unknown CV kind 'dihedral'", "torsion")),
    Case("cv_index_out_of_range", al_file(XTB_MD_AL + "MD:\n  metadynamics:\n    cvs: [{distance: [0, 7]}]\n"),
         ("MD.metadynamics.cvs[0]", "atom index 7 is out of range", "3 atoms")),
    Case("cv_wrong_atom_count", al_file(XTB_MD_AL + "MD:\n  metadynamics:\n    cvs: [{angle: [0, 1]}]\n"),
         ("MD.metadynamics.cvs[0]", "needs 3 atom indices")),
    Case("hill_width_not_positive",
         al_file(XTB_MD_AL + "MD:\n  metadynamics:\n    cvs: [{distance: [0, 1]}]\n    sigma: [0.0]\n"),
         ("MD.metadynamics.sigma[0]", "must be > 0")),
    Case("metadynamics_without_cvs", al_file(XTB_MD_AL + "MD:\n  metadynamics:\n    height: 0.1\n"),
         ("MD.metadynamics", "cvs")),
    Case("bias_on_reference_md", al_file(AL_OK.replace("MD:\n", "MD:\n  bias: uncertainty\n")),
         ("MD.bias", "initial_sampling: aimd", "xtb-md")),
    Case("metadynamics_on_reference_md_trajectory_0",
         al_file("ACTIVE_LEARNING:\n  num_trajectories: 2\nREFERENCE:\n  calculator: emt\nMD:\n  0:\n    "
                 "metadynamics:\n      cvs: [{distance: [0, 1]}]\n  1:\n    temperature: 600\n"),
         ("MD.0.metadynamics", "ab initio MD")),
    Case("plumed_without_module", al_file(XTB_MD_AL + "MD:\n  plumed: plumed.dat\n"),
         ("MD.plumed", "`plumed` Python module is not installed")),
    Case("absolute_threshold_without_value", al_file("ACTIVE_LEARNING:\n  threshold_mode: absolute\n"),
         ("ACTIVE_LEARNING.threshold_eV_per_A", "threshold_mode absolute")),
    Case("absolute_threshold_without_calibration_data",
         al_file("ACTIVE_LEARNING:\n  threshold_mode: absolute\n  threshold_eV_per_A: 0.05\n"
                 "  initial_train_dataset: given.xyz\n"),
         ("ACTIVE_LEARNING.threshold_mode", "validation labels", "initial_valid_dataset")),
    Case("upper_threshold_below_threshold",
         al_file("ACTIVE_LEARNING:\n  threshold_mode: absolute\n  threshold_eV_per_A: 0.05\n"
                 "  upper_threshold_eV_per_A: 0.01\n"),
         ("ACTIVE_LEARNING.upper_threshold_eV_per_A", "above threshold_eV_per_A")),
    Case("bad_cli_argument", args=("--frobnicate",), expect=("unrecognized arguments", "--frobnicate")),
    Case("bad_log_level", args=("--log-level", "LOUD"), expect=("--log-level", "invalid choice")),
    Case("run_dir_missing", run_dir="does_not_exist", expect=("does_not_exist", "does not exist")),
    Case("run_dir_is_file", lambda f: write(f.parent, "a_file", "x"), run_dir="a_file", expect=("a_file", "folder")),
]


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _run_case(case: Case, base: Path) -> Case:
    case_dir = base / case.name
    run_dir = case_dir / "run"
    run_dir.mkdir(parents=True)
    write(run_dir, "mace_settings.yaml", MACE_OK)
    write(run_dir, "active_learning_settings.yaml", AL_OK)
    write(run_dir, "geometry.in", WATER)
    case.setup(run_dir)
    before = _snapshot(case_dir)
    target = case_dir / case.run_dir if case.run_dir else run_dir
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([SCRIPT, "--run-dir", str(target), *case.args], cwd=case_dir, capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env)
    case.results = {"code": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout,
                    "created": sorted(set(_snapshot(case_dir)) - set(before)),
                    "changed": sorted(k for k, v in before.items() if _snapshot(case_dir).get(k) != v)}
    return case


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("bad_inputs")
    with ThreadPoolExecutor(max_workers=PARALLEL_CASES) as pool:
        done = list(pool.map(lambda case: _run_case(case, base), CASES))
    return {case.name: case.results for case in done}


def test_corpus_is_large_enough():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_naming_the_problem(case, results):
    result = results[case.name]
    stderr = result["stderr"]
    assert result["code"] == 2, f"exit {result['code']}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    for expected in case.expect:
        assert expected in stderr, f"{expected!r} not in:\n{stderr}"
    assert result["created"] == [] and result["changed"] == [], result
    assert result["stdout"] == ""


def test_error_message_is_one_paragraph(results):
    for name, result in results.items():
        if name.startswith("bad_cli") or name.startswith("bad_log"):
            continue  # argparse prints its usage line first
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result["stderr"])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_run_dir(tmp_path):
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    write(run_dir, "mace_settings.yaml", MACE_OK)
    run_dir.chmod(0)
    try:
        proc = subprocess.run([SCRIPT, "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        run_dir.chmod(0o755)
    assert proc.returncode == 2 and "locked" in proc.stderr and "Traceback" not in proc.stderr


def test_settings_errors_in_process_match_cli(tmp_path):
    """The same validation in-process raises SettingsError whose `where` is the dotted key."""
    from fhi_al.errors import SettingsError
    from fhi_al.settings import load_run_settings

    write(tmp_path, "mace_settings.yaml", MACE_OK)
    write(tmp_path, "active_learning_settings.yaml", "ACTIVE_LEARNING:\n  valid_ratio: 1.5\n")
    with pytest.raises(SettingsError) as info:
        load_run_settings(tmp_path)
    assert info.value.where == "ACTIVE_LEARNING.valid_ratio"
    assert "1.5" in str(info.value) and "active_learning_settings.yaml" in str(info.value)
