"""The original tool's example files (tests/data/original_example: water, ensemble of 4, max_set_size 12; only the
FHI-aims paths replaced by `REFERENCE: calculator: xtb`) and the successor's model settings, read as shipped:
what this machine cannot run (a CUDA device, a dtype) fails when
the settings are read, with exit status 2, before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import VENV_BIN
from fhi_al.errors import SettingsError
from fhi_al.settings import load_run_settings, machine

DATA = Path(__file__).resolve().parent / "data"
ORIGINAL = DATA / "original_example"
SUCCESSOR_MACE = DATA / "successor_example" / "mace_settings.yaml"
TIMEOUT_S = 120
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the example's device is fine")


def copy_example(folder: Path, *, device: str | None = None, mace_file: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in ORIGINAL.iterdir():
        shutil.copy(path, folder / path.name)
    if mace_file is not None:
        shutil.copy(mace_file, folder / "mace_settings.yaml")
    if device is not None:
        path = folder / "mace_settings.yaml"
        text = path.read_text()
        assert "  device: cuda\n" in text
        path.write_text(text.replace("  device: cuda\n", f"  device: {device}\n"))
    return folder


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@CPU_ONLY
def test_original_example_with_cuda_exits_2_before_anything_is_written(tmp_path):
    run_dir = copy_example(tmp_path / "run")
    before = _files(tmp_path)
    started = time.perf_counter()
    proc = subprocess.run([os.path.join(VENV_BIN, "FHI_AL"), "--run-dir", str(run_dir)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    elapsed_s = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, proc.stderr
    for expected in ("MISC.device", "'cuda'", "without CUDA", "available here: cpu", "mace_settings.yaml"):
        assert expected in message[0], message[0]
    assert _files(tmp_path) == before  # no log, no lock, no data: the reference was never called
    assert elapsed_s < TIMEOUT_S / 2


def test_original_example_loads_with_the_device_this_machine_has(tmp_path):
    settings = load_run_settings(copy_example(tmp_path / "run", device="cpu"))
    al = settings.al.active_learning
    assert (al.ensemble_size, al.max_set_size, al.max_final_epochs, al.patience) == (4, 12, 500, 50)
    assert settings.calculator == "xtb" and al.initial_sampling == "mace-mp0"
    assert settings.mace.misc.device == "cpu" and settings.mace.general.default_dtype == "float64"
    assert settings.mace.architecture.model == "ScaleShiftMACE"
    assert settings.mace.architecture.hypers.scaling == "rms_forces_scaling"  # TRAINING.scaling moved
    assert any("TRAINING.swa" in note for note in settings.notes)


@CPU_ONLY
def test_successor_model_settings_fail_on_cuda_and_load_on_cpu(tmp_path):
    with pytest.raises(SettingsError) as info:
        load_run_settings(copy_example(tmp_path / "cuda", mace_file=SUCCESSOR_MACE))
    assert info.value.where == "MISC.device"
    settings = load_run_settings(copy_example(tmp_path / "cpu", mace_file=SUCCESSOR_MACE, device="cpu"))
    assert settings.mace.general.default_dtype == "float32"


def test_gpu_index_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert str(machine.check_device("CUDA:1")) == "cuda:1"
    with pytest.raises(SettingsError) as info:
        machine.check_device("cuda:2")
    assert info.value.where == "MISC.device"
    assert "'cuda:2'" in str(info.value) and "2 GPU(s)" in str(info.value)
    assert "available here: cpu, cuda:0, cuda:1" in str(info.value)


def test_device_spelling_is_checked():
    for bad in ("gpu", "cpu:0", "cuda:x"):
        with pytest.raises(SettingsError, match="expected cpu, cuda, cuda:N"):
            machine.check_device(bad)


def test_dtype_the_device_cannot_use(monkeypatch):
    monkeypatch.setattr(machine, "_mps_available", lambda: True)
    device = machine.check_device("mps")
    machine.check_dtype("float32", model="MACE", hypers=None, device=device)
    with pytest.raises(SettingsError) as info:
        machine.check_dtype("float64", model="MACE", hypers=None, device=device)
    assert info.value.where == "GENERAL.default_dtype" and "float32" in str(info.value)


def test_dtype_the_architecture_cannot_use(tmp_path, monkeypatch):
    from fhi_al.architectures.mace.hypers import MaceHypers
    from fhi_al.settings import loader

    @dataclasses.dataclass(frozen=True)
    class Float64Only(MaceHypers):
        supported_dtypes = ("float64",)

    monkeypatch.setattr(loader, "hypers_class", lambda model: Float64Only)
    run_dir = copy_example(tmp_path / "run", mace_file=SUCCESSOR_MACE, device="cpu")
    with pytest.raises(SettingsError) as info:
        load_run_settings(run_dir)
    assert info.value.where == "GENERAL.default_dtype"
    assert "'float32'" in str(info.value) and "supports only float64" in str(info.value)
