"""FHI_AL-relabel: every frame of a run's datasets recomputed with another reference (the REFERENCE section of
--reference-settings) through the labelling service, written under --output-dir with the same dataset names.

Restart: a frame whose label id is in its output dataset is never recomputed, and a label computed once is
copied to every dataset that holds the same frame (initial/al and final); appends are durable, so a killed
relabel resumes with only the labels in flight at the kill computed again. At the end each output file is
rewritten (atomically) in the order of its source; frames whose reference failed are listed, not written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from ..data.store import CONFIG_TYPE_KEY, DEFAULT_CONFIG_TYPE, DatasetStore, with_provenance
from ..durable import atomic_write_bytes
from ..labeling import LABEL_ID_KEY, LabelResult
from ..logs import DETAIL
from ..references.ledger import ReferenceCost, ledger_path
from ..restart import is_done, mark_done
from .common import make_store

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "data_relabel"
FAILED_FILE = "failed_labels.txt"
REQUEST_PREFIX = "relabel-"  # the ledger id of a recomputation: REQUEST_PREFIX + the frame's label id


@dataclass(frozen=True)
class RelabelRequest:
    """What FHI_AL-relabel was asked: where the new datasets go and the settings file of the new reference."""

    output_dir: Path  # absolute
    reference_settings: Path


@dataclass(frozen=True)
class SourceFrame:
    """A stored frame of the run: its dataset, position in it, structure and label id."""

    name: str
    index: int
    atoms: Atoms
    label_id: str


def source_frames(store: DatasetStore) -> list[SourceFrame]:
    """Every frame of every dataset of `store`, in file order (a frame without label id gets one from its place)."""
    frames = []
    for name in store.names():
        for index, atoms in enumerate(store.read(name)):
            label_id = str(atoms.info.get(LABEL_ID_KEY) or f"{name}#{index}")
            frames.append(SourceFrame(name, index, atoms, label_id))
    return frames


def relabelled(frame: SourceFrame, new: Atoms) -> Atoms:
    """The new label (`LabelResult.atoms` of the recomputation) with the provenance of the source frame."""
    atoms = new.copy()
    atoms.info[LABEL_ID_KEY] = frame.label_id
    info = frame.atoms.info
    return with_provenance(atoms, procedure=str(info.get("procedure", "given")),
                           trajectory=int(info.get("trajectory", 0)), md_step=int(info.get("md_step", frame.index)),
                           config_type=str(info.get(CONFIG_TYPE_KEY, DEFAULT_CONFIG_TYPE)))


def marker_name(output_dir: Path) -> str:
    """The completion marker of a relabelling into `output_dir` (a marker name allows [A-Za-z0-9_.-] only)."""
    return "relabel_" + re.sub(r"[^A-Za-z0-9_.-]", "_", output_dir.name)


def run(context: Any) -> None:
    Relabel(context).run()


class Relabel:
    def __init__(self, context: Any):
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.request: RelabelRequest = context.arguments
        self.source = make_store(context.settings, self.run_dir)
        self.output = DatasetStore(self.request.output_dir)
        self.labeler = context.services.labeler
        self.waiting: dict[str, list[SourceFrame]] = {}  # request id -> frames that get its label
        self.labels: dict[str, Atoms] = {}  # label id -> the new label (from this run or an earlier attempt)
        self.failed: dict[str, str] = {}  # label id -> error
        self.computed = 0
        self.present: dict[str, set[str]] = {}  # output dataset -> label ids it holds

    def run(self) -> None:
        marker = marker_name(self.request.output_dir)
        if is_done(self.run_dir, marker) and self.request.output_dir.is_dir():
            log.info("The relabelled datasets in %s are complete already; nothing to do (choose another "
                     "--output-dir for another reference).", self.request.output_dir)
            return
        frames = source_frames(self.source)
        if not frames:
            log.warning("No datasets in %s: nothing to relabel.", self.source.root)
            return
        self.labels = self.labels_done()
        log.info("Relabelling %d frames of %d datasets with %s (%d labels kept from an earlier attempt).",
                 len(frames), len(self.source.names()), self.context.settings.calculator, len(self.labels))
        for frame in frames:
            self.place(frame)
            self.receive(self.labeler.collect())
        while self.labeler.in_flight:
            self.receive(self.labeler.wait())
        self.receive(self.labeler.collect())
        self.reorder(frames)
        self.write_failed()
        self.report(frames)
        if not self.failed:
            mark_done(self.run_dir, marker, {"frames": len(frames), "computed": self.computed,
                                             "output_dir": str(self.request.output_dir)})

    def labels_done(self) -> dict[str, Atoms]:
        labels = {}
        for name in self.output.names():
            frames = self.output.read(name)
            self.present[name] = {str(atoms.info[LABEL_ID_KEY]) for atoms in frames}
            labels.update({str(atoms.info[LABEL_ID_KEY]): atoms for atoms in frames})
        return labels

    def append(self, frame: SourceFrame, label: Atoms) -> Atoms:
        stored = relabelled(frame, label)
        self.output.append(frame.name, stored)
        self.present.setdefault(frame.name, set()).add(frame.label_id)
        return stored

    def place(self, frame: SourceFrame) -> None:
        """Copy the frame's new label into its output dataset, or ask the reference for it (once per label id)."""
        if frame.label_id in self.present.get(frame.name, ()):
            return
        if frame.label_id in self.labels:
            self.append(frame, self.labels[frame.label_id])
            return
        request_id = REQUEST_PREFIX + frame.label_id
        if request_id in self.waiting:
            self.waiting[request_id].append(frame)
            return
        self.waiting[request_id] = [frame]
        self.labeler.submit(request_id, frame.atoms)

    def receive(self, results: list[LabelResult]) -> None:
        for result in results:
            frames = self.waiting.pop(result.label_id)
            self.computed += 1
            if not result.ok:
                self.failed[frames[0].label_id] = str(result.error)
                log.warning("Reference failed on %s; not written: %s", frames[0].label_id, result.error)
                continue
            for frame in frames:
                self.labels[frame.label_id] = self.append(frame, result.atoms)
            log.info("%s relabelled (%d dataset(s)).", frames[0].label_id, len(frames), extra=DETAIL)

    def reorder(self, frames: list[SourceFrame]) -> None:
        """Each output file in the order of its source file (labels arrive in any order in parallel mode)."""
        for name in self.output.names():
            order = {frame.label_id: frame.index for frame in frames if frame.name == name}
            stored = self.output.read(name)
            ordered = sorted(stored, key=lambda atoms: order.get(str(atoms.info[LABEL_ID_KEY]), len(order)))
            if [a.info[LABEL_ID_KEY] for a in ordered] != [a.info[LABEL_ID_KEY] for a in stored]:
                self.output.write(name, ordered)

    def write_failed(self) -> None:
        path = self.request.output_dir / FAILED_FILE
        if self.failed:
            lines = "".join(f"{label_id}\t{error}\n" for label_id, error in sorted(self.failed.items()))
            atomic_write_bytes(path, lines.encode("utf-8"))
        elif path.exists():
            path.unlink()

    def report(self, frames: list[SourceFrame]) -> None:
        written = sum(self.output.count(name) for name in self.output.names())
        log.info("Relabelling done: %d of %d frames written to %s, %d reference calls in this session, %d "
                 "failed%s.", written, len(frames), self.request.output_dir, self.computed, len(self.failed),
                 f" (listed in {self.request.output_dir / FAILED_FILE}; rerun to retry them)" if self.failed else "")
        log.info("Whole run so far: %s.", ReferenceCost.from_ledger(ledger_path(self.run_dir)).summary())
