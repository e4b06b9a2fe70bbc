"""Stress of periodic structures end to end: references (EMT, GFN-xTB, the ASI stand-in) give (1/V) dE/dstrain,
labels and datasets carry REF_stress in mace's layout, MACE trains on it (GENERAL.compute_stress), exported models
and the ensemble predict it, and the settings refuse stress where it cannot be had (exit 2)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read

from asi_build import shared_tmp, standin_lib, write_species_dir  # noqa: F401 - fixtures
from conftest import VENV_BIN
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.architectures.mace.model import KEYSPEC
from fhi_al.data.store import DatasetStore, with_provenance
from fhi_al.ensemble import EnsembleCalculator
from fhi_al.errors import InputError
from fhi_al.labeling import REF_STRESS_KEY, label_from_results, label_structure
from fhi_al.procedures.sampling import GuardedReference
from fhi_al.references import compute_label, compute_reference_label, make_reference
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer

STRAIN_STEP = 1e-5
TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, radial_MLP=[16])
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """`atoms` deformed by the symmetric strain tensor (cell and positions together)."""
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return moved


def strain_derivative(energy_of, atoms: Atoms, step: float = STRAIN_STEP) -> np.ndarray:
    """(1/V) dE/dstrain by central differences, Voigt order: the stress in ASE's convention."""
    stress = np.zeros(6)
    for k, (i, j) in enumerate(VOIGT):
        strain = np.zeros((3, 3))
        strain[i, j] += step / 2
        strain[j, i] += step / 2
        stress[k] = (energy_of(strained(atoms, strain)) - energy_of(strained(atoms, -strain))) / (2 * step)
    return stress / atoms.get_volume()


def copper(seed: int, *, rattle_A: float = 0.05, strain: float = 0.02) -> Atoms:
    """A rattled, randomly strained 4-atom fcc Cu cell (EMT's metal)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    random = rng.uniform(-strain, strain, size=(3, 3))
    atoms = strained(atoms, (random + random.T) / 2)
    atoms.positions += rng.normal(scale=rattle_A, size=atoms.positions.shape)
    return atoms


def silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1] += [0.04, -0.03, 0.02]
    return strained(atoms, np.array([[0.01, 0.004, 0], [0.004, -0.005, 0], [0, 0, 0.002]]))


def assert_stress_close(actual, expected, *, atol: float, rtol: float = 1e-4) -> None:
    assert np.abs(expected).max() > 20 * atol, "the structure must be under a measurable stress"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --- references ------------------------------------------------------------------------------------------
def test_emt_stress_is_the_strain_derivative_and_molecules_get_none():
    calc = make_reference(name="emt")
    atoms = copper(1)
    label = compute_reference_label(calc, atoms)
    assert label.stress_eV_per_A3.shape == (6,)
    assert_stress_close(label.stress_eV_per_A3, strain_derivative(lambda a: compute_label(calc, a)[0], atoms),
                        atol=1e-7)
    assert compute_reference_label(calc, molecule("H2O")).stress_eV_per_A3 is None
    slab = atoms.copy()
    slab.pbc = [True, True, False]  # not periodic in all directions: no stress
    assert compute_reference_label(calc, slab).stress_eV_per_A3 is None


@pytest.mark.parametrize("method", ["GFN1-xTB", "GFN2-xTB"])
def test_xtb_stress_of_bulk_silicon_is_the_strain_derivative(method):
    calc = make_reference(name="xtb", options={"method": method, "accuracy": 0.01})
    atoms = silicon()
    stress = compute_reference_label(calc, atoms).stress_eV_per_A3
    assert_stress_close(stress, strain_derivative(lambda a: compute_label(calc, a)[0], atoms, step=1e-4),
                        atol=2e-6, rtol=1e-4)


def test_pyscf_refuses_a_periodic_structure_clearly():
    calc = make_reference(name="pyscf", options={"basis": "sto-3g"})
    assert "stress" not in calc.implemented_properties
    with pytest.raises(InputError, match="REFERENCE.calculator.*molecules"):
        compute_label(calc, bulk("Si", "diamond", a=5.43))


def ar_in_a_box() -> Atoms:
    """A compact Ar cluster of the stand-in in a periodic box (the stand-in's pair sum has no images)."""
    positions = np.array([[0, 0, 0], [3.0, 0, 0], [1.5, 2.6, 0], [1.5, 0.87, 2.45]])
    positions += np.random.default_rng(3).normal(scale=0.1, size=positions.shape) + 4.0
    return Atoms("Ar4", positions=positions, cell=[[11.0, 0.3, 0], [0, 12.0, 0], [0.2, 0, 10.5]], pbc=True)


def test_aims_standin_stress_is_the_strain_derivative(standin_lib, shared_tmp):
    from fhi_al.parallel import world

    species = write_species_dir(shared_tmp / "species", ["Ar"])
    calc = make_reference(name="aims", control={"xc": "pbe"}, species_dir=species, aims_lib_path=standin_lib,
                          run_dir=shared_tmp / "run", comm=world())
    try:
        assert "stress" in calc.implemented_properties  # the stand-in exports ASI_stress
        atoms = ar_in_a_box()
        stress = compute_reference_label(calc, atoms).stress_eV_per_A3
        assert_stress_close(stress, strain_derivative(lambda a: compute_label(calc, a)[0], atoms, step=1e-4),
                            atol=1e-8, rtol=1e-5)
        assert "compute_analytical_stress" in (shared_tmp / "run" / "aims" / "control.in").read_text()
    finally:
        calc.close()


def test_guarded_reference_passes_the_stress_through():
    guarded = GuardedReference(make_reference(name="emt"), timeout_s=None)
    assert "stress" in guarded.implemented_properties
    atoms = copper(2)
    atoms.calc = guarded
    np.testing.assert_allclose(atoms.get_stress(), compute_reference_label(make_reference(name="emt"), atoms)
                               .stress_eV_per_A3, rtol=1e-12)
    pyscf = GuardedReference(make_reference(name="pyscf"), timeout_s=None)
    assert "stress" not in pyscf.implemented_properties


# --- labels and datasets ---------------------------------------------------------------------------------
def test_ref_stress_round_trip_through_the_store_and_mace_reads_it(tmp_path):
    from mace.data import config_from_atoms

    atoms = copper(4)
    result = label_structure(make_reference(name="emt"), "initial-t0-s0", atoms)
    expected = compute_reference_label(make_reference(name="emt"), atoms).stress_eV_per_A3
    np.testing.assert_array_equal(result.stress_eV_per_A3, expected)
    store = DatasetStore(tmp_path)
    store.append("initial/train", with_provenance(result.atoms, procedure="initial", trajectory=0, md_step=0))
    store.append("initial/train", with_provenance(label_structure(make_reference(name="emt"), "initial-t0-s1",
                                                                  molecule("H2O")).atoms,
                                                  procedure="initial", trajectory=0, md_step=1))
    back = store.read("initial/train")
    np.testing.assert_allclose(back[0].info[REF_STRESS_KEY], expected, rtol=1e-12)
    assert REF_STRESS_KEY not in back[1].info
    # mace's own reader (extxyz through ASE, its KeySpecification with REF_stress) sees the same tensor
    config = config_from_atoms(read(store.path("initial/train"), index=0), key_specification=KEYSPEC)
    np.testing.assert_allclose(config.properties["stress"], expected, rtol=1e-12)


def test_label_from_md_results_keeps_the_stress():
    atoms = copper(5)
    calc = make_reference(name="emt")
    atoms.calc = calc
    atoms.get_stress()
    result = label_from_results("initial-t0-s5", atoms, dict(calc.results), reference="emt")
    np.testing.assert_array_equal(result.stress_eV_per_A3, calc.results["stress"])
    bad = dict(calc.results, stress=np.full(6, np.nan))
    assert not label_from_results("initial-t0-s6", atoms, bad, reference="emt").ok


# --- training and models ---------------------------------------------------------------------------------
def labelled_copper(seeds) -> list[Atoms]:
    emt = make_reference(name="emt")
    return [label_structure(emt, f"test-{seed}", copper(seed)).atoms for seed in seeds]


@pytest.fixture(scope="module")
def copper_data():
    return labelled_copper(range(10, 18)), labelled_copper(range(30, 34))


def stress_trainer(folder: Path, **overrides) -> Trainer:
    settings = dict(name_exp="stress", hypers=TINY, batch_size=4, valid_batch_size=4, scheduler="none", lr=0.01,
                    ema_decay=0.9, energy_weight=1.0, forces_weight=10.0, compute_stress=True, stress_weight=50.0,
                    virials_weight=2.0)
    return Trainer(TrainingConfig(**{**settings, **overrides}), folder)


def test_loss_adds_mace_stress_and_virials_terms(tmp_path, copper_data):
    trainer = stress_trainer(tmp_path)
    member = trainer.create_member("stress_1", 1, copper_data[0], copper_data[1])
    valid = copper_data[1]
    targets, pred = trainer.predict_labelled(member, valid)
    natoms = np.array([len(a) for a in valid])
    ref_s = np.stack([a.info[REF_STRESS_KEY] for a in valid])
    pred_s = np.stack([p[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] for p in pred["stress"].numpy()])
    full = pred["stress"].numpy() - np.stack([ref_3x3(s) for s in ref_s])
    volumes = np.array([a.get_volume() for a in valid])
    de = (pred["energy"].numpy() - [a.info["REF_energy"] for a in valid]) / natoms
    df = pred["forces"].numpy() - np.concatenate([a.arrays["REF_forces"] for a in valid])
    expected = (np.mean(de**2) + 10.0 * np.mean(df**2) + 50.0 * np.mean(full**2)
                + 2.0 * np.mean((full * (volumes / natoms)[:, None, None]) ** 2))
    metrics = trainer.evaluate(member, valid)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-10)
    assert metrics["stress_mae_meV_per_A3"] == pytest.approx(1e3 * np.mean(np.abs(full)), rel=1e-10)
    assert np.abs(pred_s - ref_s).max() > 0  # the untrained model is wrong: the check is not vacuous


def ref_3x3(voigt: np.ndarray) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(voigt)


def test_training_on_stress_lowers_the_stress_error(tmp_path, copper_data):
    trainer = stress_trainer(tmp_path)
    member = trainer.create_member("stress_1", 1, copper_data[0], copper_data[1])
    before = trainer.evaluate(member, member.train_atoms)["stress_mae_meV_per_A3"]
    trainer.train(member, 25)
    after = trainer.evaluate(member, member.train_atoms)["stress_mae_meV_per_A3"]
    assert after < 0.5 * before
    history = (tmp_path / "results" / "stress_1_history.jsonl").read_text()
    assert "stress_mae_meV_per_A3" in history


def test_exported_mace_and_ensemble_stress_are_strain_derivatives(tmp_path, copper_data):
    from mace.calculators import MACECalculator

    trainer = stress_trainer(tmp_path)
    members = [trainer.create_member(f"stress_{seed}", seed, copper_data[0], copper_data[1]) for seed in (1, 2)]
    for member in members:
        trainer.train(member, 2)
    path = trainer.export(members[0])
    atoms = copper(40)
    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")

    def energy(structure, calculator=calc):
        structure.calc = calculator
        return structure.get_potential_energy()

    probe = atoms.copy()
    probe.calc = calc
    assert_stress_close(probe.get_stress(), strain_derivative(energy, atoms, step=1e-4), atol=1e-8, rtol=1e-5)
    ensemble = EnsembleCalculator(members)
    probe.calc = ensemble
    stress = probe.get_stress()
    assert_stress_close(stress, strain_derivative(lambda s: energy(s, EnsembleCalculator(members)), atoms,
                                                  step=1e-4), atol=1e-8, rtol=1e-5)
    assert ensemble.results["stress_comm"].shape == (2, 6)


def test_engine_refuses_stress_for_an_architecture_without_it(tmp_path):
    from fhi_al.architectures.registry import hypers_class

    config = TrainingConfig(model="aenet", hypers=hypers_class("aenet")(), compute_stress=True)
    with pytest.raises(InputError, match="GENERAL.compute_stress.*aenet"):
        Trainer(config, tmp_path)


# --- settings: refusals with exit status 2 ---------------------------------------------------------------
CU_GEOMETRY = "".join(f"lattice_vector {' '.join(map(str, row))}\n" for row in 3.61 * np.eye(3)) + "".join(
    f"atom {x} {y} {z} Cu\n" for x, y, z in 1.805 * np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]]))
WATER_GEOMETRY = "atom 0 0 0.119 O\natom 0 0.763 -0.477 H\natom 0 -0.763 -0.477 H\n"


def run_with(folder: Path, *, model="MACE", calculator="emt", geometry=CU_GEOMETRY, compute_stress=True,
             extra_mace="") -> subprocess.CompletedProcess:
    folder.mkdir()
    (folder / "mace_settings.yaml").write_text(f"GENERAL:\n  name_exp: s\n  compute_stress: "
                                               f"{str(compute_stress).lower()}\nARCHITECTURE:\n  model: {model}\n"
                                               f"{extra_mace}")
    (folder / "active_learning_settings.yaml").write_text(f"REFERENCE:\n  calculator: {calculator}\n")
    (folder / "geometry.in").write_text(geometry)
    return subprocess.run([str(Path(VENV_BIN) / "FHI_AL-atomic-energies"), "--run-dir", str(folder)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case, kwargs, expect", [
    ("molecule", dict(geometry=WATER_GEOMETRY), ("GENERAL.compute_stress", "not periodic")),
    ("aenet", dict(model="aenet"), ("GENERAL.compute_stress", "aenet", "MACE")),
    ("nequip", dict(model="NequIP"), ("GENERAL.compute_stress", "NequIP")),
    ("zbl", dict(extra_mace="  zbl: true\n"), ("GENERAL.compute_stress", "zbl")),
    ("pyscf-periodic", dict(calculator="pyscf", compute_stress=False), ("REFERENCE.calculator", "periodic")),
])
def test_stress_that_cannot_be_had_exits_2_naming_the_key(tmp_path, case, kwargs, expect):
    result = run_with(tmp_path / case, **kwargs)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in expect:
        assert text in result.stderr
    assert sorted(p.name for p in (tmp_path / case).iterdir()) == ["active_learning_settings.yaml", "geometry.in",
                                                                    "mace_settings.yaml"]


def test_aims_without_asi_stress_is_refused(tmp_path):
    from fhi_al.errors import SettingsError
    from fhi_al.settings.machine import check_stress_inputs

    library = tmp_path / "libnostress.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), "-x", "c", "-"], input="int ASI_n_atoms(void)"
                   "{return 0;}\n", text=True, check=True)
    settings = SimpleNamespace(calculator="aims", mace=SimpleNamespace(general=SimpleNamespace(compute_stress=True)),
                               al=SimpleNamespace(active_learning=SimpleNamespace(aims_lib_path=str(library))))
    with pytest.raises(SettingsError, match="GENERAL.compute_stress.*ASI_stress"):
        check_stress_inputs(settings, [True] * 3, 10.0)
    emt = SimpleNamespace(calculator="emt", mace=settings.mace, al=settings.al)
    check_stress_inputs(emt, [True] * 3, 10.0)  # emt gives stress: accepted


def test_settings_reject_stress_with_a_non_mace_architecture_at_read_time():
    from fhi_al.errors import SettingsError
    from fhi_al.settings.machine import check_stress_training

    arch = SimpleNamespace(model="alchemical", energy_shift=None, energy_scale=None, zbl=False)
    mace = SimpleNamespace(general=SimpleNamespace(compute_stress=True), architecture=arch)
    with pytest.raises(SettingsError, match="alchemical"):
        check_stress_training(mace)
    check_stress_training(SimpleNamespace(general=SimpleNamespace(compute_stress=True),
                                          architecture=SimpleNamespace(model="MACE", energy_shift=None,
                                                                       energy_scale=None, zbl=False)))


def test_initial_dataset_of_a_periodic_cell_stores_and_trains_stress(tmp_path):
    """Ab initio MD of EMT Cu under NPT (MTK, 2 GPa: the reference's stress drives the cell) with compute_stress:
    the stored frames have cells of their own, every one carries the reference's REF_stress of its own cell, and
    the members' validation history reports the stress error."""
    from workflow import make_run_folder, run_cli

    start = bulk("Cu", "fcc", a=3.61, cubic=True)
    folder = make_run_folder(tmp_path / "cu", atoms=start,
                             mace={"GENERAL": {"compute_stress": True, "name_exp": "cu"}},
                             al={"REFERENCE": {"calculator": "emt"},
                                 "MD": {"temperature": 300, "stat_ensemble": "NPT", "barostat": "mtk",
                                        "pressure": 2.0e9, "pdamp": 100.0}})
    result = run_cli("FHI_AL-initial-ds", folder)
    assert result.returncode == 0, result.stderr
    frames = DatasetStore(folder / "data").read("initial/train_cu_1")
    assert frames and all(frame.info[REF_STRESS_KEY].shape == (6,) for frame in frames)
    assert max(abs(frame.get_volume() / start.get_volume() - 1.0) for frame in frames) > 1e-4
    emt = make_reference(name="emt")
    for frame in frames[:3]:  # the stored stress is the reference's stress of the stored structure
        np.testing.assert_allclose(frame.info[REF_STRESS_KEY], compute_reference_label(emt, frame).stress_eV_per_A3,
                                   rtol=1e-6, atol=1e-9)  # positions stored to 1e-8 Å
    assert "stress_mae_meV_per_A3" in (folder / "results" / "cu_1_history.jsonl").read_text()
