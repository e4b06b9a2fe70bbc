"""Pieces both procedures share: the ensemble's members (tags, seeds, their datasets on disk), the
reference, and the trainer, built from the validated settings of a run folder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from ..data.store import DatasetStore
from ..ensemble import ensemble_seeds
from ..training.config import TrainingConfig
from ..training.engine import Member, Trainer, member_tag

log = logging.getLogger(__name__)

TRAIN, VALID = "train", "valid"


@dataclass(frozen=True)
class Stage:
    """A procedure's names on disk, fixed because the markers, restart records and datasets of earlier runs
    use them: `marker` marks the procedure done (restart.mark_done); `prefix` starts its label ids, names its
    datasets' folder (data/<prefix>/) and is the labels' `procedure` provenance."""

    marker: str
    prefix: str


INITIAL_STAGE = Stage(marker="initial_dataset", prefix="initial")
AL_STAGE = Stage(marker="active_learning", prefix="al")


@dataclass(frozen=True)
class MemberSpec:
    """Identity of one ensemble member: its tag and seed."""

    index: int
    tag: str
    seed: int


def member_specs(*, name_exp: str, seed: int, ensemble_size: int) -> list[MemberSpec]:
    """Members' seeds follow from GENERAL.seed (the first is the seed itself); tags are '{name_exp}_{seed}'."""
    seeds = ensemble_seeds(seed, ensemble_size)
    return [MemberSpec(index, member_tag(name_exp, member_seed), member_seed) for index, member_seed in enumerate(seeds)]


def dataset_name(stage: str, split: str, tag: str) -> str:
    """Store name of a member's split, e.g. 'initial/train_water_42' -> data/initial/train_water_42.xyz."""
    return f"{stage}/{split}_{tag}"


SHARED_TAG = "shared"  # initial sets every member trains on (initial_member_data: shared)


def initial_member_sets(store: DatasetStore, tag: str, *, stage: str = INITIAL_STAGE.prefix) -> tuple[list, list]:
    """A member's initial training and validation frames: its own sets and the shared ones (either may be
    empty, so a run folder built with either initial_member_data reads the same way)."""
    train = store.read(dataset_name(stage, TRAIN, tag)) + store.read(dataset_name(stage, TRAIN, SHARED_TAG))
    valid = store.read(dataset_name(stage, VALID, tag)) + store.read(dataset_name(stage, VALID, SHARED_TAG))
    return train, valid


def make_trainer(settings: Any, run_dir: Path, *, device: str | None = None) -> Trainer:
    """The trainer of the run's settings (on `device` instead of MISC.device when given)."""
    config = TrainingConfig.from_settings(settings, valid_skip=settings.al.active_learning.valid_skip)
    if device is not None:
        config = dataclasses.replace(config, device=device)
    return Trainer(config, run_dir)


AL_TRAIN, AL_VALID = f"{AL_STAGE.prefix}/train", f"{AL_STAGE.prefix}/valid"


def al_member_data(store: DatasetStore, tag: str) -> tuple[list, list]:
    """A member's training and validation frames during active learning: its initial sets and every AL label."""
    train, valid = initial_member_sets(store, tag, stage=INITIAL_STAGE.prefix)
    return train + store.read(AL_TRAIN), valid + store.read(AL_VALID)


def make_store(settings: Any, run_dir: Path, *, reader: bool = False) -> DatasetStore:
    """The run's datasets; `reader`: on a rank that only reads them while rank 0 writes (a training rank)."""
    return DatasetStore(run_dir / settings.al.active_learning.dataset_dir, reader=reader)


def load_or_create_member(trainer: Trainer, spec: MemberSpec, train: Sequence[Atoms],
                          valid: Sequence[Atoms]) -> Member:
    """The member from its latest checkpoint (warm start across restarts), else a new one."""
    if trainer.checkpoints.latest_path(spec.tag) is not None:
        return trainer.load_member(spec.tag, train_atoms=list(train), valid_atoms=list(valid))
    return trainer.create_member(spec.tag, spec.seed, list(train), list(valid))


def train_and_checkpoint(trainer: Trainer, member: Member, epochs: int, **options: Any) -> dict[str, float]:
    """`epochs` epochs of warm-started training (Trainer.train `options`), then a checkpoint -> the member's
    validation metrics (evaluated now when no validation fell inside the epochs)."""
    metrics = trainer.train(member, epochs, **options) or trainer.evaluate(member, member.valid_atoms)
    trainer.save_checkpoint(member)
    return metrics


def ensemble_forces_mae(metrics: Sequence[dict[str, float] | None]) -> float:
    """Mean over members of their validation force MAE (eV/Å); inf while any member has none."""
    values = [m["forces_mae"] for m in metrics if m is not None]
    if not values or len(values) < len(metrics):
        return float("inf")
    return float(np.mean(values))
