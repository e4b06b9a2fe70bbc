"""Settings checked against this machine and installation: the torch device, the dtype the architecture and
device can use, a checkpoint to resume from. Run while the settings are read, so nothing fails after the reference
has been paid; each failure is a SettingsError naming the key, the value given and what is available here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SettingsError
from . import schema

log = logging.getLogger(__name__)

DEVICE_KEY = "MISC.device"
DTYPE_KEY = "GENERAL.default_dtype"
STRESS_KEY = "GENERAL.compute_stress"
STRESS_REFERENCES = ("xtb", "emt")  # always give stress for periodic cells; aims if its library has ASI_stress
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")
ALL_DTYPES = ("float64", "float32")
# Apple's MPS backend has no float64 arithmetic.
DEVICE_DTYPES = {"cpu": ALL_DTYPES, "cuda": ALL_DTYPES, "mps": ("float32",)}


@dataclass(frozen=True)
class Device:
    kind: str  # cpu | cuda | mps
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def available_devices() -> list[str]:
    """The torch devices usable on this machine with this torch build, e.g. ['cpu', 'cuda:0']."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _no_cuda_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) was compiled without CUDA"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU on this machine"


def check_device(value: str) -> Device:
    """The device of MISC.device if this torch build and machine have it, else SettingsError."""
    match = DEVICE_PATTERN.match(str(value).strip().lower())
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise SettingsError(f"got {value!r}; expected cpu, cuda, cuda:N (N = GPU index) or mps; available here: "
                            f"{', '.join(available_devices())}", where=DEVICE_KEY)
    device = Device(match.group(1), None if match.group(2) is None else int(match.group(2)))
    if device.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SettingsError(f"got {value!r} but {_no_cuda_reason()}; available here: "
                                f"{', '.join(available_devices())}", where=DEVICE_KEY)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SettingsError(f"got {value!r} but this machine has {count} GPU(s); available here: "
                                f"{', '.join(available_devices())}", where=DEVICE_KEY)
    if device.kind == "mps" and not _mps_available():
        raise SettingsError(f"got {value!r} but this torch build or machine has no MPS backend; available here: "
                            f"{', '.join(available_devices())}", where=DEVICE_KEY)
    return device


def check_dtype(dtype: str, *, model: str, hypers: object, device: Device) -> None:
    """The architecture (its Hypers' `supported_dtypes`, default both) and the device must support `dtype`."""
    supported = tuple(getattr(hypers, "supported_dtypes", ALL_DTYPES))
    if dtype not in supported:
        raise SettingsError(f"got {dtype!r} but architecture {model} supports only {', '.join(supported)}",
                            where=DTYPE_KEY)
    on_device = DEVICE_DTYPES[device.kind]
    if dtype not in on_device:
        raise SettingsError(f"got {dtype!r} but {DEVICE_KEY} {device} supports only {', '.join(on_device)}",
                            where=DTYPE_KEY)


def check_mace_settings(mace: schema.MaceSettings, run_dir: Path) -> Device:
    """Checks of mace_settings.yaml against the machine and the run folder; -> the device."""
    device = check_device(mace.misc.device)
    check_dtype(mace.general.default_dtype, model=mace.architecture.model, hypers=mace.architecture.hypers,
                device=device)
    check_stress_training(mace)
    training = mace.training
    if training.resume_from is not None:
        path = Path(training.resume_from).expanduser()
        path = path if path.is_absolute() else run_dir / path
        if not path.exists():
            raise SettingsError(f"got {training.resume_from!r}: no such checkpoint file or folder ({path})",
                                where="TRAINING.resume_from")
    if training.energy_target == "cohesive" and mace.architecture.atomic_energies is None:
        raise SettingsError("got 'cohesive', which subtracts the isolated-atom energies: give them in "
                            "ARCHITECTURE.atomic_energies (FHI_AL-atomic-energies computes them)",
                            where="TRAINING.energy_target")
    return device


def check_stress_training(mace: schema.MaceSettings) -> None:
    """GENERAL.compute_stress needs an architecture that trains stress and none of the engine's energy terms."""
    from ..architectures.registry import STRESS_ARCHITECTURES, trains_stress

    arch = mace.architecture
    if not mace.general.compute_stress:
        return
    if not trains_stress(arch.model):
        raise SettingsError(f"got true but ARCHITECTURE.model {arch.model} cannot train on stress (it has no strain "
                            f"hook); set compute_stress false or use {' or '.join(STRESS_ARCHITECTURES)}",
                            where=STRESS_KEY)
    if arch.energy_shift is not None or arch.energy_scale is not None or arch.zbl:
        raise SettingsError("got true but the engine's energy terms (ARCHITECTURE.energy_shift, energy_scale, zbl) "
                            "have no stress; switch them off or compute_stress", where=STRESS_KEY)


def check_stress_inputs(settings: schema.RunSettings, pbc, cell_volume_A3: float) -> None:
    """GENERAL.compute_stress needs a periodic geometry (pbc in all directions, a cell of positive volume) and a
    reference that gives stress; a periodic geometry cannot use the (molecular) PySCF reference. SettingsError
    naming the key otherwise."""
    if settings.calculator == "pyscf" and any(bool(flag) for flag in pbc):
        raise SettingsError("got pyscf, a reference for molecules, but the geometry is periodic (lattice_vector "
                            "lines in geometry.in); use xtb, emt or aims", where="REFERENCE.calculator")
    compute_stress = settings.mace.general.compute_stress
    if not compute_stress and not _npt_ab_initio_md(settings):
        return
    if compute_stress and (not all(bool(flag) for flag in pbc) or not cell_volume_A3 > 0.0):
        raise SettingsError("got true but the geometry is not periodic in all three directions with a cell "
                            "(lattice_vector lines in geometry.in); stress needs a periodic structure; set "
                            "compute_stress false for molecules", where=STRESS_KEY)
    calculator = settings.calculator
    if calculator in STRESS_REFERENCES:
        return
    if calculator == "aims" and _aims_gives_stress(settings.al.active_learning.aims_lib_path):
        return
    why = "got true" if compute_stress else "NPT ab initio MD (initial_sampling: aimd) needs stress, but"
    raise SettingsError(f"{why} the reference {calculator} cannot give stress "
                        f"{'(its library has no ASI_stress)' if calculator == 'aims' else '(molecules only)'}; "
                        f"references with stress: {', '.join(STRESS_REFERENCES)}, aims with ASI_stress",
                        where=STRESS_KEY if compute_stress else "MD.stat_ensemble")


def _npt_ab_initio_md(settings: schema.RunSettings) -> bool:
    """The initial dataset's MD (trajectory 0's settings) runs NPT on the reference."""
    return (settings.al.active_learning.initial_sampling == "aimd"
            and settings.al.md_settings_for(0).stat_ensemble == "NPT")


def _aims_gives_stress(lib_path) -> bool:
    from ..references.aims import STRESS_SYMBOL, exports_symbol  # loads the library: only when stress is asked

    return bool(lib_path) and exports_symbol(lib_path, STRESS_SYMBOL)


def normalised(mace: schema.MaceSettings, device: Device) -> schema.MaceSettings:
    """mace settings with MISC.device spelt the way torch reads it ('CUDA' -> 'cuda')."""
    return dataclasses.replace(mace, misc=dataclasses.replace(mace.misc, device=str(device)))
