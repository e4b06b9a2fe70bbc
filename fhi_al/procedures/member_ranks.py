"""Ensemble members trained on their own ranks (ACTIVE_LEARNING.ml_ranks > 1), while rank 0 keeps running MD.

Member i trains on ML rank (i + 1) mod ml_ranks, so the training ranks take members first and rank 0, which
also runs the MD, gets the fewest. Each training rank keeps its members' optimiser, EMA and checkpoints and
trains whenever it owes epochs: rank 0 sends every new label with its epoch budget (max_epochs_worker), the
training rank trains in visits of intermediate_epochs and sends the members' new weights and validation metrics
back after each visit. Rank 0 loads them into its copies, which the ensemble calculator of the MD uses, so the
trajectories pick up new weights when a visit ends.

Rank 0 and a training rank may send to each other at the same moment (a label one way, weights the other), so
both post their messages (`Outbox`) and keep receiving while one is under way.

Restart: the datasets on disk are the truth. A training rank reads its members' data from the store and their
latest checkpoints when rank 0 says start; a label it also receives as a message is recognised by its label_id.
Rank 0's record holds the epochs assigned to and finished by each remote member; the difference is owed again
after a restart (at most one visit that ended just before the kill is trained twice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ase import Atoms

from ..labeling.messages import TAG_TRAIN, TAG_TRAINED
from ..parallel import ROOT, local_rank, wait_until
from ..training.checkpoint import adopt_weights, weights_state
from .common import (al_member_data, load_or_create_member, make_store, make_trainer, member_specs,
                     train_and_checkpoint)

log = logging.getLogger(__name__)


def member_owners(tags: Sequence[str], ml_ranks: int) -> dict[str, int]:
    """The ML rank that trains each member: member i on rank (i + 1) mod ml_ranks (one ML rank: all on 0)."""
    return {tag: (index + 1) % ml_ranks for index, tag in enumerate(tags)}


def rank_device(device: str, *, ml_ranks: int, rank_on_node: int, gpus: int) -> str:
    """The torch device of an ML rank: with several ML ranks, `cuda` (no index) becomes this rank's own GPU,
    cuda:(local rank mod GPUs); any other device is used as given."""
    if ml_ranks > 1 and device == "cuda" and gpus > 0:
        return f"cuda:{rank_on_node % gpus}"
    return device


def ml_rank_device(settings: Any) -> str | None:
    """This rank's device when it differs from MISC.device (several ML ranks on GPUs), else None."""
    device = settings.mace.misc.device
    if device != "cuda":
        return None
    import torch

    chosen = rank_device(device, ml_ranks=settings.al.active_learning.ml_ranks, rank_on_node=local_rank(),
                         gpus=torch.cuda.device_count())
    return None if chosen == device else chosen


# ------------------------------------------------------------------------------------------ messages
@dataclass
class Start:
    epochs: int  # owed from before a restart


@dataclass
class NewLabels:
    labels: list[tuple[Atoms, bool]]  # (labelled frame, goes to validation)
    epochs: int  # added to the budget of every member of the rank


@dataclass
class ResetOptimizer:
    tag: str


@dataclass
class Converge:
    tags: list[str]
    max_epochs: int
    patience: int
    margin: float


@dataclass
class Settled:
    """A training rank's answer to Converge: it owes nothing and trains only when told again."""

    rank: int


@dataclass
class Trained:
    """After a visit (epochs > 0) or a convergence (stop set): a member's weights and validation metrics."""

    tag: str
    weights: dict[str, Any]
    metrics: dict[str, float] | None
    epochs: int = 0
    stop: Any = None  # fhi_al.training.stopping.TrainingStop of a convergence


class Outbox:
    """Messages posted and not yet known to be sent: MPI keeps their buffers until `Test` says so."""

    def __init__(self, comm: Any):
        self.comm, self.requests = comm, []

    def post(self, message: Any, *, dest: int, tag: int) -> None:
        self.requests.append(self.comm.post(message, dest=dest, tag=tag))
        self.flush()

    def flush(self) -> bool:
        """Forget the messages that are sent -> True when none is left."""
        self.requests = [request for request in self.requests if not request.Test()]
        return not self.requests


# ------------------------------------------------------------------------------------------ rank 0
@dataclass
class RemoteMembers:
    """Rank 0's side: sends labels and budgets to the training ranks, loads the weights they send back into
    `members` (rank 0's copies) and counts epochs assigned and finished per remote member."""

    comm: Any
    owners: dict[str, int]  # remote tag -> training rank
    members: dict[str, Any]
    assigned: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.comm)

    @property
    def ranks(self) -> list[int]:
        return sorted(set(self.owners.values()))

    def start(self) -> None:
        """Tell each training rank to load its members and what it owes from before a restart."""
        for rank in self.ranks:
            owed = max((self.assigned.get(tag, 0) - self.done.get(tag, 0) for tag in self.tags_of(rank)), default=0)
            self.outbox.post(Start(max(owed, 0)), dest=rank, tag=TAG_TRAIN)

    def tags_of(self, rank: int) -> list[str]:
        return [tag for tag, owner in self.owners.items() if owner == rank]

    def add_label(self, labelled: Atoms | None, *, valid: bool, epochs: int) -> dict[str, int]:
        """Send a stored label (None: stored before a restart, on disk already) with `epochs` to train ->
        the epoch counts each remote member must reach for it."""
        labels = [] if labelled is None else [(labelled, valid)]
        for rank in self.ranks:
            self.outbox.post(NewLabels(labels, epochs), dest=rank, tag=TAG_TRAIN)
        for tag in self.owners:
            self.assigned[tag] = self.assigned.get(tag, 0) + epochs
        return {tag: self.assigned[tag] for tag in self.owners}

    def reached(self, targets: dict[str, int]) -> bool:
        return all(self.done.get(tag, 0) >= epochs for tag, epochs in targets.items())

    def reset_optimizer(self, tag: str) -> None:
        self.outbox.post(ResetOptimizer(tag), dest=self.owners[tag], tag=TAG_TRAIN)

    def collect(self) -> list[Trained]:
        """Weights that arrived (never waits), loaded into rank 0's copies (not called after `finish`)."""
        return [self._adopt(message) for message in self._arrived()]

    def _arrived(self) -> list[Any]:
        """The training ranks' messages that can be received now (never waits); posted ones progress too."""
        self.outbox.flush()
        messages = []
        for rank in self.ranks:
            while self.comm.has_message(source=rank, tag=TAG_TRAINED):
                messages.append(self.comm.receive(source=rank, tag=TAG_TRAINED))
        return messages

    def _adopt(self, message: Trained) -> Trained:
        adopt_weights(self.members[message.tag], message.weights)
        self.done[message.tag] = self.done.get(message.tag, 0) + message.epochs
        return message

    @property
    def outstanding(self) -> bool:
        """Some remote member still owes epochs."""
        return any(self.done.get(tag, 0) < epochs for tag, epochs in self.assigned.items())

    def finish(self, tags: Sequence[str], *, max_epochs: int, patience: int, margin: float) -> None:
        """The end of active learning: every training rank drops the epochs it still owes and converges its
        members among `tags` (none: it only stops training); see `settled` for the answers."""
        for rank in self.ranks:
            mine = [tag for tag in tags if self.owners.get(tag) == rank]
            self.outbox.post(Converge(mine, max_epochs, patience, margin), dest=rank, tag=TAG_TRAIN)

    def settled(self) -> list[Trained]:
        """Wait (without spinning) until every training rank has answered `finish` -> the convergence results
        (visits still arriving are loaded too)."""
        results, settled = [], set()

        def arrived() -> bool:
            for message in self._arrived():
                if isinstance(message, Settled):
                    settled.add(message.rank)
                elif self._adopt(message).stop is not None:
                    results.append(message)
            return len(settled) == len(self.ranks) and self.outbox.flush()

        if self.ranks:
            wait_until(arrived)
        return results


# ------------------------------------------------------------------------------------------ training ranks
def serve_members(context: Any, comm: Any) -> None:
    """A training rank: train its members whenever it owes epochs, until rank 0 says stop."""
    first = comm.receive(source=ROOT, tag=TAG_TRAIN)
    if first is None:  # stopped before active learning started (e.g. it was complete already)
        return
    TrainingRank(context, comm, owed=first.epochs).serve()


class TrainingRank:
    """The members of one training rank, what they still owe, and the messages to and from rank 0."""

    def __init__(self, context: Any, comm: Any, *, owed: int):
        settings, run_dir = context.settings, Path(context.run_dir)
        self.al, self.comm, self.owed = settings.al.active_learning, comm, owed
        specs = member_specs(name_exp=settings.mace.general.name_exp, seed=settings.mace.general.seed,
                             ensemble_size=self.al.ensemble_size)
        owners = member_owners([spec.tag for spec in specs], self.al.ml_ranks)
        self.trainer = make_trainer(settings, run_dir, device=ml_rank_device(settings))
        store = make_store(settings, run_dir, reader=True)  # rank 0 appends to these files meanwhile
        self.members = {spec.tag: load_or_create_member(self.trainer, spec, *al_member_data(store, spec.tag))
                        for spec in specs if owners[spec.tag] == comm.rank}
        self.known = {atoms.info.get("label_id") for member in self.members.values()
                      for atoms in member.train_atoms + member.valid_atoms}
        self.inbox: list[Any] = []
        self.outbox = Outbox(comm)
        log.info("rank %d trains %s (owes %d epochs).", comm.rank, ", ".join(self.members), owed)

    def serve(self) -> None:
        while True:
            if self.owed <= 0 and not self.inbox:
                wait_until(lambda: self.comm.has_message(source=ROOT, tag=TAG_TRAIN))
            self.receive()
            messages, self.inbox = self.inbox, []
            for message in messages:
                if message is None:  # rank 0 has received everything before it says stop
                    return
                self.handle(message)
            if self.owed > 0:
                self.visit(min(self.al.intermediate_epochs, self.owed))

    def receive(self) -> None:
        """Rank 0's messages that arrived, into the inbox (never waits for one)."""
        while self.comm.has_message(source=ROOT, tag=TAG_TRAIN):
            self.inbox.append(self.comm.receive(source=ROOT, tag=TAG_TRAIN))

    def send(self, message: Any) -> None:
        """Post `message` to rank 0 and stay in MPI until it is sent, taking rank 0's messages meanwhile."""
        self.outbox.post(message, dest=ROOT, tag=TAG_TRAINED)
        wait_until(lambda: (self.receive(), self.outbox.flush())[1])

    def handle(self, message: Any) -> None:
        if isinstance(message, NewLabels):
            self.owed += message.epochs
            for labelled, valid in message.labels:
                if labelled.info.get("label_id") not in self.known:
                    self.known.add(labelled.info.get("label_id"))
                    for member in self.members.values():
                        (member.valid_atoms if valid else member.train_atoms).append(labelled)
        elif isinstance(message, ResetOptimizer):
            self.trainer.reset_optimizer(self.members[message.tag])
        elif isinstance(message, Converge):  # the end of active learning: epochs still owed are dropped, as
            self.owed = 0  # rank 0 drops its own
            for tag in message.tags:
                member = self.members[tag]
                stop = self.trainer.converge(member, message.max_epochs, message.patience, message.margin)
                self.trainer.save_checkpoint(member)
                self.send(Trained(tag, weights_state(member), stop.metrics, stop=stop))
            self.send(Settled(self.comm.rank))

    def visit(self, epochs: int) -> None:
        """Every member trains `epochs` epochs (warm start), is checkpointed, and rank 0 gets its weights."""
        for tag, member in self.members.items():
            metrics = train_and_checkpoint(self.trainer, member, epochs, valid_skip=self.al.valid_skip, report=False)
            self.send(Trained(tag, weights_state(member), metrics, epochs))
        self.owed -= epochs
