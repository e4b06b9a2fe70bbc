"""Several systems in one run: the input forms of MISC.path_to_geometry / path_to_control, their bad inputs
through the console script (exit 2, key or file named), the system carried by every label, per-system
thresholds, the aims reference's control per system, and an end-to-end two-molecule run with a kill."""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import read

from asi_build import shared_tmp, standin_lib, write_species_dir  # noqa: F401,F811 - fixtures
from conftest import VENV_BIN
from fhi_al.data.store import DatasetStore, with_provenance
from fhi_al.errors import InputError
from fhi_al.labeling import SYSTEM_KEY, labelled_atoms
from fhi_al.labeling.messages import atoms_from_message, atoms_message
from fhi_al.procedures.active_learning import trajectory_starts
from fhi_al.procedures.atomic_energies import run_elements
from fhi_al.references import compute_label, make_reference
from fhi_al.systems import load_systems, system_of, with_controls
from fhi_al.uncertainty import CROSSED, NONE, SystemThresholds, ThresholdTracker
from workflow import kill_when, ledger_ids, make_run_folder, run_cli, start_cli, stored_frames

CONTROL = "xc pbe\nrelativistic atomic_zora scalar\n"
SCRIPT = os.path.join(VENV_BIN, "FHI_AL-atomic-energies")


def geometry_text(atoms: Atoms) -> str:
    """`atoms` in FHI-aims geometry.in format, written by ASE's aims writer."""
    from ase.io.aims import write_aims

    buffer = io.StringIO()
    write_aims(buffer, atoms)
    return buffer.getvalue()


def two_geometries(folder: Path) -> Path:
    """geometries/ with water (b_water.in), methane (a_methane.in) and a file that is not a geometry."""
    geometries = folder / "geometries"
    geometries.mkdir(parents=True)
    (geometries / "b_water.in").write_text(geometry_text(molecule("H2O")))
    (geometries / "a_methane.in").write_text(geometry_text(molecule("CH4")))
    (geometries / "notes.txt").write_text("not a geometry\n")
    return geometries


# ----------------------------------------------------------------------------------------- input forms
def test_a_single_file_is_the_only_system(tmp_path):
    (tmp_path / "geometry.in").write_text(geometry_text(molecule("H2O")))
    (system,) = load_systems("geometry.in", tmp_path)
    assert (system.index, system.name, len(system.atoms)) == (0, "geometry", 3)
    assert system.atoms.info[SYSTEM_KEY] == "geometry"


def test_a_folder_gives_every_in_file_in_sorted_order(tmp_path):
    two_geometries(tmp_path)
    systems = load_systems("geometries", tmp_path)
    assert [(s.index, s.name, s.atoms.get_chemical_formula()) for s in systems] == [
        (0, "a_methane", "CH4"), (1, "b_water", "H2O")]
    assert [s.atoms.info[SYSTEM_KEY] for s in systems] == ["a_methane", "b_water"]


def test_a_mapping_keeps_its_indices_and_unique_names(tmp_path):
    for sub, atoms in (("one", molecule("H2O")), ("two", molecule("NH3"))):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "geometry.in").write_text(geometry_text(atoms))
    systems = load_systems({3: "one/geometry.in", 7: str(tmp_path / "two" / "geometry.in")}, tmp_path)
    assert [(s.index, s.name) for s in systems] == [(3, "geometry_3"), (7, "geometry_7")]
    assert systems[1].atoms.get_chemical_formula() == "H3N"


def test_one_control_for_all_or_one_per_system(tmp_path):
    two_geometries(tmp_path)
    species = write_species_dir(tmp_path / "species", ["H", "C", "O"])
    systems = load_systems("geometries", tmp_path)
    (tmp_path / "control.in").write_text(CONTROL)
    shared = with_controls(systems, "control.in", tmp_path, species_dir=species)
    assert all(s.control["xc"] == "pbe" and s.control["species_dir"] == str(species) for s in shared)
    (tmp_path / "methane.in").write_text(CONTROL + "sc_iter_limit 77\n")
    (tmp_path / "water.in").write_text(CONTROL.replace("pbe", "pw-lda"))
    own = with_controls(systems, {0: "methane.in", 1: "water.in"}, tmp_path, species_dir=species)
    assert own[0].control["sc_iter_limit"] == 77 and "sc_iter_limit" not in own[1].control
    assert own[1].control["xc"] == "pw-lda"


def test_control_errors_name_the_key_or_file(tmp_path):
    two_geometries(tmp_path)
    species = write_species_dir(tmp_path / "species", ["H", "C", "O"])
    systems = load_systems("geometries", tmp_path)
    (tmp_path / "control.in").write_text(CONTROL)
    with pytest.raises(InputError, match=r"MISC.path_to_control.*index 2 has no geometry"):
        with_controls(systems, {0: "control.in", 1: "control.in", 2: "control.in"}, tmp_path, species_dir=species)
    with pytest.raises(InputError, match=r"MISC.path_to_control.*no control file for system 1"):
        with_controls(systems, {0: "control.in"}, tmp_path, species_dir=species)
    (tmp_path / "blocks.in").write_text(CONTROL + "species H\n  nucleus 1\nspecies O\n  nucleus 8\n")
    with pytest.raises(InputError, match=r"blocks.in.*no species block for C"):
        with_controls(systems, "blocks.in", tmp_path, species_dir=species)
    water_only = [s for s in systems if s.name == "b_water"]
    assert with_controls(water_only, "blocks.in", tmp_path, species_dir=species)[0].control["xc"] == "pbe"


def test_a_frame_without_system_belongs_to_the_only_system(tmp_path):
    (tmp_path / "geometry.in").write_text(geometry_text(molecule("H2O")))
    systems = load_systems("geometry.in", tmp_path)
    assert system_of(molecule("H2O"), systems) == "geometry"
    two_geometries(tmp_path)
    with pytest.raises(ValueError):
        system_of(molecule("H2O"), load_systems("geometries", tmp_path))


# ------------------------------------------------------------------------------ bad inputs, console script
def run_script(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, "--run-dir", str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def settings_files(folder: Path, *, misc: str = "", aims: Path | None = None) -> None:
    (folder / "mace_settings.yaml").write_text("GENERAL:\n  name_exp: systems\nARCHITECTURE:\n  model: MACE\n")
    active = "ACTIVE_LEARNING:\n  ensemble_size: 2\n"
    reference = "REFERENCE:\n  calculator: emt\n"
    if aims is not None:
        (aims / "libaims.so").write_text("")
        species = write_species_dir(aims / "species", ["H", "C", "O"])
        active += f"  aims_lib_path: {aims / 'libaims.so'}\n  species_dir: {species}\n"
        reference = ""
    (folder / "active_learning_settings.yaml").write_text(active + reference + (f"MISC:\n{misc}" if misc else ""))


def assert_bad_input(folder: Path, *expected: str) -> None:
    before = sorted(p.name for p in folder.iterdir())
    result = run_script(folder)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == before, "a bad input wrote something"


@pytest.mark.parametrize("case", ["empty_folder", "two_lattice_vectors", "control_index_without_geometry",
                                  "control_species_mismatch", "fewer_samples_than_systems"])
def test_bad_systems_exit_2_naming_key_or_file(tmp_path, case):
    folder = tmp_path / "run"
    folder.mkdir()
    if case == "empty_folder":
        (folder / "geometries").mkdir()
        (folder / "geometries" / "README").write_text("nothing here\n")
        settings_files(folder, misc="  path_to_geometry: geometries\n")
        assert_bad_input(folder, "geometries", "no geometry files", "*.in")
    elif case == "two_lattice_vectors":
        two_geometries(folder)
        text = "lattice_vector 5 0 0\nlattice_vector 0 5 0\n" + geometry_text(molecule("H2O"))
        (folder / "geometries" / "b_water.in").write_text(text)
        settings_files(folder, misc="  path_to_geometry: geometries\n")
        assert_bad_input(folder, "b_water.in", "2 lattice_vector line(s)", "exactly 3")
    elif case == "control_index_without_geometry":
        two_geometries(folder)
        (folder / "control.in").write_text(CONTROL)
        settings_files(folder, aims=tmp_path, misc="  path_to_geometry: geometries\n  path_to_control:\n"
                                                   "    0: control.in\n    1: control.in\n    5: control.in\n")
        assert_bad_input(folder, "MISC.path_to_control", "index 5 has no geometry")
    elif case == "fewer_samples_than_systems":
        two_geometries(folder)
        settings_files(folder, misc="  path_to_geometry: geometries\n")
        path = folder / "active_learning_settings.yaml"
        path.write_text(path.read_text().replace("ensemble_size: 2\n", "ensemble_size: 2\n  n_samples: 1\n"))
        assert_bad_input(folder, "ACTIVE_LEARNING.n_samples", "2 systems")
    else:
        two_geometries(folder)
        (folder / "control.in").write_text(CONTROL + "species H\nspecies O\n")
        settings_files(folder, aims=tmp_path, misc="  path_to_geometry: geometries\n")
        assert_bad_input(folder, "control.in", "no species block for C")


# ---------------------------------------------------------------------------------- labels carry the system
def test_the_system_survives_label_store_and_messages(tmp_path):
    frame = molecule("H2O")
    frame.info[SYSTEM_KEY] = "water"
    back = atoms_from_message(atoms_message(frame))  # a frame sent to a reference group
    assert back.info[SYSTEM_KEY] == "water"
    labelled = labelled_atoms(back, energy_eV=-1.0, forces_eV_per_A=np.zeros((3, 3)), reference="xtb",
                              label_id="initial-t1-s5")
    stored = with_provenance(labelled, procedure="initial", trajectory=1, md_step=5)
    store = DatasetStore(tmp_path / "data")
    store.append("initial/train_x", stored)
    (read_back,) = store.read("initial/train_x")
    assert read_back.info[SYSTEM_KEY] == "water"
    assert "system=water" in (tmp_path / "data" / "initial" / "train_x.xyz").read_text()


def test_elements_and_trajectory_starts_cover_every_system(tmp_path):
    two_geometries(tmp_path)
    systems = load_systems("geometries", tmp_path)
    assert sorted(run_elements(SimpleNamespace(systems=systems))) == ["C", "H", "O"]
    starts = trajectory_starts(systems, 5)
    assert [s.info[SYSTEM_KEY] for s in starts] == ["a_methane", "b_water", "a_methane", "b_water", "a_methane"]


# ------------------------------------------------------------------------------------------- thresholds
def tracker() -> ThresholdTracker:
    return ThresholdTracker(0.0, warmup_checks=2, window=10)


def test_per_system_thresholds_follow_each_systems_scale():
    """A molecule near 0.01 eV/Å and a crystal near 0.1 eV/Å: per system, each crosses its own average;
    shared, the molecule never crosses and the crystal always does."""
    per_system, shared = SystemThresholds(tracker, per_system=True), SystemThresholds(tracker, per_system=False)
    for thresholds in (per_system, shared):
        for value, system in ((0.01, "molecule"), (0.1, "crystal")) * 3:
            thresholds.check(value, trajectory=system, system=system)
    assert per_system.check(0.012, trajectory=0, system="molecule").kind == CROSSED
    assert per_system.check(0.09, trajectory=1, system="crystal").kind == NONE
    assert shared.check(0.012, trajectory=0, system="molecule").kind == NONE
    assert shared.check(0.09, trajectory=1, system="crystal").kind == CROSSED
    restored = SystemThresholds.from_state_dict(json.loads(json.dumps(per_system.state_dict())), tracker,
                                                per_system=True)
    assert restored.tracker("crystal").threshold == per_system.tracker("crystal").threshold
    assert restored.tracker("molecule").n_checks == per_system.tracker("molecule").n_checks
    with pytest.raises(ValueError, match="one threshold per system"):
        SystemThresholds.from_state_dict(per_system.state_dict(), tracker, per_system=False)


def test_a_single_tracker_record_becomes_the_only_systems():
    old = tracker()
    for value in (0.1, 0.2, 0.3):
        old.check(value)
    restored = SystemThresholds.from_state_dict(old.state_dict(), tracker, per_system=False)
    assert restored.tracker("geometry").threshold == pytest.approx(old.threshold)


# ------------------------------------------------------------------------------- aims: control per system
def test_aims_reference_uses_each_systems_control(standin_lib, shared_tmp):
    from fhi_al.parallel import world

    species = write_species_dir(shared_tmp / "species", ["Ar"])
    controls = {"small": {"xc": "pbe", "sc_iter_limit": 100}, "large": {"xc": "pbe", "sc_iter_limit": 77}}
    calc = make_reference(name="aims", control={"xc": "pbe", "sc_iter_limit": 55}, species_dir=species,
                          aims_lib_path=standin_lib, run_dir=shared_tmp / "run", comm=world(),
                          system_controls=controls)
    control_in = shared_tmp / "run" / "aims" / "control.in"
    try:
        seen = []
        for system in ("small", "large", None, "small"):
            atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.0, 0, 0], [1.5, 2.6, 0]])
            if system is not None:
                atoms.info[SYSTEM_KEY] = system
            energy, _ = compute_label(calc, atoms)
            assert np.isfinite(energy)
            seen.append(next(line.split()[1] for line in control_in.read_text().splitlines()
                             if line.startswith("sc_iter_limit")))
        assert seen == ["100", "77", "55", "100"]  # the same atoms, restarted with each system's control.in
    finally:
        calc.close()


# ------------------------------------------------------------------------------------------ end to end
def system_counts(frames) -> collections.Counter:
    return collections.Counter(atoms.info.get(SYSTEM_KEY) for atoms in frames)


@pytest.mark.slow  # ~80 s on 2 busy cores
def test_two_molecules_end_to_end_with_a_kill(tmp_path):
    """Water and methane with GFN2-xTB: the initial dataset is killed after a few labels and resumed; every
    label is stored once, both systems are in every dataset, trajectories alternate over the systems and
    the per-system metrics are written."""
    folder = make_run_folder(tmp_path / "run", al={"MISC": {"path_to_geometry": "geometries"},
                                                   "ACTIVE_LEARNING": {"max_MD_steps": 60}})
    (folder / "geometry.in").unlink()
    two_geometries(folder)
    process = start_cli("FHI_AL-initial-ds", folder)
    assert kill_when(process, lambda: len(ledger_ids(folder)) >= 5), "the run ended before the kill"
    before_kill = set(ledger_ids(folder))
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = stored_frames(folder)
    ids = [atoms.info["label_id"] for atoms in frames]
    assert len(ids) == len(set(ids)), "a label was stored twice"
    assert before_kill <= set(ids), f"labels lost: {before_kill - set(ids)}"
    initial = [atoms for atoms in frames if atoms.info["procedure"] == "initial"]
    counts = system_counts(initial)
    assert set(counts) == {"a_methane", "b_water"} and abs(counts["a_methane"] - counts["b_water"]) <= 1
    for atoms in frames:  # each label's structure is its system's
        assert atoms.get_chemical_formula() == {"a_methane": "CH4", "b_water": "H2O"}[atoms.info[SYSTEM_KEY]]
    for path in (folder / "data" / "initial").glob("*.xyz"):  # split data: every member sees both systems
        assert set(system_counts(read(path, index=":", format="extxyz"))) == {"a_methane", "b_water"}, path
    al_frames = [atoms for atoms in frames if atoms.info["procedure"] == "al"]
    for atoms in al_frames:  # trajectory i runs system i mod 2
        assert atoms.info[SYSTEM_KEY] == ["a_methane", "b_water"][atoms.info["trajectory"] % 2]
    metrics = json.loads((folder / "results" / "per_system_metrics.json").read_text())
    assert {entry["stage"] for entry in metrics} == {"initial", "al"}
    assert all(set(entry["forces_mae"]) == {"a_methane", "b_water"} for entry in metrics)
    assert all(value > 0 for value in metrics[-1]["forces_mae"].values())
    assert (folder / "results" / "initial_forces_per_system.png").exists()
    assert (folder / "results" / "al_forces_per_system.png").exists()
    log = (folder / "logs" / "initial_dataset.log").read_text()
    assert "Resuming the initial dataset" in log and "validation force MAE per system" in log


@pytest.mark.slow  # ~60 s on 2 busy cores
def test_normal_modes_take_one_hessian_per_system(tmp_path):
    """Normal-mode sampling of two molecules: each system is relaxed and its Hessian taken once (6 calls per
    atom), kept in its own file; shared initial sets hold frames of both systems."""
    folder = make_run_folder(tmp_path / "run", al={"MISC": {"path_to_geometry": "geometries"}, "ACTIVE_LEARNING": {
        "initial_sampling": "normal-modes", "initial_member_data": "shared", "max_initial_epochs": 2}})
    (folder / "geometry.in").unlink()
    two_geometries(folder)
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted(p.name for p in (folder / "restart" / "initial_ds").glob("hessian*.npz"))
    assert records == ["hessian_a_methane.npz", "hessian_b_water.npz"]
    purposes = collections.Counter(json.loads(line).get("purpose") for line in
                                   (folder / "logs" / "reference_ledger.jsonl").read_text().splitlines())
    assert purposes["hessian"] == 6 * (5 + 3)
    frames = stored_frames(folder)
    assert set(system_counts(frames)) == {"a_methane", "b_water"}
    for atoms in frames:
        assert atoms.get_chemical_formula() == {"a_methane": "CH4", "b_water": "H2O"}[atoms.info[SYSTEM_KEY]]


def test_npt_entries_are_checked_against_the_systems_their_trajectories_start_from():
    """Trajectory i starts from system i mod n: an NPT entry needs that system periodic; the plain block and
    entry 0 (also the initial dataset's MD) need every system periodic."""
    from types import SimpleNamespace

    from ase.build import bulk, molecule

    from fhi_al.cli import check_md_ensemble
    from fhi_al.systems import System

    systems = [System(0, "cu", bulk("Cu", "fcc", a=3.61, cubic=True)), System(1, "water", molecule("H2O"))]

    def settings(entries):
        md = {key: SimpleNamespace(stat_ensemble=ensemble) for key, ensemble in entries.items()}
        return SimpleNamespace(al=SimpleNamespace(md_entries=lambda: list(md.items())))

    check_md_ensemble(settings({"MD.0": "NVT", "MD.1": "NVT", "MD.2": "NPT"}), systems)  # trajectory 2: Cu
    for entries, where in [({"MD.0": "NVT", "MD.1": "NPT"}, "MD.1.stat_ensemble"),
                           ({"MD.0": "NPT", "MD.1": "NVT"}, "MD.0.stat_ensemble"),
                           ({"MD": "NPT"}, "MD.stat_ensemble")]:
        with pytest.raises(InputError, match="water") as error:
            check_md_ensemble(settings(entries), systems)
        assert error.value.where == where
