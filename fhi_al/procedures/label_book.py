"""The labels of one procedure in one place: the ids already stored, the frames waiting for their label
and the durable appends to the dataset store, plus where the procedure's wall time went.

Order of writes (what makes a kill at any moment lose and duplicate nothing): a pending frame is saved
in the restart record before its request leaves; a label is appended to the store before the record
forgets the pending frame; a label whose id is stored already is never appended again.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ase import Atoms

from ..data.store import DatasetStore, with_provenance
from ..logs import DETAIL
from ..md import FrameBounds, reference_force_rejection
from ..references.ledger import REJECTED, as_ledger
from .state import PendingLabel

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Wall time per activity of a procedure, in seconds."""

    reference_s: float = 0.0
    training_s: float = 0.0
    md_s: float = 0.0
    calibration_s: float = 0.0

    @contextmanager
    def measure(self, activity: str) -> Iterator[None]:
        """Adds the time spent in the block to `activity` (reference_s, training_s, md_s or calibration_s)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, activity, getattr(self, activity) + time.perf_counter() - started)

    def as_dict(self) -> dict[str, float]:
        times = {"reference_s": self.reference_s, "training_s": self.training_s, "md_s": self.md_s}
        if self.calibration_s:
            times["calibration_s"] = self.calibration_s
        return times


def all_label_ids(store: DatasetStore) -> set[str]:
    """Every label id stored anywhere in the run's datasets."""
    ids: set[str] = set()
    for name in store.names():
        ids |= store.label_ids(name)
    return ids


class LabelBook:
    """Owns the stored ids, the pending labels (shared with the procedure's restart state) and the appends.

    `save` writes the procedure's restart record; `template` gives the atoms a pending frame's positions
    belong to (the run's geometry or a trajectory's atoms), for the frames sent to the labeler. A label is
    stored as the structure it carries (`LabelResult.atoms`), with the provenance of its pending frame.
    With `bounds`, a label whose reference forces leave the physical region is rejected (`rejection`): it is
    recorded in `ledger` as rejected (its call stays paid) and never stored.
    """

    def __init__(self, store: DatasetStore, labeler: Any, *, pending: dict[str, PendingLabel], stage: str,
                 template: Callable[[PendingLabel], Atoms], save: Callable[[], None], timings: Timings,
                 bounds: FrameBounds | None = None, ledger: Any = None):
        self.store = store
        self.labeler = labeler
        self.pending = pending
        self.stage = stage
        self.template = template
        self.save = save
        self.timings = timings
        self.stored_ids = all_label_ids(store)
        self.bounds = bounds
        self.ledger = ledger
        self.rejected = 0  # labels rejected by the frame guard in this session

    def rejection(self, result: Any) -> str | None:
        """Why the computed label `result` must stay out of the datasets (logged to the file and recorded in
        the ledger), or None to store it."""
        if self.bounds is None or not result.ok:
            return None
        reason = reference_force_rejection(result.forces_eV_per_A, self.bounds.max_reference_force_eV_per_A)
        if reason is None:
            return None
        if self.ledger is not None:
            as_ledger(self.ledger).record(label_id=result.label_id, energy_eV=result.energy_eV, purpose=REJECTED,
                                          calls=0, reason=reason)
        self.rejected += 1
        log.info("label %s not stored: %s", result.label_id, reason, extra=DETAIL)
        return reason

    def is_stored(self, label_id: str) -> bool:
        return label_id in self.stored_ids

    def add(self, label: PendingLabel) -> None:
        """Record `label` as pending (saved before anything is asked of the reference)."""
        self.pending[label.label_id] = label
        self.save()

    def request(self, label: PendingLabel) -> None:
        """Record `label` as pending, then send its frame to the labeler."""
        self.add(label)
        self.labeler.submit(label.label_id, self.frame(label))

    def frame(self, label: PendingLabel) -> Atoms:
        return label.atoms(self.template(label))

    def resubmit(self) -> list[PendingLabel]:
        """After a restart: frames pending when the run stopped are asked again; those whose label was stored
        just before the kill are returned (still pending) for the procedure to account for."""
        stored = []
        for label in list(self.pending.values()):
            if self.is_stored(label.label_id):
                stored.append(label)
            else:
                self.labeler.submit(label.label_id, self.frame(label))
        return stored

    def take(self, result: Any) -> PendingLabel:
        """The pending frame `result` answers, no longer pending (the caller saves the record)."""
        self.timings.reference_s += result.seconds
        return self.pending.pop(result.label_id)

    def store_label(self, result: Any, label: PendingLabel, destination: str | Callable[[], str]) -> Atoms | None:
        """Append the label's structure with its provenance to dataset `destination` unless its id is stored
        already -> the stored frame."""
        if self.is_stored(result.label_id):
            return None
        labelled = with_provenance(result.atoms, procedure=self.stage, trajectory=label.trajectory,
                                   md_step=label.md_step)
        self.store.append(destination() if callable(destination) else destination, labelled)
        self.stored_ids.add(result.label_id)
        return labelled

    def drain(self, receive: Callable[[Any], Any], *, on_cancel: Callable[[PendingLabel], None] | None = None) -> None:
        """At the end, frames not yet sent to the reference are dropped (`on_cancel` is told before the record
        is saved); labels being computed are received when they arrive, so none that was computed is lost."""
        for label_id in self.labeler.cancel_queued():
            label = self.pending.pop(label_id, None)
            if label is not None and on_cancel is not None:
                on_cancel(label)
        self.save()
        while self.labeler.in_flight:
            for result in self.labeler.wait():
                receive(result)
