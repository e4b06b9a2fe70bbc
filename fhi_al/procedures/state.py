"""Typed restart state of the procedures: what each procedure saves after every label, round and MD visit,
a frame waiting for its label, and the versioned conversion to and from the JSON records of fhi_al.restart.

Layout versions of a procedure record (the `data` of a restart record):
  1  the dict layout before typed state (no `version` key); AL pending frames sit in their trajectory
  2  `kind` and `version` keys; every pending frame is a PendingLabel in the top-level `pending` map
  3  the initial dataset has one sampler per system (`samplers`, and `next_sampler` of the round robin)
Versions 1 and 2 records still load (their one sampler is system 0's); a newer version, another procedure's
record or a damaged one is refused with a message that names the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from ase import Atoms

from ..md import MDState
from ..restart import RestartRecordError, load_record, save_record

log = logging.getLogger(__name__)

STATE_VERSION = 3
LEGACY_VERSION = 1  # records without a version key
INITIAL_KIND = "initial_dataset"
AL_KIND = "active_learning"

S = TypeVar("S")


@dataclass
class PendingLabel:
    """A frame sent (or about to be sent) to the reference; on disk before the request leaves."""

    label_id: str
    md_step: int
    positions: np.ndarray  # Å, of the atoms of the trajectory it comes from
    trajectory: int = 0
    kind: str | None = None  # why an AL frame was labelled: "threshold", "blow-up", ...
    cell: np.ndarray | None = None  # Å; None: the template's (records of version 1, which had no cell)

    def atoms(self, template: Atoms) -> Atoms:
        """The frame: a calculator-free copy of `template` (same atoms) at the saved positions and cell."""
        frame = template.copy()
        frame.calc = None
        if self.cell is not None:
            frame.set_cell(self.cell)
        frame.set_positions(self.positions)
        return frame

    def to_record(self) -> dict[str, Any]:
        record = {"label_id": self.label_id, "md_step": int(self.md_step), "positions": self.positions,
                  "trajectory": int(self.trajectory)}
        if self.kind is not None:
            record["kind"] = self.kind
        if self.cell is not None:
            record["cell"] = self.cell
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], *, label_id: str | None = None, trajectory: int = 0) -> PendingLabel:
        """Both layouts: version 1 kept the id as the map's key (initial) and the trajectory implicit."""
        return cls(label_id=str(record.get("label_id", label_id)), md_step=int(record["md_step"]),
                   positions=np.asarray(record["positions"], dtype=float),
                   trajectory=int(record.get("trajectory", trajectory)), kind=record.get("kind"),
                   cell=None if record.get("cell") is None else np.asarray(record["cell"], dtype=float))


def pending_to_record(pending: dict[str, PendingLabel]) -> dict[str, Any]:
    return {label_id: label.to_record() for label_id, label in pending.items()}


def pending_from_record(records: dict[str, Any] | None) -> dict[str, PendingLabel]:
    return {label_id: PendingLabel.from_record(record, label_id=label_id)
            for label_id, record in (records or {}).items()}


@dataclass
class SamplerState:
    """Where the initial dataset's sampler stands: its MD (MD samplers) or its count of samples drawn
    (normal-mode sampling), its RNG stream and its failures."""

    md: MDState | None
    rng: dict[str, Any]  # numpy bit-generator state (fhi_al.restart.rng_state)
    failures: int = 0
    samples: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"md": None if self.md is None else self.md.to_record(), "rng": self.rng,
                "failures": int(self.failures), "samples": int(self.samples)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SamplerState:
        md = record.get("md")
        return cls(md=None if md is None else MDState.from_record(md), rng=record["rng"],
                   failures=int(record.get("failures", 0)), samples=int(record.get("samples", 0)))


@dataclass
class InitialDatasetState:
    """The initial dataset's progress: rounds done, epochs per member, members still owing a round's
    training, their latest validation metrics, the samplers (one per system, in the order of the run's
    systems), the next one of the round robin and the frames waiting for a label."""

    round: int = 0
    epochs: int = 0
    trained: list[str] = field(default_factory=list)  # tags whose training of the current round is owed
    metrics: dict[str, dict[str, float] | None] = field(default_factory=dict)
    samplers: list[SamplerState] = field(default_factory=list)  # empty before the first frame
    next_sampler: int = 0  # position in `samplers` of the system that gives the next frame
    pending: dict[str, PendingLabel] = field(default_factory=dict)

    kind = INITIAL_KIND

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": STATE_VERSION, "round": self.round, "epochs": self.epochs,
                "trained": list(self.trained), "metrics": self.metrics,
                "samplers": [sampler.to_record() for sampler in self.samplers],
                "next_sampler": int(self.next_sampler), "pending": pending_to_record(self.pending)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> InitialDatasetState:
        if "samplers" in record:
            samplers = [SamplerState.from_record(sampler) for sampler in record["samplers"]]
        else:  # versions 1 and 2: the one sampler of a single-system run (None before the first frame)
            samplers = [] if record["sampler"] is None else [SamplerState.from_record(record["sampler"])]
        return cls(round=int(record["round"]), epochs=int(record["epochs"]), trained=list(record["trained"]),
                   metrics=dict(record["metrics"]), samplers=samplers,
                   next_sampler=int(record.get("next_sampler", 0)), pending=pending_from_record(record["pending"]))


@dataclass
class TrajectoryState:
    """One AL trajectory: its MD, last good frame, RNG stream and place in the loop."""

    index: int
    status: str
    md: MDState
    last_good: MDState
    rng: dict[str, Any]
    epochs_left: int = 0
    labels: int = 0
    resets: int = 0
    resets_in_a_row: int = 0
    last_label_step: int | None = None  # MD step of the trajectory's last frame sent to the reference
    remote_until: dict[str, int] = field(default_factory=dict)  # epochs each remote member must reach first

    def to_record(self) -> dict[str, Any]:
        return {"index": self.index, "status": self.status, "md": self.md.to_record(),
                "last_good": self.last_good.to_record(), "rng": self.rng, "epochs_left": self.epochs_left,
                "labels": self.labels, "resets": self.resets, "resets_in_a_row": self.resets_in_a_row,
                "last_label_step": self.last_label_step, "remote_until": self.remote_until}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrajectoryState:
        return cls(index=int(record["index"]), status=str(record["status"]), md=MDState.from_record(record["md"]),
                   last_good=MDState.from_record(record["last_good"]), rng=record["rng"],
                   epochs_left=int(record["epochs_left"]), labels=int(record["labels"]), resets=int(record["resets"]),
                   resets_in_a_row=int(record.get("resets_in_a_row", 0)),
                   last_label_step=record.get("last_label_step"),
                   remote_until={str(k): int(v) for k, v in record.get("remote_until", {}).items()})


@dataclass
class ActiveLearningState:
    """Active learning's progress: labels, members' metrics and optimizer patience, the threshold tracker,
    the trajectories and the frames waiting for a label."""

    labels: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)  # checks without improvement, per member
    best_loss: dict[str, float] = field(default_factory=dict)
    threshold: dict[str, Any] | None = None  # fhi_al.uncertainty.ThresholdTracker.state_dict()
    trajectories: list[TrajectoryState] | None = None
    pending: dict[str, PendingLabel] = field(default_factory=dict)
    # members trained on other ML ranks (ml_ranks > 1): epochs assigned to each and finished by each
    remote_assigned: dict[str, int] = field(default_factory=dict)
    remote_done: dict[str, int] = field(default_factory=dict)
    # calibration scales and replica-exchange bookkeeping (fhi_al.procedures.exploration); absent in older records
    exploration: dict[str, Any] = field(default_factory=dict)

    kind = AL_KIND

    def to_record(self) -> dict[str, Any]:
        trajectories = None if self.trajectories is None else [t.to_record() for t in self.trajectories]
        return {"kind": self.kind, "version": STATE_VERSION, "labels": self.labels, "metrics": self.metrics,
                "stale": self.stale, "best_loss": self.best_loss, "threshold": self.threshold,
                "trajectories": trajectories, "pending": pending_to_record(self.pending),
                "remote_assigned": self.remote_assigned, "remote_done": self.remote_done,
                "exploration": self.exploration}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ActiveLearningState:
        saved = record["trajectories"]
        pending = pending_from_record(record.get("pending"))
        for trajectory in saved or []:  # version 1: the frame waiting for its label sat in its trajectory
            if trajectory.get("pending"):
                label = PendingLabel.from_record(trajectory["pending"], trajectory=int(trajectory["index"]))
                pending[label.label_id] = label
        return cls(labels=int(record["labels"]), metrics=dict(record["metrics"]), stale=dict(record["stale"]),
                   best_loss=dict(record["best_loss"]), threshold=record["threshold"],
                   trajectories=None if saved is None else [TrajectoryState.from_record(t) for t in saved],
                   pending=pending, remote_assigned=_counts(record.get("remote_assigned")),
                   remote_done=_counts(record.get("remote_done")), exploration=dict(record.get("exploration") or {}))


def _counts(record: dict[str, Any] | None) -> dict[str, int]:
    return {str(tag): int(count) for tag, count in (record or {}).items()}


def state_from_record(cls: type[S], record: Any, *, where: str) -> S:
    """`record` (a decoded restart record) as a `cls` state; refuses what this version cannot read."""
    if not isinstance(record, dict):
        raise RestartRecordError(f"{where}: restart record holds {type(record).__name__}, not a procedure state; "
                                 f"delete it to start over")
    version = record.get("version", LEGACY_VERSION)
    kind = record.get("kind", cls.kind)
    if kind != cls.kind:
        raise RestartRecordError(f"{where}: restart record belongs to {kind!r}, not {cls.kind!r}")
    if not isinstance(version, int) or not LEGACY_VERSION <= version <= STATE_VERSION:
        raise RestartRecordError(f"{where}: restart record has state version {version!r}; this fhi_al reads "
                                 f"versions {LEGACY_VERSION} to {STATE_VERSION} (written by a newer fhi_al? "
                                 f"run that one, or delete the file to start this step over)")
    try:
        return cls.from_record(record)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RestartRecordError(f"{where}: restart record (state version {version}) is incomplete or damaged "
                                 f"({type(error).__name__}: {error}); delete it to start this step over") from None


class StateFile:
    """Where a procedure's state lives: loaded once at the start, rewritten atomically on every save
    (or never, with create_restart off)."""

    def __init__(self, path: str | os.PathLike, cls: type[S], *, enabled: bool = True):
        self.path = Path(path)
        self.cls = cls
        self.enabled = enabled

    def load(self) -> Any:
        """The saved state, or a fresh one when there is none (or restart records are off)."""
        record = load_record(self.path) if self.enabled else None
        if record is None:
            return self.cls()
        return state_from_record(self.cls, record, where=str(self.path))

    def save(self, state: Any) -> None:
        if self.enabled:
            save_record(self.path, state.to_record())
