"""The initial dataset: sample structures (MD on the reference, on a foundation model or on xTB, or normal
modes), label them, give the members their training and validation frames (shared by all, or each its own:
initial_member_data), and train with warm start until the ensemble's validation force MAE is below
lambda x desired_acc or max_initial_epochs is reached.

Several systems: one sampler per system (MISC.path_to_geometry), asked for frames in turn (round robin), so
every round samples every system when it has at least as many labels as there are systems; the pending
frame's `trajectory` is its system's position. With split member data each label goes to the member that has
the fewest frames of its system.

Restart: labels are appended durably before the restart record moves on, so a rerun never loses or
duplicates one; members continue from their checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.splits import n_valid_to_add
from ..data.store import make_label_id
from ..errors import FhiAlError, InputError
from ..labeling import LabelResult, RemoteReference, label_from_results
from ..logs import DETAIL
from ..md import FrameBounds, MDParameters
from ..references import compute_label, reference_name, reference_timeout_from_settings
from ..references.ledger import AIMD_STEP, CountingCalculator, ReferenceCost, ledger_path
from ..restart import is_done, mark_done
from ..systems import GEOMETRY_KEY, describe, system_of
from . import reporting
from .common import (INITIAL_STAGE, SHARED_TAG, TRAIN, VALID, dataset_name, ensemble_forces_mae, initial_member_sets,
                     load_or_create_member, make_store, make_trainer, member_specs, train_and_checkpoint)
from .label_book import LabelBook, Timings
from . import system_metrics
from .normal_modes import make_normal_mode_sampler
from .sampling import GuardedReference, LangevinSampler, sampling_driver
from .state import InitialDatasetState, PendingLabel, StateFile

log = logging.getLogger(__name__)

RECORD_PATH = Path("restart") / "initial_ds" / "state.json"
HESSIAN_RECORD_PATH = Path("restart") / "initial_ds" / "hessian.npz"  # normal-mode sampling, one system
# Labels rejected by the frame guard in a row before sampling gives up (the bound, or the sampling, is wrong).
MAX_REJECTIONS_IN_A_ROW = 20


def hessian_record_path(system: Any, n_systems: int) -> Path:
    """Where the Hessian of `system` is kept: hessian.npz in a single-system run, hessian_<name>.npz else."""
    if n_systems == 1:
        return HESSIAN_RECORD_PATH
    return HESSIAN_RECORD_PATH.with_name(f"hessian_{system.name}.npz")


def run(context: Any) -> None:
    if context.settings.al.active_learning.initial_train_dataset is not None:
        from .given_start import run as start_from_given

        start_from_given(context)  # the user's datasets (and models) replace the sampling
        return
    InitialDataset(context).run()


class InitialDataset:
    def __init__(self, context: Any):
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.settings = context.settings
        self.al = context.settings.al.active_learning
        self.specs = member_specs(name_exp=context.settings.mace.general.name_exp,
                                  seed=context.settings.mace.general.seed, ensemble_size=self.al.ensemble_size)
        self.store = make_store(context.settings, self.run_dir)
        self.state_file = StateFile(self.run_dir / RECORD_PATH, InitialDatasetState,
                                    enabled=self.settings.al.misc.create_restart)
        self.timings = Timings()
        self.preparatory_calls = 0
        self.bounds = FrameBounds.from_settings(self.al)
        self.rejections_in_a_row = 0
        self.driver = None  # MD on a cheaper model (mace-mp0, xtb-md): one SamplingDriver for every system
        self.stops: list[Any] = []  # fhi_al.training.stopping.TrainingStop of converge_initial, per member

    # ------------------------------------------------------------------------------------------ steps
    def run(self) -> None:
        if is_done(self.run_dir, INITIAL_STAGE.marker):
            log.info("The initial dataset is complete already (%s); nothing to do.", self.run_dir / "done")
            return
        self.start_or_resume()
        while not self.finished():
            if not self.state.trained:  # a round whose training was interrupted is finished first
                self.collect_round()
            self.prefetch_next_round()
            self.train_round()
        self.book.drain(self.store_results_one)
        self.attach_members()
        self.converge_if_asked()
        self.export_models()
        self.report()
        mark_done(self.run_dir, INITIAL_STAGE.marker, {"labels": self.num_labels(), "epochs": self.state.epochs,
                                                       "final_training": [stop.as_record() for stop in self.stops]})
        log.info("Initial dataset complete: %d labels, %d epochs per member.", self.num_labels(), self.state.epochs)
        reporting.log_stops(self.stops)

    def start_or_resume(self) -> None:
        self.reference = self.context.services.reference
        self.labeler = self.context.services.labeler
        self.timeout_s = reference_timeout_from_settings(self.settings)
        self.systems = list(self.context.systems)
        if len(self.systems) > 1:
            log.info("%d systems: %s.", len(self.systems), describe(self.systems))
        log.info("Initial frames: %s (initial_member_data: %s).", "every member trains on every label"
                 if self.shared else "each member labels frames of its own", self.al.initial_member_data)
        self.samplers = [self.make_sampler(index, system) for index, system in enumerate(self.systems)]
        self.trainer = make_trainer(self.settings, self.run_dir)
        self.members: dict[str, Any] = {}
        self.state = self.state_file.load()
        if self.state.samplers:
            if len(self.state.samplers) != len(self.samplers):
                raise InputError(f"the restart record holds {len(self.state.samplers)} sampler(s) but "
                                 f"{GEOMETRY_KEY} gives {len(self.samplers)} system(s); use the systems the run "
                                 f"started with, or delete the record to start over", where=str(self.state_file.path))
            for sampler, saved in zip(self.samplers, self.state.samplers):
                sampler.restore(saved)
            log.info("Resuming the initial dataset at round %d (MD steps %s, %d labels stored).",
                     self.state.round, [sampler.step for sampler in self.samplers], self.num_labels())
        self.book = LabelBook(self.store, self.labeler, pending=self.state.pending, stage=INITIAL_STAGE.prefix,
                              template=lambda label: self.systems[label.trajectory].atoms, save=self.save_state,
                              timings=self.timings, bounds=self.bounds, ledger=ledger_path(self.run_dir))
        self.system_counts = self.count_member_systems()
        if self.book.stored_ids:
            self.attach_members()
        for label in self.book.resubmit():  # stored just before the kill: only the record is behind
            self.book.pending.pop(label.label_id)

    def make_sampler(self, index: int, system: Any):
        """The sampler of the run's `index`-th system (its own RNG stream; system 0 keeps the single-system one)."""
        md = self.settings.al.md_settings_for(0)  # the sampling MD is trajectory 0's
        rng = np.random.default_rng(md.seed if index == 0 else [md.seed, index])
        suffix = f" of {system.name}" if len(self.systems) > 1 else ""
        if self.al.initial_sampling == "aimd":
            # A local reference gets the label guards (timeout, NaN) for the MD steps too; the results of the
            # step that made a frame are that frame's label (see sample_frame).
            local = not isinstance(self.reference, RemoteReference)
            driver = GuardedReference(self.reference, timeout_s=self.timeout_s) if local else self.reference
            # every MD step is a reference call the user pays: one ledger line each
            driver = CountingCalculator(driver, ledger=ledger_path(self.run_dir), purpose=AIMD_STEP,
                                        id_prefix="aimd" + suffix.replace(" of ", "-"))
            name = "ab initio MD"
        elif self.al.initial_sampling == "normal-modes":
            return make_normal_mode_sampler(system.atoms, label_call=self.preparatory_call,
                                            record_path=self.run_dir / hessian_record_path(system, len(self.systems)),
                                            temperature_K=md.temperature, rng=rng)
        else:  # MD on a cheaper model (mace-mp0, xtb-md): only the labels of its frames are reference calls
            if self.driver is None:
                self.driver = sampling_driver(self.al.initial_sampling, foundation=self.al.initial_foundational_size,
                                              dtype=self.settings.mace.general.default_dtype,
                                              xtb_method=self.al.initial_xtb_method)
                log.info("Sampling by %s (initial_sampling: %s, not reference calls); each frame is labelled by the "
                         "reference %s.", self.driver.name, self.al.initial_sampling, reference_name(self.reference))
            driver, name = self.driver.calc, self.driver.name
        return LangevinSampler(system.atoms, driver, md=MDParameters.from_settings(md),
                               interval_steps=self.al.skip_step_initial, rng=rng, name=name + suffix,
                               bounds=self.bounds)

    def preparatory_call(self, atoms, purpose: str):
        """One reference call that prepares sampling (relaxation, Hessian), recorded in the ledger as paid."""
        self.preparatory_calls += 1
        return compute_label(self.reference, atoms, timeout_s=self.timeout_s, ledger=ledger_path(self.run_dir),
                             purpose=purpose, label_id=f"{purpose}-{self.preparatory_calls}")

    def finished(self) -> bool:
        if self.state.round == 0 or self.state.trained:
            return False  # no round yet, or a round whose training is unfinished
        mae = ensemble_forces_mae(list(self.state.metrics.values()))
        target = self.al.lambda_ * self.al.desired_acc
        if mae <= target:
            log.info("Ensemble validation force MAE %.4f eV/Å <= lambda x desired_acc = %.4f eV/Å.", mae, target)
            return True
        if self.state.epochs >= self.al.max_initial_epochs:
            log.info("Reached max_initial_epochs = %d (force MAE %.4f eV/Å, target %.4f eV/Å).",
                     self.al.max_initial_epochs, mae, target)
            return True
        return False

    def collect_round(self) -> None:
        """Label frames until every member holds n_samples x (round + 1) frames. Frames of the foundation
        model go to the labeler, so that in parallel mode sampling goes on while reference groups label."""
        with tqdm(total=self.labels_missing(), desc=f"round {self.state.round + 1}: labels", unit="label",
                  disable=None, leave=False) as bar:
            while not self.round_complete():
                stored = self.store_results(self.labeler.collect())
                if self.labels_missing() > self.labeler.in_flight:
                    stored += self.sample_frame()
                else:
                    stored += self.store_results(self.labeler.wait())
                bar.update(stored)
        self.state.round += 1
        self.state.trained = [spec.tag for spec in self.specs]
        self.save_state()

    def prefetch_next_round(self) -> None:
        """Parallel mode: queue the next round's frames before training, so the reference groups work while
        the ML rank trains (the labels are stored when they arrive)."""
        if not getattr(self.labeler, "asynchronous", False) or self.al.initial_sampling == "aimd":
            return
        while self.labeler.in_flight < self.labels_per_round():
            self.sample_frame()

    def train_round(self) -> None:
        """Each member trains intermediate_epochs with warm start; checkpoint and record after each."""
        self.attach_members()
        for tag in list(self.state.trained):
            member = self.members.get(tag)
            if member is None:  # a reference failure left it without a frame of some system: next round
                log.warning("%s has no training frame of every system yet; it trains after the next round.", tag)
                self.state.trained.remove(tag)
                continue
            with self.timings.measure("training_s"):
                metrics = train_and_checkpoint(self.trainer, member, self.al.intermediate_epochs,
                                               use_scheduler=self.al.scheduler_initial, valid_skip=self.al.valid_skip)
            self.state.metrics[tag] = metrics
            self.state.trained.remove(tag)
            self.save_state()
        self.state.epochs += self.al.intermediate_epochs
        self.save_state()
        mae = ensemble_forces_mae(list(self.state.metrics.values()))
        log.info("Round %d: %d labels, %d epochs per member, ensemble validation force MAE %.4f eV/Å, "
                 "energy MAE %.2f meV/atom.", self.state.round, self.num_labels(), self.state.epochs, mae,
                 1e3 * float(np.mean([m["energy_mae_per_atom"] for m in self.state.metrics.values()])))
        self.report_systems(plot=False, round=self.state.round)

    def report_systems(self, *, plot: bool, **context: Any) -> None:
        """The validation force MAE of each system (results/per_system_metrics.json; several: log, plot)."""
        self.attach_members()
        valid = next(iter(self.members.values())).valid_atoms if self.shared else self.all_valid_frames()
        system_metrics.report(self.trainer, list(self.members.values()), valid, self.systems,
                              results_dir=self.run_dir / self.trainer.config.results_dir, stage="initial",
                              plot=plot, ledger=ledger_path(self.run_dir), **context)

    def all_valid_frames(self) -> list:
        """Every member's validation frames (split data: each member validates on its own)."""
        return [atoms for member in self.members.values() for atoms in member.valid_atoms]

    def converge_if_asked(self) -> None:
        if not self.al.converge_initial:
            return
        self.attach_members()
        log.info("Training the initial members to convergence (at most %d epochs each, patience %d).",
                 self.al.max_final_epochs, self.al.patience)
        for spec in self.specs:
            log.info("Converging %s (at most %d epochs, patience %d).", spec.tag, self.al.max_final_epochs,
                     self.al.patience, extra=DETAIL)
            self.stops.append(self.trainer.converge(self.members[spec.tag], self.al.max_final_epochs,
                                                    self.al.patience, self.al.margin))

    def export_models(self) -> None:
        self.attach_members()
        for member in self.members.values():
            self.trainer.export(member)

    def report(self) -> None:
        histories = {spec.tag: reporting.read_history(self.trainer.history_path(spec.tag)) for spec in self.specs}
        results = self.run_dir / self.trainer.config.results_dir
        reporting.learning_curve(histories, results / "initial_learning_curve.png", title="Initial dataset")
        reporting.reference_usage(self.labeler, results, name="initial")
        self.report_systems(plot=True, round=self.state.round, final=True)
        system_metrics.learning_curve_plot(results / system_metrics.METRICS_FILE, results / system_metrics.CURVE_FILE)
        log.info("Initial dataset: %s.", ReferenceCost.from_ledger(ledger_path(self.run_dir)).summary())
        dynamics = [sampler.dynamics for sampler in self.samplers if hasattr(sampler, "dynamics")]
        reporting.log_rejections(reporting.md_rejections(dynamics), self.book.rejected)

    # ------------------------------------------------------------------------------------------ labels
    def sample_frame(self) -> int:
        """Sample one frame; label it at once (ab initio MD: the driver's results) or queue it. -> labels stored"""
        index = self.state.next_sampler % len(self.samplers)
        with self.timings.measure("md_s"):
            frame = self.samplers[index].next_frame()
        self.state.next_sampler = (index + 1) % len(self.samplers)
        label_id = make_label_id(INITIAL_STAGE.prefix, index, frame.md_step)
        label = PendingLabel(label_id, frame.md_step, frame.atoms.get_positions(), trajectory=index,
                             cell=frame.atoms.get_cell().array.copy())
        if self.book.is_stored(label.label_id):  # stored before a kill, whose record was not yet saved
            self.save_state()
            return 0
        if self.al.initial_sampling != "aimd":
            self.book.request(label)
            return 0
        # The driving calculator is the reference: the results of this MD step are the label (no second call;
        # the step itself is in the ledger as an aimd_step, the label with calls=0).
        self.book.add(label)
        return self.store_results([label_from_results(label.label_id, frame.atoms, frame.results,
                                                      reference=reference_name(self.reference),
                                                      ledger=ledger_path(self.run_dir))])

    def store_results(self, results: list[LabelResult]) -> int:
        return sum(self.store_results_one(result) for result in results)

    def store_results_one(self, result: LabelResult) -> int:
        label = self.book.take(result)
        stored = 0
        if not result.ok:
            log.warning("Reference failed on %s; frame skipped: %s", result.label_id, result.error)
        elif (reason := self.book.rejection(result)) is not None:
            self.step_back(reason, label.trajectory)
        else:
            system = self.systems[label.trajectory].name
            tag = SHARED_TAG if self.shared else self.member_for(system)
            name = self.destination(tag, system)
            stored = int(self.book.store_label(result, label, name) is not None)
            if stored:
                self.system_counts[(name, system)] = self.system_counts.get((name, system), 0) + 1
            self.rejections_in_a_row = 0
        self.save_state()
        return stored

    def step_back(self, reason: str, sampler_index: int) -> None:
        """A rejected label: the sampling MD of its system returns to the good frame before the rejected one."""
        self.rejections_in_a_row += 1
        if self.rejections_in_a_row >= MAX_REJECTIONS_IN_A_ROW:
            raise FhiAlError(f"{self.rejections_in_a_row} labels in a row rejected by the frame guard (last: "
                             f"{reason}); check ACTIVE_LEARNING.max_reference_force and the sampling settings")
        # normal-mode samples are independent: nothing to undo
        dynamics = getattr(self.samplers[sampler_index], "dynamics", None)
        if dynamics is not None:
            dynamics.step_back(reason)

    def member_for(self, system: str) -> str:
        """The member with the fewest frames of `system`, then the fewest frames (split member data)."""
        return min(self.specs, key=lambda s: (self.system_frames(s.tag, system), self.member_count(s.tag),
                                              s.index)).tag

    def system_frames(self, tag: str, system: str, splits: tuple[str, ...] = (TRAIN, VALID)) -> int:
        return sum(self.system_counts.get((dataset_name(INITIAL_STAGE.prefix, split, tag), system), 0)
                   for split in splits)

    def count_member_systems(self) -> dict[tuple[str, str], int]:
        """(initial dataset name, system name) -> frames stored."""
        counts: dict[tuple[str, str], int] = {}
        for tag in [spec.tag for spec in self.specs] + [SHARED_TAG]:
            for split in (TRAIN, VALID):
                name = dataset_name(INITIAL_STAGE.prefix, split, tag)
                for atoms in self.store.read(name):
                    key = (name, system_of(atoms, self.systems))
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def destination(self, tag: str, system: str) -> str:
        """The training or validation set of `tag` (a member or the shared sets); the split keeps valid_ratio,
        but a system's first frame of a set goes to training (the model is built for the elements it trains on)."""
        if self.system_frames(tag, system, (TRAIN,)) == 0:
            return dataset_name(INITIAL_STAGE.prefix, TRAIN, tag)
        n_train = self.store.count(dataset_name(INITIAL_STAGE.prefix, TRAIN, tag))
        n_valid = self.store.count(dataset_name(INITIAL_STAGE.prefix, VALID, tag))
        to_valid = n_valid_to_add(1, valid_ratio=self.al.valid_ratio, n_train=n_train, n_valid=n_valid)
        return dataset_name(INITIAL_STAGE.prefix, VALID if to_valid else TRAIN, tag)

    # ------------------------------------------------------------------------------------------ helpers
    def member_count(self, tag: str) -> int:
        return (self.store.count(dataset_name(INITIAL_STAGE.prefix, TRAIN, tag)) +
                self.store.count(dataset_name(INITIAL_STAGE.prefix, VALID, tag)))

    @property
    def shared(self) -> bool:
        return self.al.initial_member_data == "shared"

    def num_labels(self) -> int:
        return sum(self.member_count(spec.tag) for spec in self.specs) + self.member_count(SHARED_TAG)

    def labels_per_round(self) -> int:
        """n_samples frames per member and round; shared sets serve every member at once."""
        return self.al.n_samples * (1 if self.shared else len(self.specs))

    def labels_missing(self) -> int:
        wanted = self.al.n_samples * (self.state.round + 1)
        tags = [SHARED_TAG] if self.shared else [spec.tag for spec in self.specs]
        return sum(max(wanted - self.member_count(tag), 0) for tag in tags)

    def round_complete(self) -> bool:
        return self.labels_missing() == 0

    def attach_members(self) -> None:
        """Create or resume every member and hand it its current datasets."""
        for spec in self.specs:
            train, valid = initial_member_sets(self.store, spec.tag, stage=INITIAL_STAGE.prefix)
            if spec.tag in self.members:
                self.members[spec.tag].train_atoms = train
                self.members[spec.tag].valid_atoms = valid
            elif self.covers_every_system(train):  # a model is built for the elements of its first data
                self.members[spec.tag] = load_or_create_member(self.trainer, spec, train, valid)

    def covers_every_system(self, train: list) -> bool:
        return bool(train) and {system_of(atoms, self.systems) for atoms in train} >= {s.name for s in self.systems}

    def save_state(self) -> None:
        self.state.samplers = [sampler.state() for sampler in self.samplers]
        self.state_file.save(self.state)
