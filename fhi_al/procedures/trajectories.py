"""MLFF trajectories of the active-learning loop: MD on the ensemble mean (NVT or NPT, per trajectory), each with
its own RNG stream, a small state machine (running -> waiting for the reference -> training -> running) and the
state it needs to resume after a kill.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..md import (BlowUpDetector, FrameBounds, GuardedDynamics, LastGoodFrame, MDParameters, initialize_velocities,
                  make_dynamics)
from ..restart import restore_rng, rng_state
from ..uncertainty import frame_uncertainty
from .state import TrajectoryState

log = logging.getLogger(__name__)

RUNNING = "running"
WAITING = "waiting"  # for the reference label of its pending frame (held by the LabelBook)
TRAINING = "training"  # its label's training is owed (epochs_left on rank 0, remote_until elsewhere) before MD resumes
FINISHED = "finished"  # reached max_MD_steps


@dataclass
class Check:
    """One uncertainty check of a trajectory frame."""

    md_step: int
    uncertainty_eV_per_A: float
    frame: Atoms  # calculator-free copy


@dataclass
class Trajectory:
    """One MLFF trajectory: a GuardedDynamics on `atoms` (calculator: the ensemble) and its place in the
    active-learning loop (status, the frame waiting for its label, training owed, counters)."""

    index: int
    dynamics: GuardedDynamics
    md: MDParameters
    status: str = RUNNING
    epochs_left: int = 0
    labels: int = 0
    last_label_step: int | None = None  # MD step of this trajectory's last frame sent to the reference
    remote_until: dict[str, int] = field(default_factory=dict)  # epoch counts remote members must reach first

    @property
    def atoms(self) -> Atoms:
        return self.dynamics.atoms

    @property
    def rng(self) -> np.random.Generator:
        return self.dynamics.rng

    @property
    def step(self) -> int:
        return self.dynamics.step

    @property
    def last_good(self) -> LastGoodFrame:
        return self.dynamics.last_good

    @property
    def resets(self) -> int:
        return self.dynamics.resets

    @property
    def resets_in_a_row(self) -> int:
        """Resets since the last frame that passed the checks."""
        return self.dynamics.resets_in_a_row

    @resets_in_a_row.setter
    def resets_in_a_row(self, value: int) -> None:
        self.dynamics.resets_in_a_row = value

    def advance(self, steps: int, detector: BlowUpDetector | None = None) -> str | None:
        """Run `steps` MD steps; a blow-up (or a failed model call) resets to the last good frame."""
        if detector is not None:
            self.dynamics.detector = detector
        return self.dynamics.run(steps)

    def last_good_frame(self) -> Atoms:
        """The frame the trajectory goes back to after a blow-up (calculator-free copy)."""
        return self.dynamics.last_good_frame()

    def reset(self, reason: str) -> None:
        # The step counter keeps running, so label ids (made from the step) stay unique after a reset.
        self.dynamics.reset(reason)

    def spaced_from_last_label(self, spacing_steps: int) -> bool:
        """At least `spacing_steps` MD steps since this trajectory's last label (a frame closer to it is
        nearly the same structure, correlated with what was just learned)."""
        return self.last_label_step is None or self.step - self.last_label_step >= spacing_steps

    def check(self, reduction: str) -> Check:
        """Uncertainty of the current frame from the ensemble's per-member forces (already computed)."""
        results = self.atoms.calc.results
        if "forces_comm" not in results:
            self.atoms.get_forces()
            results = self.atoms.calc.results
        frame = self.atoms.copy()
        frame.calc = None
        return Check(self.step, frame_uncertainty(results["forces_comm"], reduction), frame)

    def state(self) -> TrajectoryState:
        return TrajectoryState(index=self.index, status=self.status, md=self.dynamics.state(),
                               last_good=self.last_good.state, rng=rng_state(self.rng), epochs_left=self.epochs_left,
                               labels=self.labels, resets=self.resets, resets_in_a_row=self.resets_in_a_row,
                               last_label_step=self.last_label_step, remote_until=dict(self.remote_until))

    def restore(self, state: TrajectoryState) -> None:
        self.dynamics.restore(state.md, last_good=state.last_good)
        self.rng.bit_generator.state = restore_rng(state.rng).bit_generator.state
        self.status, self.epochs_left, self.labels = state.status, state.epochs_left, state.labels
        self.dynamics.resets, self.resets_in_a_row = state.resets, state.resets_in_a_row
        self.last_label_step = state.last_label_step
        self.remote_until = dict(state.remote_until)


def make_trajectories(starts: Sequence[Atoms], calc: Calculator, *, mds: Sequence[MDParameters],
                      seed: int, bounds: FrameBounds | None = None) -> list[Trajectory]:
    """One trajectory per entry of `starts` (its starting structure) and `mds` (its MD settings), each with
    its own RNG stream and velocities, guarded by `bounds` (default FrameBounds())."""
    bounds = bounds or FrameBounds()
    if len(starts) != len(mds):
        raise ValueError(f"{len(starts)} starting structures for {len(mds)} MD settings")
    streams = np.random.SeedSequence(seed).spawn(len(starts))
    trajectories = []
    for index, (start, md, stream) in enumerate(zip(starts, mds, streams)):
        rng = np.random.default_rng(stream)
        atoms = start.copy()
        atoms.calc = calc
        initialize_velocities(atoms, md.temperature_K, rng)
        dynamics = GuardedDynamics(make_dynamics(atoms, md=md, rng=rng), rng=rng, temperature_K=md.temperature_K,
                                   name=f"trajectory {index}", failure="model evaluation failed",
                                   detector=bounds.detector(md.temperature_K))
        trajectories.append(Trajectory(index=index, dynamics=dynamics, md=md))
    return trajectories
