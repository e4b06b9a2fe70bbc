"""Start from what the user has: the given datasets (ACTIVE_LEARNING.initial_train_dataset / initial_valid_dataset)
become the initial datasets, the models in model/ (if any) the initial ensemble; without models the members are
trained on the given data first. The initial-dataset step is then marked done, with where its data came from.

Restart: everything is checked before the first write; dataset files are written atomically; members train
from their checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..data.given import GivenDatasets, read_given
from ..errors import InputError
from ..restart import is_done, mark_done
from ..systems import atomic_numbers
from .common import (INITIAL_STAGE, SHARED_TAG, TRAIN, VALID, MemberSpec, dataset_name, initial_member_sets,
                     load_or_create_member, make_store, make_trainer, member_specs, train_and_checkpoint)

log = logging.getLogger(__name__)


def run(context: Any) -> None:
    GivenStart(context).run()


def given_datasets(context: Any, specs: list[MemberSpec]) -> GivenDatasets:
    """The run's given datasets, checked (InputError naming the key and file)."""
    return read_given(context.settings.al.active_learning, run_dir=Path(context.run_dir),
                      elements=atomic_numbers(context.systems),
                      tags=[spec.tag for spec in specs], shared_tag=SHARED_TAG)


class GivenStart:
    def __init__(self, context: Any):
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.al = context.settings.al.active_learning
        self.specs = member_specs(name_exp=context.settings.mace.general.name_exp,
                                  seed=context.settings.mace.general.seed, ensemble_size=self.al.ensemble_size)
        self.store = make_store(context.settings, self.run_dir)

    def run(self) -> None:
        if is_done(self.run_dir, INITIAL_STAGE.marker):
            log.info("The initial dataset is complete already (%s); nothing to do.", self.run_dir / "done")
            return
        given = given_datasets(self.context, self.specs)
        self.trainer = make_trainer(self.context.settings, self.run_dir)
        models = self.existing_models()
        adopted = self.adopt(models, given) if models else {}  # checked before anything is written
        self.store_datasets(given)
        members = adopted or self.train_members()
        for member in members.values():
            self.trainer.save_checkpoint(member)
            if not adopted:
                self.trainer.export(member)
        origin = "model/ (given)" if adopted else "trained on the given data"
        mark_done(self.run_dir, INITIAL_STAGE.marker, {"labels": given.num_frames, "source": given.sources,
                                                       "members": origin})
        log.info("Initial dataset from the given files (%d frames: %s); ensemble %s.", given.num_frames,
                 ", ".join(f"{name} <- {path}" for name, path in given.sources.items()), origin)

    def existing_models(self) -> dict[str, Path]:
        """model/<tag>.model of the members: all or none (a partial ensemble is an InputError)."""
        found = {spec.tag: self.trainer.model_path(spec.tag) for spec in self.specs
                 if self.trainer.model_path(spec.tag).is_file()}
        if found and len(found) < len(self.specs):
            missing = [spec.tag for spec in self.specs if spec.tag not in found]
            raise InputError(f"holds models of {sorted(found)} but not of {missing}; give every member's model "
                             f"(<tag>.model) or none, so that they are trained on the given data",
                             where=str(self.trainer.model_path(self.specs[0].tag).parent))
        return found

    def adopt(self, models: dict[str, Path], given: GivenDatasets) -> dict[str, Any]:
        from ..training.existing import member_from_model_file

        members = {}
        for spec in self.specs:
            train, valid = self.member_sets(given, spec.tag)
            members[spec.tag] = member_from_model_file(self.trainer, spec.tag, spec.seed, models[spec.tag], train,
                                                       valid)
        return members

    @staticmethod
    def member_sets(given: GivenDatasets, tag: str) -> tuple[list, list]:
        return (given.train.get(tag, []) + given.train.get(SHARED_TAG, []),
                given.valid.get(tag, []) + given.valid.get(SHARED_TAG, []))

    def store_datasets(self, given: GivenDatasets) -> None:
        for split, sets in ((TRAIN, given.train), (VALID, given.valid)):
            for set_key, frames in sets.items():
                self.store.write(dataset_name(INITIAL_STAGE.prefix, split, set_key), frames)

    def train_members(self) -> dict[str, Any]:
        """Each member trains on the given data until its validation force MAE is below lambda x desired_acc
        or it has max_initial_epochs epochs (resumes from its checkpoint)."""
        target = self.al.lambda_ * self.al.desired_acc
        members = {}
        for spec in self.specs:
            train, valid = initial_member_sets(self.store, spec.tag, stage=INITIAL_STAGE.prefix)
            member = load_or_create_member(self.trainer, spec, train, valid)
            metrics = self.trainer.evaluate(member, member.valid_atoms) if member.epoch else None
            while member.epoch < self.al.max_initial_epochs and (metrics is None or metrics["forces_mae"] > target):
                epochs = min(self.al.intermediate_epochs, self.al.max_initial_epochs - member.epoch)
                metrics = train_and_checkpoint(self.trainer, member, epochs, use_scheduler=self.al.scheduler_initial,
                                               valid_skip=self.al.valid_skip)
            log.info("member %s: %d epochs on the given data, validation force MAE %.4f eV/Å.", spec.tag,
                     member.epoch, metrics["forces_mae"] if metrics else float("nan"))
            members[spec.tag] = member
        return members
