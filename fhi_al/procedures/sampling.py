"""Structure samplers for the initial dataset: Langevin MD on the reference (ab initio MD) or on a
foundation MACE model, handing out a frame every `interval_steps` steps; restartable and self-healing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..errors import InputError, ReferenceError
from ..md import BlowUpDetector, LastGoodFrame, initialize_velocities, make_langevin, md_state, restore_md_state
from ..restart import restore_rng, rng_state

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10  # reference failures in a row before sampling gives up
FOUNDATION_SIZES = ("small", "medium", "large")


@dataclass
class Frame:
    """A sampled structure (no calculator) and the MD step it was taken at."""

    atoms: Atoms
    md_step: int
    results: dict[str, Any] | None = None  # raw results of the driving calculator at this frame


@dataclass(frozen=True)
class MDParameters:
    temperature_K: float
    timestep_fs: float
    friction_per_fs: float

    @classmethod
    def from_settings(cls, md_settings: Any) -> "MDParameters":
        return cls(temperature_K=md_settings.temperature, timestep_fs=md_settings.timestep,
                   friction_per_fs=md_settings.friction)


class LangevinSampler:
    """Langevin MD driven by `calc`, yielding a frame every `interval_steps` steps.

    A failed calculation (ReferenceError) or an exploding frame puts the trajectory back on its last good
    frame with fresh velocities; the failure is logged and sampling continues.
    """

    def __init__(self, atoms: Atoms, calc: Calculator, *, md: MDParameters, interval_steps: int,
                 rng: np.random.Generator, name: str = "sampling MD"):
        self.atoms = atoms.copy()
        self.atoms.calc = calc
        self.md = md
        self.interval_steps = interval_steps
        self.rng = rng
        self.name = name
        initialize_velocities(self.atoms, md.temperature_K, rng)
        self.dyn = make_langevin(self.atoms, temperature_K=md.temperature_K, timestep_fs=md.timestep_fs,
                                 friction_per_fs=md.friction_per_fs, rng=rng)
        self.detector = BlowUpDetector(target_temperature_K=md.temperature_K)
        self.last_good = LastGoodFrame(self.atoms, step=0)
        self.failures = 0

    @property
    def step(self) -> int:
        return int(self.dyn.nsteps)

    def next_frame(self) -> Frame:
        consecutive = 0
        while True:
            try:
                self.dyn.run(self.interval_steps)
                reason = self.detector.check(self.atoms)
            except Exception as error:  # noqa: BLE001 - any failure of the driving calculator is a bad frame
                reason = f"calculation failed: {type(error).__name__}: {error}"
            if reason is None:
                self.last_good.record(self.atoms, step=self.step)
                return Frame(self._snapshot(), self.step, dict(self.atoms.calc.results))
            consecutive += 1
            self.failures += 1
            self._reset(reason)
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                raise ReferenceError(f"{self.name}: {consecutive} failures in a row; last: {reason}")

    def _snapshot(self) -> Atoms:
        frame = self.atoms.copy()
        frame.calc = None
        return frame

    def _reset(self, reason: str) -> None:
        # The step counter keeps running, so label ids (made from the step) stay unique after a reset.
        good_step = self.last_good.reset(self.atoms, temperature_K=self.md.temperature_K, rng=self.rng)
        self.atoms.calc.reset()
        log.warning("%s step %d: %s; back to the frame of step %d with fresh velocities", self.name, self.step,
                    reason, good_step)

    def state(self) -> dict[str, Any]:
        return {"md": md_state(self.atoms, step=self.step), "rng": rng_state(self.rng), "failures": self.failures}

    def restore(self, state: dict[str, Any]) -> None:
        restore_md_state(self.atoms, state["md"], self.dyn)
        restored = restore_rng(state["rng"])
        self.rng.bit_generator.state = restored.bit_generator.state
        self.failures = int(state.get("failures", 0))
        self.last_good.record(self.atoms, step=self.step)
        self.atoms.calc.reset()


class GuardedReference(Calculator):
    """A local reference driving ab initio MD with the guards of a label: a call that exceeds `timeout_s`,
    fails in the library or returns NaN/inf raises ReferenceError, which the sampler turns into a reset.
    (A remote reference in parallel mode is guarded on its reference group already.)"""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, calc: Calculator, *, timeout_s: float | None):
        super().__init__()
        self.calc = calc
        self.timeout_s = timeout_s

    def _get_name(self) -> str:
        return self.calc.name  # ASE's Calculator.name: the guarded reference's identity

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ..references.base import compute_label

        super().calculate(atoms, properties, system_changes)
        energy, forces = compute_label(self.calc, self.atoms, timeout_s=self.timeout_s)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def foundation_calculator(size_or_path: str, *, dtype: str = "float64") -> Calculator:
    """The foundation MACE model for sampling: a MACE-MP-0 size name through mace's own loader, or a local
    model file. MACE-MP-0 weights are downloaded by mace on first use; a machine without internet needs a
    local file (or mace's cache, ~/.cache/mace)."""
    from mace.calculators import MACECalculator, mace_mp

    if str(size_or_path).lower() in FOUNDATION_SIZES:
        try:
            return mace_mp(model=str(size_or_path).lower(), device="cpu", default_dtype=dtype)
        except Exception as error:  # noqa: BLE001 - a failed download has many exception types
            raise InputError(f"could not load the MACE-MP-0 '{size_or_path}' model ({type(error).__name__}: "
                             f"{error}); without internet access give the path of a local .model file",
                             where="ACTIVE_LEARNING.initial_foundational_size") from None
    path = Path(size_or_path).expanduser()
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist; allowed: small, medium, large or the path "
                         f"of a MACE .model file", where="ACTIVE_LEARNING.initial_foundational_size")
    return MACECalculator(model_paths=str(path), device="cpu", default_dtype=dtype)
