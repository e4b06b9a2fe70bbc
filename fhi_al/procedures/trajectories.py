"""MLFF trajectories of the active-learning loop: Langevin MD on the ensemble mean, each with its own RNG
stream, a small state machine (running -> waiting for the reference -> training -> running) and the
state it needs to resume after a kill.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..md import BlowUpDetector, LastGoodFrame, initialize_velocities, make_langevin, md_state, restore_md_state
from ..restart import restore_rng, rng_state
from ..uncertainty import frame_uncertainty
from .sampling import MDParameters

log = logging.getLogger(__name__)

RUNNING = "running"
WAITING = "waiting"  # for the reference label of `pending`
TRAINING = "training"  # epochs_left epochs of training owed before MD resumes
FINISHED = "finished"  # reached max_MD_steps


@dataclass
class Check:
    """One uncertainty check of a trajectory frame."""

    md_step: int
    uncertainty_eV_per_A: float
    frame: Atoms  # calculator-free copy


@dataclass
class Trajectory:
    """One MLFF trajectory. `dyn` is an ase.md Langevin run on `atoms` (calculator: the ensemble)."""

    index: int
    atoms: Atoms
    dyn: Any
    rng: np.random.Generator
    md: MDParameters
    status: str = RUNNING
    pending: dict[str, Any] | None = None  # the frame waiting for its label: label_id, positions, md_step
    epochs_left: int = 0
    labels: int = 0
    resets: int = 0
    resets_in_a_row: int = 0  # since the last frame that passed the checks
    last_label_step: int | None = None  # MD step of this trajectory's last frame sent to the reference
    last_good: LastGoodFrame = field(init=False)

    def __post_init__(self):
        self.last_good = LastGoodFrame(self.atoms, step=self.step)

    @property
    def step(self) -> int:
        return int(self.dyn.nsteps)

    def advance(self, steps: int, detector: BlowUpDetector) -> str | None:
        """Run `steps` MD steps; a blow-up (or a failed model call) resets to the last good frame."""
        try:
            self.dyn.run(steps)
            reason = detector.check(self.atoms)
        except Exception as error:  # noqa: BLE001 - any failure of the model call is a bad frame
            reason = f"model evaluation failed: {type(error).__name__}: {error}"
        if reason is None:
            self.last_good.record(self.atoms, step=self.step)
            self.resets_in_a_row = 0
        else:
            self.reset(reason)
        return reason

    def last_good_frame(self) -> Atoms:
        """The frame the trajectory goes back to after a blow-up (calculator-free copy)."""
        frame = self.atoms.copy()
        frame.calc = None
        frame.set_positions(self.last_good.state["positions"])
        return frame

    def reset(self, reason: str) -> None:
        # The step counter keeps running, so label ids (made from the step) stay unique after a reset.
        good_step = self.last_good.reset(self.atoms, temperature_K=self.md.temperature_K, rng=self.rng)
        self.atoms.calc.reset()
        self.resets += 1
        self.resets_in_a_row += 1
        log.warning("trajectory %d step %d: %s; back to the frame of step %d with fresh velocities", self.index,
                    self.step, reason, good_step)

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

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "status": self.status, "md": md_state(self.atoms, step=self.step),
                "last_good": self.last_good.state, "rng": rng_state(self.rng), "pending": self.pending,
                "epochs_left": self.epochs_left, "labels": self.labels, "resets": self.resets,
                "resets_in_a_row": self.resets_in_a_row, "last_label_step": self.last_label_step}

    def restore(self, state: dict[str, Any]) -> None:
        restore_md_state(self.atoms, state["md"], self.dyn)
        self.last_good.state = state["last_good"]
        self.rng.bit_generator.state = restore_rng(state["rng"]).bit_generator.state
        self.status, self.pending = state["status"], state["pending"]
        self.epochs_left, self.labels, self.resets = state["epochs_left"], state["labels"], state["resets"]
        self.resets_in_a_row = state.get("resets_in_a_row", 0)
        self.last_label_step = state.get("last_label_step")
        self.atoms.calc.reset()


def make_trajectories(start: Atoms, calc: Calculator, *, count: int, md: MDParameters,
                      seed: int) -> list[Trajectory]:
    """`count` trajectories from the same start, each with its own RNG stream and velocities."""
    streams = np.random.SeedSequence(seed).spawn(count)
    trajectories = []
    for index, stream in enumerate(streams):
        rng = np.random.default_rng(stream)
        atoms = start.copy()
        atoms.calc = calc
        initialize_velocities(atoms, md.temperature_K, rng)
        dyn = make_langevin(atoms, temperature_K=md.temperature_K, timestep_fs=md.timestep_fs,
                            friction_per_fs=md.friction_per_fs, rng=rng)
        trajectories.append(Trajectory(index=index, atoms=atoms, dyn=dyn, rng=rng, md=md))
    return trajectories
