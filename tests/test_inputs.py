"""geometry.in and control.in reading, species_dir lookup, and round trips through ASE's FHI-aims writers."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from conftest import REPO_ROOT, VENV_BIN
from fhi_al import inputs
from fhi_al.cli import prepare_context
from fhi_al.errors import InputError

SETTINGS_FOLDER = Path(REPO_ROOT) / "settings"
SPECIES_TEXT = """\
################################################################################
  species        {symbol}
    nucleus             {z}
    mass                1.0
    l_hartree           4
    cut_pot             3.5  1.5  1.0
    radial_base         24 5.0
    radial_multiplier   1
    angular_grids       specified
      division   0.2421   50
      outer_grid  110
    valence      1  s   1.
    ion_occ      1  s   0.5
    hydro 1 s 0.85
#  "First tier" - improvements: -1014.90 meV to -62.69 meV
     hydro 2 s 2.1
     hydro 2 p 3.5
"""


def species_folder(folder: Path, symbols=("H", "C", "O")) -> Path:
    from ase.data import atomic_numbers

    folder.mkdir(parents=True, exist_ok=True)
    for symbol in symbols:
        z = atomic_numbers[symbol]
        (folder / f"{z:02d}_{symbol}_default").write_text(SPECIES_TEXT.format(symbol=symbol, z=z))
    return folder


def write_aims_geometry(atoms: Atoms, path: Path) -> None:
    from ase.io import write

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        write(path, atoms, format="aims")


def test_example_geometry_is_ethanol():
    atoms = inputs.read_geometry(SETTINGS_FOLDER / "geometry.in")
    reference = molecule("CH3CH2OH")
    assert atoms.get_chemical_formula() == reference.get_chemical_formula() == "C2H6O"
    assert np.allclose(atoms.positions, reference.positions, atol=1e-6)
    assert not atoms.pbc.any()


def test_geometry_round_trip_periodic_with_moments(tmp_path, rng):
    atoms = Atoms("Si2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]], cell=np.eye(3) * 5.43, pbc=True)
    atoms.rattle(0.05, rng=rng)
    atoms.set_initial_magnetic_moments([1.0, -1.0])
    write_aims_geometry(atoms, tmp_path / "geometry.in")
    back = inputs.read_geometry(tmp_path / "geometry.in")
    assert back.pbc.all() and np.allclose(back.cell, atoms.cell)
    assert np.allclose(back.positions, atoms.positions, atol=1e-8)
    assert np.allclose(back.get_initial_magnetic_moments(), [1.0, -1.0])


def test_geometry_comments_and_blank_lines(tmp_path):
    (tmp_path / "geometry.in").write_text("# water\natom 0 0 0.119 O # oxygen\n\natom 0 0.763 -0.477 H\n"
                                          "atom 0 -0.763 -0.477 H\n")
    atoms = inputs.read_geometry(tmp_path / "geometry.in")
    assert atoms.get_chemical_symbols() == ["O", "H", "H"]
    assert atoms.get_distance(0, 1) == pytest.approx(np.hypot(0.763, 0.596), abs=1e-6)


@pytest.mark.parametrize("text, message", [
    ("", "no atoms"), ("atom 0 0 0\n", "line 1"), ("atom 0 0 0 Q\n", "unknown element 'Q'"),
    ("atom 0 0 0 h\n", "Did you mean 'H'"), ("lattice_vector 1 0 0\natom 0 0 0 H\n", "exactly 3"),
    ("coords 0 0 0 H\n", "unknown geometry.in keyword"), ("ATOM 0 0 0 H\n", "Did you mean 'atom'"),
])
def test_geometry_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "geometry.in"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        inputs.read_geometry(path)
    assert info.value.where == str(path)


def test_control_values_are_typed(tmp_path):
    path = tmp_path / "control.in"
    path.write_text("xc  pbe0  # hybrid\nSPIN collinear\ndefault_initial_moment 1\ncharge -1.0\n"
                    "relativistic atomic_zora scalar\nk_grid 4 4 2\nsc_accuracy_rho 1d-5\nsc_iter_limit 80\n"
                    "vdw_correction_hirshfeld\nMD_clean_rotations .false.\noutput mulliken\noutput hirshfeld\n"
                    "species H\n  nucleus 1\n  hydro 1 s 0.85\n")
    control = inputs.read_control(path)
    p = control.parameters
    assert p["xc"] == "pbe0" and p["spin"] == "collinear" and p["default_initial_moment"] == 1
    assert p["charge"] == -1.0 and p["relativistic"] == ["atomic_zora", "scalar"] and p["k_grid"] == [4, 4, 2]
    assert p["sc_accuracy_rho"] == pytest.approx(1e-5) and p["sc_iter_limit"] == 80
    assert p["vdw_correction_hirshfeld"] is True and p["MD_clean_rotations"] is False
    assert p["output"] == ["mulliken", "hirshfeld"]
    assert control.had_species_blocks and "nucleus" not in p and control.lines["k_grid"] == 6


@pytest.mark.parametrize("text, message", [
    ("xc pbe\nsc_acuracy_rho 1e-5\n",
     "line 2: unknown FHI-aims keyword 'sc_acuracy_rho'. Did you mean 'sc_accuracy_rho'"),
    ("xc pbe\nxc pbe0\n", "appears again"), ("xc pbe\nspin maybe\n", "spin 'maybe'"),
    ("xc pbe\nk_grid 4 4 0\n", "three positive integers"), ("spin none\n", "no 'xc' line"),
    ("xc pbe\ncharge one\n", "charge needs a number"), ("xc\n", "needs a value"),
])
def test_control_errors(tmp_path, text, message):
    path = tmp_path / "control.in"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        inputs.read_control(path)
    assert info.value.where == str(path)


def test_species_files_named_like_fhi_aims(tmp_path):
    folder = species_folder(tmp_path / "light", ("H", "O"))
    assert inputs.species_file(folder, "O").name == "08_O_default"
    assert set(inputs.check_species(folder, ["O", "H", "H"])) == {"O", "H"}
    with pytest.raises(InputError, match="element C .expected 06_C_default. in species_dir"):
        inputs.check_species(folder, ["C", "H"])
    with pytest.raises(InputError, match="no such folder"):
        inputs.species_file(tmp_path / "nowhere", "H")


def test_control_round_trip_through_ase_writer(tmp_path):
    """Parameters -> ase.io.aims.write_control (with species blocks) -> parsed back unchanged."""
    from ase.io.aims import write_control

    species = species_folder(tmp_path / "species")
    control = inputs.read_control(SETTINGS_FOLDER / "control.in")
    params = inputs.aims_parameters(control, species_dir=species)
    assert params["compute_forces"] is True and params["species_dir"] == str(species)
    atoms = molecule("CH3CH2OH")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        write_control(tmp_path / "control.in", atoms, params)
    written = (tmp_path / "control.in").read_text()
    assert written.count("species ") >= 3 and "nucleus             8" in written
    back = inputs.read_control(tmp_path / "control.in")
    assert back.had_species_blocks
    expected = {k: v for k, v in params.items() if k != "species_dir"}
    assert back.parameters.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert back.parameters[key] == pytest.approx(value), key
        else:
            assert back.parameters[key] == value, key


def test_prepare_context_for_aims_reads_control_and_species(tmp_path):
    species = species_folder(tmp_path / "species")
    (tmp_path / "libaims.so").write_text("")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("geometry.in", "control.in", "mace_settings.yaml"):
        (run / name).write_text((SETTINGS_FOLDER / name).read_text())
    (run / "active_learning_settings.yaml").write_text(
        f"ACTIVE_LEARNING:\n  aims_lib_path: {tmp_path / 'libaims.so'}\n  species_dir: {species}\n")
    context = prepare_context(run)
    assert context.settings.calculator == "aims" and context.control["xc"] == "pbe"
    assert context.control["species_dir"] == str(species) and len(context.geometry) == 9
    assert sorted(os.listdir(run)) == ["active_learning_settings.yaml", "control.in", "geometry.in",
                                       "mace_settings.yaml"]


def test_every_console_script_runs_procedures_of_the_static_table():
    import tomllib

    from fhi_al import cli

    scripts = tomllib.loads((Path(REPO_ROOT) / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == sorted(cli.SCRIPTS)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == "fhi_al.cli" and f'run_procedures("{name}"' in Path(cli.__file__).read_text(), name
        assert callable(getattr(cli, function)) and cli.SCRIPTS[name], name
    for procedure in {p for procedures in cli.SCRIPTS.values() for p in procedures}:
        assert callable(procedure.load())  # every procedure of the table exists in this version


def test_cli_logs_settings_notes_into_the_log_file(tmp_path):
    """An accepted-but-unused key of the original tool is noted in the procedure's log (EMT: fast)."""
    (tmp_path / "geometry.in").write_text("atom 0 0 0 Cu\natom 0 0 2.5 Cu\n")
    (tmp_path / "mace_settings.yaml").write_text("TRAINING:\n  swa: False\n")
    (tmp_path / "active_learning_settings.yaml").write_text("REFERENCE:\n  calculator: emt\n")
    proc = subprocess.run([os.path.join(VENV_BIN, "FHI_AL-atomic-energies"), "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log_text = (tmp_path / "logs" / "atomic_energies.log").read_text()
    assert "TRAINING.swa" in log_text and "does not use" in log_text
