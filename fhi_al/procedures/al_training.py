"""Active learning's training side: rank 0's copies of the members (the ensemble the MD uses), the members rank 0
trains itself, the ones other ML ranks train (fhi_al.procedures.member_ranks), optimiser patience and the final
convergence.

Each new label owes every member max_epochs_worker epochs. Rank 0 trains its own members in visits of
intermediate_epochs, taken in turn with the trajectories' MD; the trajectory that asked for the label resumes
once every member has trained its epochs (its own and the remote ones), while the others run on with the
current weights.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ase import Atoms

from ..logs import DETAIL
from ..parallel import ROOT
from .common import train_and_checkpoint
from .member_ranks import RemoteMembers, member_owners

log = logging.getLogger(__name__)


class EnsembleTraining:
    def __init__(self, trainer: Any, members: dict[str, Any], state: Any, al: Any, *, comm: Any = None,
                 timings: Any = None):
        self.trainer, self.members, self.state, self.al, self.timings = trainer, members, state, al, timings
        owners = member_owners(list(members), al.ml_ranks)
        self.local_tags = [tag for tag, rank in owners.items() if rank == ROOT]
        self.remote = RemoteMembers(comm, {tag: rank for tag, rank in owners.items() if rank != ROOT}, members,
                                    assigned=state.remote_assigned, done=state.remote_done)
        if self.remote.ranks:
            log.info("%d ML ranks: rank 0 runs the MD and trains %s; %s.", al.ml_ranks,
                     ", ".join(self.local_tags) or "no member",
                     "; ".join(f"rank {rank} trains {', '.join(self.remote.tags_of(rank))}"
                               for rank in self.remote.ranks))
        self.remote.start()

    # ------------------------------------------------------------------------------------------ labels
    def add_label(self, labelled: Atoms | None, *, valid: bool) -> tuple[int, dict[str, int]]:
        """A label stored (None: stored before a restart) -> (epochs rank 0 owes it, remote epoch targets)."""
        epochs = self.al.max_epochs_worker
        return (epochs if self.local_tags else 0), self.remote.add_label(labelled, valid=valid, epochs=epochs)

    def trained(self, epochs_left: int, remote_until: dict[str, int]) -> bool:
        """Has every member trained the epochs a label owed it?"""
        return epochs_left <= 0 and self.remote.reached(remote_until)

    # ------------------------------------------------------------------------------------------ training
    def visit(self, epochs: int) -> None:
        """Rank 0's members train `epochs` epochs (warm start), checkpointed."""
        started = time.perf_counter()
        for tag in self.local_tags:
            metrics = train_and_checkpoint(self.trainer, self.members[tag], epochs, valid_skip=self.al.valid_skip,
                                           report=False)
            self.track_progress(tag, metrics)
        self.timings.training_s += time.perf_counter() - started

    def collect(self) -> int:
        """Weights the training ranks sent since the last call (never waits) -> how many."""
        arrived = self.remote.collect()
        for message in arrived:
            self.track_progress(message.tag, message.metrics)
        return len(arrived)

    @property
    def outstanding(self) -> bool:
        return self.remote.outstanding

    def track_progress(self, tag: str, metrics: dict[str, float]) -> None:
        """Latest metrics per member; a member stuck for reset_optimizer_after checks gets a fresh optimizer."""
        self.state.metrics[tag] = metrics
        best = self.state.best_loss.get(tag, float("inf"))
        if metrics["loss"] < best:
            self.state.best_loss[tag], self.state.stale[tag] = metrics["loss"], 0
            return
        self.state.stale[tag] = self.state.stale.get(tag, 0) + 1
        limit = self.al.reset_optimizer_after
        if limit is not None and self.state.stale[tag] >= limit:
            log.info("%s: no improvement in %d checks; resetting its optimizer.", tag, limit, extra=DETAIL)
            if tag in self.remote.owners:
                self.remote.reset_optimizer(tag)
            else:
                self.trainer.reset_optimizer(self.members[tag])
            self.state.stale[tag] = 0

    # ------------------------------------------------------------------------------------------ the end
    def finish(self) -> list[Any]:
        """Training ranks stop training; with converge_al the chosen members train to convergence, each on its
        own rank, concurrently -> their fhi_al.training.stopping.TrainingStop."""
        tags = self.converge_tags()
        if tags:
            log.info("Final training of %s (at most %d epochs each, patience %d).", ", ".join(tags),
                     self.al.max_final_epochs, self.al.patience)
        self.remote.finish(tags, max_epochs=self.al.max_final_epochs, patience=self.al.patience,
                           margin=self.al.margin)
        started = time.perf_counter()
        stops = [self.converge_here(tag) for tag in tags if tag not in self.remote.owners]
        for message in self.remote.settled():
            stops.append(message.stop)
            if message.stop.metrics is not None:
                self.state.metrics[message.tag] = message.stop.metrics
        self.timings.training_s += time.perf_counter() - started
        return sorted(stops, key=lambda stop: tags.index(stop.tag))

    def converge_tags(self) -> list[str]:
        if not self.al.converge_al:
            return []
        return [self.best_member()] if self.al.converge_best else list(self.members)

    def converge_here(self, tag: str) -> Any:
        log.info("Converging %s on the final data (at most %d epochs).", tag, self.al.max_final_epochs, extra=DETAIL)
        stop = self.trainer.converge(self.members[tag], self.al.max_final_epochs, self.al.patience, self.al.margin)
        if stop.metrics is not None:
            self.state.metrics[tag] = stop.metrics
        return stop

    def best_member(self) -> str:
        return min(self.members, key=lambda tag: self.state.metrics.get(tag, {}).get("loss", float("inf")))
