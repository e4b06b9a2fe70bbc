"""Dataset store: labels with provenance, durable appends, repair of torn frames, mace readability, splits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.constraints import FixCom

from fhi_al.data import splits
from fhi_al.data.store import (REF_ENERGY_KEY, REF_FORCES_KEY, CorruptDatasetError, DatasetStore,
                               complete_prefix, label_atoms, make_label_id)
from fhi_al.errors import ReferenceError


def emt_labels(atoms_list, procedure="initial", trajectory=0):
    """Label perturbed copies with EMT, using the calculator's raw results."""
    labelled = []
    for step, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.get_potential_energy()
        labelled.append(label_atoms(atoms, energy_eV=atoms.calc.results["energy"],
                                    forces_eV_per_A=atoms.calc.results["forces"], config_type="Default",
                                    procedure=procedure, trajectory=trajectory, md_step=10 * step, reference="emt",
                                    label_id=make_label_id(procedure, trajectory, 10 * step)))
    return labelled


@pytest.fixture
def frames(rng):
    base = molecule("CH3CH2OH")
    shaken = []
    for _ in range(12):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        shaken.append(atoms)
    return emt_labels(shaken)


def test_keys_pinned_to_architecture_contract():
    from fhi_al.architectures import base

    assert (REF_ENERGY_KEY, REF_FORCES_KEY) == (base.REF_ENERGY_KEY, base.REF_FORCES_KEY)


def test_label_atoms_takes_raw_forces_and_no_calculator():
    atoms = molecule("H2O")
    atoms.calc = EMT()
    atoms.set_constraint(FixCom())
    raw = atoms.get_forces(apply_constraint=False)
    labelled = label_atoms(atoms, energy_eV=atoms.get_potential_energy(), forces_eV_per_A=raw,
                           procedure="al", trajectory=2, md_step=7, reference="emt", label_id="al-t2-s7")
    assert labelled.calc is None and not labelled.constraints
    np.testing.assert_array_equal(labelled.arrays[REF_FORCES_KEY], raw)
    assert labelled.info["trajectory"] == 2 and labelled.info["label_id"] == "al-t2-s7"
    # the raw forces of an isolated molecule sum to zero (Newton's third law)
    np.testing.assert_allclose(raw.sum(axis=0), 0.0, atol=1e-10)


def test_label_atoms_rejects_nan():
    atoms = molecule("H2O")
    forces = np.zeros((3, 3))
    forces[1, 2] = np.nan
    with pytest.raises(ReferenceError):
        label_atoms(atoms, energy_eV=-1.0, forces_eV_per_A=forces, procedure="al", trajectory=0, md_step=0,
                    reference="emt", label_id="x")
    with pytest.raises(ValueError):
        label_atoms(atoms, energy_eV=-1.0, forces_eV_per_A=np.zeros((2, 3)), procedure="al", trajectory=0,
                    md_step=0, reference="emt", label_id="x")


def test_append_read_round_trip(tmp_path, frames):
    store = DatasetStore(tmp_path / "data")
    store.append("initial/train_a_1", frames[0])
    store.append("initial/train_a_1", frames[1:5])
    assert (tmp_path / "data/initial/train_a_1.xyz").exists()
    back = store.read("initial/train_a_1")
    assert len(back) == store.count("initial/train_a_1") == 5
    for original, read in zip(frames, back):
        assert read.calc is None  # REF_* stay in info/arrays, no SinglePointCalculator
        assert read.info[REF_ENERGY_KEY] == pytest.approx(original.info[REF_ENERGY_KEY], abs=1e-12)
        np.testing.assert_allclose(read.arrays[REF_FORCES_KEY], original.arrays[REF_FORCES_KEY], atol=1e-8)
        np.testing.assert_allclose(read.positions, original.positions, atol=1e-8)
        for key in ("procedure", "trajectory", "md_step", "reference", "label_id", "config_type"):
            assert read.info[key] == original.info[key] and type(read.info[key]) is type(original.info[key])
    assert store.label_ids("initial/train_a_1") == {f.info["label_id"] for f in frames[:5]}
    assert store.names() == ["initial/train_a_1"]
    assert store.read("missing") == [] and store.count("missing") == 0


def test_numeric_label_id_comes_back_as_str(tmp_path, frames):
    frame = frames[0].copy()
    frame.info["label_id"] = "17"
    store = DatasetStore(tmp_path)
    store.append("x", frame)
    assert store.label_ids("x") == {"17"}


def test_append_new_is_idempotent(tmp_path, frames):
    store = DatasetStore(tmp_path)
    assert store.append_new("al/train_m", frames[:3]) == 3
    assert store.append_new("al/train_m", frames[:5]) == 2  # a rerun after a kill between two member files
    assert store.append_new("al/train_m", frames[:5]) == 0
    assert [a.info["label_id"] for a in store.read("al/train_m")] == [f.info["label_id"] for f in frames[:5]]


def test_write_replaces_whole_file(tmp_path, frames):
    store = DatasetStore(tmp_path)
    store.append("final/train", frames[:6])
    store.write("final/train", frames[6:8])
    assert [a.info["label_id"] for a in store.read("final/train")] == [f.info["label_id"] for f in frames[6:8]]
    assert not list(tmp_path.rglob("*.tmp"))


def test_unlabelled_atoms_refused(tmp_path):
    with pytest.raises(ValueError):
        DatasetStore(tmp_path).append("x", molecule("H2O"))
    with pytest.raises(ValueError):
        DatasetStore(tmp_path).path("../escape")


def test_torn_final_frame_repaired_at_random_offsets(tmp_path, frames, rng, caplog):
    store = DatasetStore(tmp_path)
    store.append("d", frames[:4])
    intact = store.path("d").read_bytes()
    store.append("d", frames[4])  # the append a kill interrupts
    full = store.path("d").read_bytes()
    ids = [f.info["label_id"] for f in frames]
    offsets = sorted(set(rng.integers(len(intact), len(full), size=40).tolist()) | {len(intact) + 1, len(full) - 1})
    for offset in offsets:
        store.path("d").write_bytes(full[:offset])
        fresh = DatasetStore(tmp_path)  # a rerun after the kill
        with caplog.at_level(logging.WARNING, logger="fhi_al.data.store"):
            back = fresh.read("d")
        assert [a.info["label_id"] for a in back] == ids[:4]
        assert store.path("d").read_bytes() == intact  # truncated on disk to the last complete frame
        assert "torn final frame" in caplog.text
        fresh.append("d", frames[4])  # the rerun stores the label again: exactly once
        assert [a.info["label_id"] for a in fresh.read("d")] == ids[:5]


def test_a_reader_on_another_rank_never_cuts_a_frame_being_appended(tmp_path, frames):
    """A training rank reads while rank 0 appends: the half-written frame is skipped and left alone, so the
    writer's append completes in the same file (a repair there would swap the file under the writer)."""
    writer = DatasetStore(tmp_path)
    writer.append("d", frames[:3])
    intact = writer.path("d").read_bytes()
    writer.append("d", frames[3])
    full = writer.path("d").read_bytes()
    ids = [f.info["label_id"] for f in frames]
    writer.path("d").write_bytes(full[: (len(intact) + len(full)) // 2])  # mid-append
    reader = DatasetStore(tmp_path, reader=True)
    assert [a.info["label_id"] for a in reader.read("d")] == ids[:3] and reader.count("d") == 3
    assert writer.path("d").read_bytes() == full[: (len(intact) + len(full)) // 2]  # untouched
    writer.path("d").write_bytes(full)  # the append completes
    assert [a.info["label_id"] for a in reader.read("d")] == ids[:4]


def test_append_after_torn_frame_without_read(tmp_path, frames):
    store = DatasetStore(tmp_path)
    store.append("d", frames[:2])
    data = store.path("d").read_bytes()
    store.path("d").write_bytes(data + data[: len(data) // 3])  # half of a frame after the kill
    DatasetStore(tmp_path).append("d", frames[2])
    assert [a.info["label_id"] for a in store.read("d")] == [f.info["label_id"] for f in frames[:3]]


def test_corruption_in_the_middle_is_an_error(tmp_path, frames):
    store = DatasetStore(tmp_path)
    store.append("d", frames[:2])
    store.path("d").write_bytes(b"garbage\n" + store.path("d").read_bytes())
    with pytest.raises(CorruptDatasetError) as info:
        DatasetStore(tmp_path).read("d")
    assert "d.xyz" in str(info.value)


def test_complete_prefix_counts_frames():
    frame = b"2\ncomment\nH 0 0 0\nH 0 0 1\n"
    assert complete_prefix(frame * 3) == (3 * len(frame), 3)
    assert complete_prefix(frame * 2 + frame[:-1]) == (2 * len(frame), 2)
    assert complete_prefix(b"") == (0, 0)


def test_files_load_with_mace(tmp_path, frames):
    from mace.data.utils import KeySpecification, load_from_xyz

    store = DatasetStore(tmp_path)
    store.append("initial/train_t", frames[:5])
    keys = KeySpecification.from_defaults().update(info_keys={"energy": "REF_energy"},
                                                   arrays_keys={"forces": "REF_forces"})
    _, configs = load_from_xyz(str(store.path("initial/train_t")), key_specification=keys)
    assert len(configs) == 5
    for config, frame in zip(configs, frames):
        assert config.properties["energy"] == pytest.approx(frame.info[REF_ENERGY_KEY])
        np.testing.assert_allclose(config.properties["forces"], frame.arrays[REF_FORCES_KEY], atol=1e-8)
        assert config.config_type == "Default"
        np.testing.assert_array_equal(config.atomic_numbers, frame.numbers)


# ------------------------------------------------------------------ splits


@pytest.mark.parametrize("n_frames, ratio", [(10, 0.1), (5, 0.1), (20, 0.25), (7, 0.3), (2, 0.5)])
def test_split_disjoint_and_ratio(n_frames, ratio, rng):
    frames = list(range(n_frames))
    train, valid = splits.split_train_valid(frames, valid_ratio=ratio, rng=rng)
    assert sorted(train + valid) == frames and not set(train) & set(valid)
    assert len(valid) == max(1, int(np.floor(n_frames * ratio + 0.5))) and train


def test_split_running_total_reaches_ratio(rng):
    n_train = n_valid = 0
    for round_ in range(20):
        train, valid = splits.split_train_valid(list(range(5)), valid_ratio=0.1, rng=rng,
                                                n_train=n_train, n_valid=n_valid)
        n_train, n_valid = n_train + len(train), n_valid + len(valid)
        assert abs(n_valid - 0.1 * (n_train + n_valid)) <= 1
    assert n_valid == 10 and n_train == 90


def test_split_members_differ():
    frames = list(range(30))
    picks = [splits.split_train_valid(frames, valid_ratio=0.2, rng=np.random.default_rng(seed))[1]
             for seed in (1, 2)]
    assert picks[0] != picks[1]


def test_split_edge_cases(rng):
    assert splits.split_train_valid([1], valid_ratio=0.1, rng=rng) == ([1], [])
    assert splits.split_train_valid([], valid_ratio=0.1, rng=rng) == ([], [])
    assert splits.split_train_valid([1, 2], valid_ratio=0.0, rng=rng)[1] == []
    with pytest.raises(ValueError):
        splits.split_train_valid([1, 2], valid_ratio=1.0, rng=rng)


def test_al_destination_keeps_ratio():
    n_train = n_valid = 0
    destinations = []
    for _ in range(100):
        where = splits.al_destination(n_train_al=n_train, n_valid_al=n_valid, valid_ratio=0.1)
        destinations.append(where)
        n_valid += where == splits.VALID
        n_train += where == splits.TRAIN
        assert n_valid <= 0.1 * (n_train + n_valid) + 1
    assert destinations[0] == splits.TRAIN and destinations[1] == splits.VALID
    assert n_valid == 10 and n_train == 90
