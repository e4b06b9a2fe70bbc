"""FHI_AL-relabel: a run's datasets (GFN2-xTB) recomputed with GFN1-xTB, in one process, after a kill, and
under MPI in serial and parallel mode (`mpiexec -n 2 python -m pytest --with-mpi tests/test_relabel.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import molecule

from fhi_al.data.store import DatasetStore, label_atoms
from fhi_al.references import compute_label, make_reference
from asi_build import shared_tmp  # noqa: F401
from workflow import env, kill_when, make_run_folder, on_rank_0

GFN1 = {"REFERENCE": {"calculator": "xtb", "xtb": {"method": "GFN1-xTB"}}}
# dataset -> (source of its frames: stage, count); final/ repeats the initial and AL frames
LAYOUT = {"initial/train_shared": 4, "initial/valid_shared": 2, "al/train": 3}


def labelled_water(count: int, *, stage: str, seed: int) -> list:
    calc = make_reference(name="xtb")
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        energy, forces = compute_label(calc, atoms)
        frames.append(label_atoms(atoms, energy_eV=energy, forces_eV_per_A=forces, procedure=stage, trajectory=0,
                                  md_step=10 * index, reference="xtb", label_id=f"{stage}-t0-s{10 * index}"))
    return frames


def make_labelled_run(folder: Path, *, al: dict | None = None) -> DatasetStore:
    make_run_folder(folder, al=al)
    store = DatasetStore(folder / "data")
    everything = []
    for seed, (name, count) in enumerate(LAYOUT.items()):
        frames = labelled_water(count, stage=name.split("/")[0] + str(seed), seed=seed)
        store.write(name, frames)
        everything += frames
    store.write("final/train_water_1", everything)
    return store


def write_reference_file(path: Path, extra: dict | None = None) -> Path:
    content = {**GFN1, **(extra or {})}
    path.write_text(yaml.safe_dump(content))
    return path


def relabel_command(folder: Path, reference: Path, *args: str) -> list[str]:
    code = "import sys; from fhi_al.cli import main_relabel; sys.exit(main_relabel())"
    return [sys.executable, "-c", code, "--run-dir", str(folder), "--reference-settings", str(reference), *args]


def relabel(folder: Path, reference: Path, *args: str, extra_env: dict | None = None):
    return subprocess.run(relabel_command(folder, reference, *args), capture_output=True, text=True,
                          env={**env(), **(extra_env or {})}, timeout=600)


def relabel_entries(folder: Path) -> list[dict]:
    lines = (folder / "logs" / "reference_ledger.jsonl").read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [entry for entry in entries if entry["purpose"] == "relabel"]


def assert_relabelled(folder: Path, source: DatasetStore, output: str = "data_relabel") -> None:
    """Same datasets, same frames in the same order, labels equal to GFN1-xTB computed here, not GFN2's."""
    out = DatasetStore(folder / output)
    assert out.names() == source.names()
    gfn1 = make_reference(name="xtb", options={"method": "GFN1-xTB"})
    for name in source.names():
        old, new = source.read(name), out.read(name)
        assert [a.info["label_id"] for a in new] == [a.info["label_id"] for a in old], name
        for before, after in zip(old, new):
            np.testing.assert_allclose(after.positions, before.positions)
            energy, forces = compute_label(gfn1, after)
            assert after.info["REF_energy"] == pytest.approx(energy, abs=1e-6)
            np.testing.assert_allclose(after.arrays["REF_forces"], forces, atol=1e-4)  # extxyz precision
            assert abs(after.info["REF_energy"] - before.info["REF_energy"]) > 1.0  # another Hamiltonian
            assert after.info["procedure"] == before.info["procedure"]
            assert after.info["md_step"] == before.info["md_step"]


def test_relabel_recomputes_every_frame_once(tmp_path):
    folder = tmp_path / "run"
    source = make_labelled_run(folder)
    reference = write_reference_file(tmp_path / "gfn1.yaml")
    result = relabel(folder, reference)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_relabelled(folder, source)
    unique = {a.info["label_id"] for name in source.names() for a in source.read(name)}
    computed = Counter(entry["label_id"] for entry in relabel_entries(folder))
    assert set(computed) == {f"relabel-{label_id}" for label_id in unique}  # final/ copies cost nothing
    assert set(computed.values()) == {1}
    again = relabel(folder, reference)
    assert again.returncode == 0 and "nothing to do" in again.stderr + again.stdout
    assert len(relabel_entries(folder)) == len(unique)


def test_killed_relabel_resumes_without_recomputing(tmp_path):
    folder = tmp_path / "run"
    source = make_labelled_run(folder)
    reference = write_reference_file(tmp_path / "gfn1.yaml")
    slow = {"FHI_AL_FAULTS": "hang=1,hang_s=0.3,seed=1"}  # every call sleeps 0.3 s first: room for the kill
    process = subprocess.Popen(relabel_command(folder, reference), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**env(), **slow}, start_new_session=True)
    assert kill_when(process, lambda: DatasetStore(folder / "data_relabel").count("initial/valid_shared") >= 1)
    before = Counter(entry["label_id"] for entry in relabel_entries(folder))
    result = relabel(folder, reference)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_relabelled(folder, source)
    after = Counter(entry["label_id"] for entry in relabel_entries(folder))
    stored_before = {f"relabel-{a.info['label_id']}" for name in ("initial/train_shared", "initial/valid_shared")
                     for a in source.read(name)}
    repeated = {label_id for label_id, count in after.items() if count > 1}
    assert not repeated & stored_before  # a label written before the kill is never computed again
    assert len(repeated) <= 1  # at most the one in flight at the kill
    assert sum(before.values()) >= 6


def test_relabel_bad_inputs_exit_2_and_write_nothing(tmp_path):
    folder = tmp_path / "run"
    make_labelled_run(folder)
    missing = relabel(folder, tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr
    no_reference = tmp_path / "empty.yaml"
    no_reference.write_text(yaml.safe_dump({"MD": {"temperature": 300}}))
    result = relabel(folder, no_reference)
    assert result.returncode == 2 and "REFERENCE" in result.stderr
    wrong = write_reference_file(tmp_path / "wrong.yaml", {"REFERENCE": {"calculator": "xtb",
                                                                         "xtb": {"method": "GFN3"}}})
    result = relabel(folder, wrong)
    assert result.returncode == 2 and "method" in result.stderr
    result = relabel(folder, write_reference_file(tmp_path / "ok.yaml"), "--output-dir", "data")
    assert result.returncode == 2 and "--output-dir" in result.stderr
    assert not (folder / "data_relabel").exists()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("parallel", [False, True])
def test_relabel_under_mpi(shared_tmp, parallel):
    from mpi4py import MPI

    from fhi_al import cli

    comm = MPI.COMM_WORLD
    folder = shared_tmp / f"relabel_mpi_{parallel}"
    reference = shared_tmp / f"gfn1_{parallel}.yaml"
    on_rank_0(lambda: (make_labelled_run(folder),
                       write_reference_file(reference, {"ACTIVE_LEARNING": {"parallel": parallel}})))
    statuses = comm.allgather(cli.main_relabel(["--run-dir", str(folder), "--reference-settings", str(reference)]))
    assert statuses == [0] * comm.size

    def each_frame_relabelled_once():
        assert_relabelled(folder, DatasetStore(folder / "data"))
        assert len(relabel_entries(folder)) == sum(LAYOUT.values())  # whatever the mode

    on_rank_0(each_frame_relabelled_once)
