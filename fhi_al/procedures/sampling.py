"""Structure samplers for the initial dataset: Langevin MD on the reference (ab initio MD) or on a cheaper
model (a foundation MACE model, GFN-xTB), handing out a frame every `interval_steps` steps; restartable and
self-healing.
A sampler has `next_frame() -> Frame`, `step`, `state()` and `restore(state)`.
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
from ..md import FrameBounds, GuardedDynamics, MDParameters, initialize_velocities, make_dynamics
from ..references import compute_reference_label, gives_stress
from ..restart import restore_rng, rng_state
from .state import SamplerState

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10  # reference failures in a row before sampling gives up
FOUNDATION_SIZES = ("small", "medium", "large")
XTB_MD = "xtb-md"  # initial_sampling: MD on GFN-xTB (mace-mp0: on a foundation MACE model)


@dataclass
class Frame:
    """A sampled structure (no calculator) and the MD step it was taken at."""

    atoms: Atoms
    md_step: int
    results: dict[str, Any] | None = None  # raw results of the driving calculator at this frame


class LangevinSampler:
    """Langevin MD driven by `calc`, yielding a frame every `interval_steps` steps.

    The MD runs in a GuardedDynamics: a failed calculation (ReferenceError) or an exploding frame puts
    the trajectory back on its last good frame with fresh velocities; the failure is logged and sampling
    continues.
    """

    def __init__(self, atoms: Atoms, calc: Calculator, *, md: MDParameters, interval_steps: int,
                 rng: np.random.Generator, name: str = "sampling MD", bounds: FrameBounds | None = None):
        self.atoms = atoms.copy()
        self.atoms.calc = calc
        self.md = md
        self.interval_steps = interval_steps
        self.rng = rng
        self.name = name
        initialize_velocities(self.atoms, md.temperature_K, rng)
        self.dynamics = GuardedDynamics(make_dynamics(self.atoms, md=md, rng=rng), rng=rng,
                                        temperature_K=md.temperature_K, name=name,
                                        detector=(bounds or FrameBounds()).detector(md.temperature_K))
        self.dynamics.on_good_frame(self._hand_out)
        self._frame: Frame | None = None

    @property
    def step(self) -> int:
        return self.dynamics.step

    @property
    def failures(self) -> int:
        return self.dynamics.resets

    def next_frame(self) -> Frame:
        consecutive = 0
        while True:
            self._frame = None
            reason = self.dynamics.run(self.interval_steps)
            if reason is None and self._frame is not None:
                return self._frame
            consecutive += 1
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                raise ReferenceError(f"{self.name}: {consecutive} failures in a row; last: {reason}")

    def _hand_out(self) -> None:
        self._frame = Frame(self.dynamics.snapshot(), self.step, dict(self.atoms.calc.results))

    def state(self) -> SamplerState:
        return SamplerState(md=self.dynamics.state(), rng=rng_state(self.rng), failures=self.failures)

    def restore(self, state: SamplerState) -> None:
        self.dynamics.restore(state.md)
        self.rng.bit_generator.state = restore_rng(state.rng).bit_generator.state
        self.dynamics.resets = state.failures


class GuardedReference(Calculator):
    """A local reference driving ab initio MD with the guards of a label: a call that exceeds `timeout_s`,
    fails in the library or returns NaN/inf raises ReferenceError, which the sampler turns into a reset.
    (A remote reference in parallel mode is guarded on its reference group already.) Offers the stress of
    periodic cells when the wrapped reference gives it (NPT ab initio MD)."""

    def __init__(self, calc: Calculator, *, timeout_s: float | None):
        super().__init__()
        self.calc = calc
        self.timeout_s = timeout_s
        self.implemented_properties = ["energy", "free_energy", "forces"] + (["stress"] if gives_stress(calc) else [])

    def _get_name(self) -> str:
        return self.calc.name  # ASE's Calculator.name: the guarded reference's identity

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        label = compute_reference_label(self.calc, self.atoms, timeout_s=self.timeout_s)
        self.results = {"energy": label.energy_eV, "free_energy": label.energy_eV, "forces": label.forces_eV_per_A}
        if label.stress_eV_per_A3 is not None:
            self.results["stress"] = label.stress_eV_per_A3


@dataclass(frozen=True)
class SamplingDriver:
    """The calculator of a sampling MD on a cheaper model and its name in the log."""

    calc: Calculator
    name: str


def sampling_driver(sampling: str, *, foundation: str, dtype: str, xtb_method: str) -> SamplingDriver:
    """The driver of `sampling` (initial_sampling mace-mp0 or xtb-md). Its MD steps are not reference calls
    and go to no ledger: only the labels of the frames it hands out are paid."""
    if sampling == XTB_MD:
        from ..references.xtb import make_xtb  # tblite's shared library: only for runs that use it

        return SamplingDriver(make_xtb(method=xtb_method), f"{xtb_method} MD")
    return SamplingDriver(foundation_calculator(foundation, dtype=dtype), "foundation MD")


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
