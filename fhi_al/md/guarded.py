"""One guarded dynamics that every MD runs in: ASE dynamics plus an observer that checks the frames, returns to the
last good frame with fresh velocities after a blow-up, and hands out good frames.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from ase import Atoms

from .checks import BlowUpDetector, rejection_kind
from .dynamics import initialize_velocities
from .npt import sync_integrator
from .state import MDState, md_state, restore_md_state

log = logging.getLogger(__name__)


class LastGoodFrame:
    """Remembers the last frame that passed the checks and puts a trajectory back on it."""

    def __init__(self, atoms: Atoms, *, step: int = 0):
        self.resets = 0
        self.state = md_state(atoms, step=step)
        self.previous: MDState | None = None  # the good frame before `state`

    def record(self, atoms: Atoms, *, step: int) -> None:
        self.previous, self.state = self.state, md_state(atoms, step=step)

    def step_back(self) -> None:
        """The last good frame itself turned out bad (e.g. its label): the one before becomes the last good."""
        if self.previous is not None:
            self.state = self.previous

    def reset(self, atoms: Atoms, *, temperature_K: float, rng: np.random.Generator) -> int:
        """Back to the last good positions and cell with fresh Maxwell-Boltzmann velocities; returns its step."""
        restore_md_state(atoms, self.state)
        initialize_velocities(atoms, temperature_K, rng)
        self.resets += 1
        return self.state.step


class BlowUp(Exception):
    """Raised by the guard observer to end a run on a frame that failed the checks."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GuardedDynamics:
    """One guarded MD: any ASE dynamics (Langevin, NPT integrators) run in segments of `run(steps)`, with
    observers attached through `dyn.attach`.

    The guard observer checks the frame each segment ends on (non-finite numbers, a flying atom,
    overheating, a collapsed, exploded or degenerate cell); a good frame becomes the last good frame and is
    handed to the `on_good_frame` observers.
    A bad frame, or a failed calculation, puts the trajectory back on the last good frame with fresh
    Maxwell-Boltzmann velocities (from `rng`); the step counter keeps running, so ids made from the step
    stay unique. Only a segment's last frame is checked (one neighbour list per hand-out, not per step): the
    samplers' behaviour and random streams stay those of the restart records written so far.
    """

    def __init__(self, dyn: Any, *, rng: np.random.Generator, temperature_K: float, name: str = "MD",
                 failure: str = "calculation failed", detector: BlowUpDetector | None = None):
        self.dyn = dyn
        self.rng = rng
        self.temperature_K = temperature_K
        self.name = name
        self.failure = failure
        self.detector = detector or BlowUpDetector(target_temperature_K=temperature_K)
        self.last_good = LastGoodFrame(dyn.atoms, step=int(dyn.nsteps))
        # the cell checks compare with the structure the dynamics was built on (the same after a restart)
        self.reference_volume_A3 = float(dyn.atoms.get_volume()) if dyn.atoms.pbc.all() else None
        self.resets = 0
        self.resets_in_a_row = 0  # since the last frame that passed the checks
        self.events: list[tuple[int, str]] = []  # (step, reason) of every reset
        self.good_frame_observers: list[Callable[[], None]] = []
        self._checked = False
        dyn.attach(self._guard, interval=1)

    @property
    def atoms(self) -> Atoms:
        return self.dyn.atoms

    @property
    def step(self) -> int:
        return int(self.dyn.nsteps)

    def on_good_frame(self, observer: Callable[[], None]) -> None:
        """Call `observer()` on every segment-end frame that passed the checks (e.g. a frame hand-out)."""
        self.good_frame_observers.append(observer)

    def run(self, steps: int) -> str | None:
        """Run `steps` steps; returns None on a good frame, else the reason of the reset that followed."""
        self._checked = False
        try:
            self.dyn.run(steps)
            if not self._checked:  # a run of 0 steps past step 0 calls no observer
                self._guard(final=True)
        except BlowUp as blow_up:
            reason = blow_up.reason
        except Exception as error:  # noqa: BLE001 - any failure of the driving calculator is a bad frame
            reason = f"{self.failure}: {type(error).__name__}: {error}"
        else:
            return None
        self.reset(reason)
        return reason

    def _guard(self, final: bool = False) -> None:
        if not final and self.dyn.nsteps != getattr(self.dyn, "max_steps", None):
            return  # only the frame a segment ends on is checked
        self._checked = True
        reason = self.detector.check(self.atoms, reference_volume_A3=self.reference_volume_A3)
        if reason is not None:
            raise BlowUp(reason)
        self.last_good.record(self.atoms, step=self.step)
        self.resets_in_a_row = 0
        for observer in self.good_frame_observers:
            observer()

    def reset(self, reason: str) -> None:
        """Back to the last good frame (positions and cell) with fresh velocities, and an NPT integrator's
        chains and cell momenta at rest (also for a reason found outside, e.g. an uncertainty above its upper
        bound)."""
        good_step = self.last_good.reset(self.atoms, temperature_K=self.temperature_K, rng=self.rng)
        sync_integrator(self.dyn, None)
        if self.atoms.calc is not None:
            self.atoms.calc.reset()
        self.resets += 1
        self.resets_in_a_row += 1
        self.events.append((self.step, reason))
        log.warning("%s step %d: %s; back to the frame of step %d with fresh velocities", self.name, self.step,
                    reason, good_step)

    def step_back(self, reason: str) -> None:
        """The last good frame was rejected after all (its reference label left the physical region): back to
        the good frame before it with fresh velocities."""
        self.last_good.step_back()
        self.reset(reason)

    def rejections(self) -> dict[str, int]:
        """Resets of this session per kind of reason (md.rejection_kind)."""
        counts: dict[str, int] = {}
        for _, reason in self.events:
            kind = rejection_kind(reason)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def snapshot(self) -> Atoms:
        """A calculator-free copy of the current frame."""
        frame = self.atoms.copy()
        frame.calc = None
        return frame

    def last_good_frame(self) -> Atoms:
        """The frame a reset goes back to (calculator-free copy)."""
        frame = self.snapshot()
        frame.set_cell(self.last_good.state.cell)
        frame.set_positions(self.last_good.state.positions)
        return frame

    def state(self) -> MDState:
        """The MD state of the current frame with the integrator's (the RNG state is saved by the owner of
        `rng`)."""
        return md_state(self.atoms, step=self.step, dyn=self.dyn)

    def restore(self, state: MDState, *, last_good: MDState | None = None) -> None:
        """Continue from a saved MD state; the last good frame is `last_good` or the restored frame."""
        restore_md_state(self.atoms, state, self.dyn)
        if last_good is None:
            self.last_good.record(self.atoms, step=self.step)
        else:
            self.last_good.state = last_good
        if self.atoms.calc is not None:
            self.atoms.calc.reset()
